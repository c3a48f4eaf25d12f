# An EKS cluster for a handful of hubs, with one autoscaling user node group.
terraform {
  required_version = "1.11.4"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.80.0"
    }
  }
}

provider "aws" {
  region              = "us-west-2"
  allowed_account_ids = ["123456789012"]
}

module "cluster" {
  source = "../.."

  cluster_name = "aws-west"
  region       = "us-west-2"
  account_id   = "123456789012"
  user_pools = {
    small = { machine_type = "r6i.xlarge", min_nodes = 0, max_nodes = 20 }
  }
}

output "cluster_endpoint" {
  value = module.cluster.cluster_endpoint
}
