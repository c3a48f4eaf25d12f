# A zonal GKE cluster for a handful of hubs, with one autoscaling user pool.
terraform {
  required_version = "1.11.4"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.8.0"
    }
  }
}

provider "google" {
  project = "example-hubs-123"
  region  = "us-central1"
}

module "cluster" {
  source = "../.."

  cluster_name = "gcp-central"
  project_id   = "example-hubs-123"
  region       = "us-central1"
  zone         = "us-central1-b"
  user_pools = {
    small = { machine_type = "n2-highmem-4", min_nodes = 0, max_nodes = 20 }
  }
}

output "cluster_endpoint" {
  value = module.cluster.cluster_endpoint
}
