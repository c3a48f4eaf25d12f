# The stand-in cluster, as hubfleet's tests apply it (offline, no provider plugins).
terraform {
  required_version = "1.11.4"
}

module "cluster" {
  source = "../.."

  cluster_name = "lab"
  user_pools = {
    small = { machine_type = "lab.small", min_nodes = 0, max_nodes = 3 }
  }
}

output "cluster_endpoint" {
  value = module.cluster.cluster_endpoint
}
