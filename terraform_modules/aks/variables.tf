variable "cluster_name" {
  description = "Name of the AKS cluster; hubfleet sets it to the fleet's cluster name."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must start with a letter, use lower-case letters, digits and '-', at most 40 characters."
  }
}

variable "resource_group_name" {
  description = "Resource group created for the cluster (from the cluster's azure.resource_group)."
  type        = string
}

variable "location" {
  description = "Azure location, e.g. westeurope (from azure.location)."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes minor version, e.g. 1.30; AKS picks the latest supported patch."
  type        = string
  default     = "1.30"

  validation {
    condition     = can(regex("^1\\.[0-9]+$", var.kubernetes_version))
    error_message = "The kubernetes_version must be a minor version such as 1.30."
  }
}

variable "core_vm_size" {
  description = "VM size of the core (system) pool: hub, proxy, support chart."
  type        = string
  default     = "Standard_D2s_v5"
}

variable "core_node_count" {
  description = "Nodes in the core pool."
  type        = number
  default     = 1

  validation {
    condition     = var.core_node_count >= 1 && var.core_node_count <= 10
    error_message = "The core_node_count must be between 1 and 10."
  }
}

variable "user_pools" {
  description = "Autoscaling user node pools by name (labelled and tainted for user pods); names of at most 12 lower-case letters and digits."
  type = map(object({
    machine_type = string
    min_nodes    = number
    max_nodes    = number
  }))
  default = {}

  validation {
    condition     = alltrue([for name, p in var.user_pools : can(regex("^[a-z][a-z0-9]{0,11}$", name)) && p.min_nodes >= 0 && p.max_nodes >= p.min_nodes])
    error_message = "Each user pool needs a name of at most 12 lower-case letters and digits, and 0 <= min_nodes <= max_nodes."
  }
}

variable "vnet_cidr" {
  description = "Address space of the cluster's VNet; the nodes' subnet is its first /20."
  type        = string
  default     = "10.30.0.0/16"

  validation {
    condition     = can(cidrhost(var.vnet_cidr, 0)) && tonumber(split("/", var.vnet_cidr)[1]) <= 20
    error_message = "The vnet_cidr must be an IPv4 CIDR of /20 or larger, such as 10.30.0.0/16."
  }
}
