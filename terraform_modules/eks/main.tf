data "aws_caller_identity" "current" {}

locals {
  # Labels and taints the hub chart's scheduling uses (zero-to-jupyterhub conventions).
  core_labels = { "hub.jupyter.org/node-purpose" = "core" }
  user_labels = { "hub.jupyter.org/node-purpose" = "user" }
}

resource "aws_eks_cluster" "this" {
  count = var.deploy_eks ? 1 : 0

  name     = var.cluster_name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  vpc_config {
    subnet_ids = concat(aws_subnet.private[*].id, aws_subnet.public[*].id)
  }

  access_config {
    authentication_mode = "API"
  }

  lifecycle {
    precondition {
      condition     = data.aws_caller_identity.current.account_id == var.account_id
      error_message = "The credentials belong to another AWS account than the registry's aws.account_id; use the deployer credentials of this cluster's account."
    }
  }
}

resource "aws_eks_node_group" "core" {
  count = var.deploy_eks ? 1 : 0

  cluster_name    = aws_eks_cluster.this[0].name
  node_group_name = "core"
  node_role_arn   = aws_iam_role.nodes.arn
  subnet_ids      = aws_subnet.private[*].id
  instance_types  = [var.core_instance_type]
  labels          = local.core_labels

  scaling_config {
    desired_size = var.core_node_count
    min_size     = var.core_node_count
    max_size     = var.core_node_count
  }
}

resource "aws_eks_node_group" "user" {
  for_each = var.deploy_eks ? var.user_pools : {}

  cluster_name    = aws_eks_cluster.this[0].name
  node_group_name = "user-${each.key}"
  node_role_arn   = aws_iam_role.nodes.arn
  subnet_ids      = aws_subnet.private[*].id
  instance_types  = [each.value.machine_type]
  labels          = local.user_labels

  taint {
    key    = "hub.jupyter.org_dedicated"
    value  = "user"
    effect = "NO_SCHEDULE"
  }

  scaling_config {
    desired_size = each.value.min_nodes
    min_size     = each.value.min_nodes
    max_size     = each.value.max_nodes
  }

  # The cluster autoscaler owns the desired size once the group exists.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }
}

# The deployer may administer the cluster through the EKS access API, nothing more.
resource "aws_eks_access_entry" "deployer" {
  count = var.deploy_eks ? 1 : 0

  cluster_name  = aws_eks_cluster.this[0].name
  principal_arn = aws_iam_role.deployer.arn
}

resource "aws_eks_access_policy_association" "deployer" {
  count = var.deploy_eks ? 1 : 0

  cluster_name  = aws_eks_cluster.this[0].name
  principal_arn = aws_iam_role.deployer.arn
  policy_arn    = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"

  access_scope {
    type = "cluster"
  }
}
