# A stand-in for a real cluster module, built only from the built-in terraform_data
# resource: the same shape as gke/eks/aks (network, cluster, pools, export bucket,
# deployer identity) so hubfleet's flows can be exercised offline with real terraform.

resource "terraform_data" "network" {
  input = {
    name = "${var.cluster_name}-network"
  }
  # A network cannot move; a new location means a new network.
  triggers_replace = [var.location]
}

resource "terraform_data" "this" {
  input = {
    name               = var.cluster_name
    network            = terraform_data.network.output.name
    kubernetes_version = var.kubernetes_version
  }
  # Like GKE/EKS/AKS: the control plane's location is immutable.
  triggers_replace = [var.location]
}

resource "terraform_data" "core_pool" {
  input = {
    cluster    = terraform_data.this.output.name
    node_count = var.core_node_count
    labels     = { "hub.jupyter.org/node-purpose" = "core" }
  }
}

resource "terraform_data" "user_pool" {
  for_each = var.user_pools

  input = {
    cluster      = terraform_data.this.output.name
    machine_type = each.value.machine_type
    min_nodes    = each.value.min_nodes
    max_nodes    = each.value.max_nodes
    labels       = { "hub.jupyter.org/node-purpose" = "user" }
    taints       = ["hub.jupyter.org_dedicated=user:NoSchedule"]
  }
}

resource "terraform_data" "exports_bucket" {
  input = {
    name = "${var.cluster_name}-hub-exports"
  }
  triggers_replace = [var.location]
}

resource "terraform_data" "deployer" {
  input = {
    name = "${var.cluster_name}-deployer"
  }
}
