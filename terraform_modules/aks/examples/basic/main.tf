# An AKS cluster for a handful of hubs, with one autoscaling user pool.
terraform {
  required_version = "1.11.4"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "4.10.0"
    }
    azuread = {
      source  = "hashicorp/azuread"
      version = "3.0.2"
    }
  }
}

provider "azurerm" {
  features {}
  subscription_id = "00000000-0000-0000-0000-000000000000"
}

module "cluster" {
  source = "../.."

  cluster_name        = "azure-europe"
  resource_group_name = "hubfleet-europe"
  location            = "westeurope"
  user_pools = {
    small = { machine_type = "Standard_E4s_v5", min_nodes = 0, max_nodes = 20 }
  }
}

output "cluster_endpoint" {
  value = module.cluster.cluster_endpoint
}
