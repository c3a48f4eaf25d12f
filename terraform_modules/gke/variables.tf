variable "cluster_name" {
  description = "Name of the GKE cluster; hubfleet sets it to the fleet's cluster name."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must start with a letter, use lower-case letters, digits and '-', at most 40 characters."
  }
}

variable "project_id" {
  description = "GCP project that holds the cluster (from the cluster's gcp.project)."
  type        = string
}

variable "region" {
  description = "GCP region, e.g. us-central1 (from gcp.region)."
  type        = string
}

variable "zone" {
  description = "Zone for a zonal cluster (cheaper control plane); null makes a regional cluster."
  type        = string
  default     = null
}

variable "kubernetes_version" {
  description = "Kubernetes minor version, e.g. 1.30; GKE picks the latest patch in the channel."
  type        = string
  default     = "1.30"

  validation {
    condition     = can(regex("^1\\.[0-9]+$", var.kubernetes_version))
    error_message = "The kubernetes_version must be a minor version such as 1.30."
  }
}

variable "core_machine_type" {
  description = "Machine type of the core pool (hub, proxy, support chart)."
  type        = string
  default     = "n2-standard-2"
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
  description = "Autoscaling user node pools by name (labelled and tainted for user pods)."
  type = map(object({
    machine_type = string
    min_nodes    = number
    max_nodes    = number
  }))
  default = {}

  validation {
    condition     = alltrue([for p in values(var.user_pools) : p.min_nodes >= 0 && p.max_nodes >= p.min_nodes])
    error_message = "Each user pool needs 0 <= min_nodes <= max_nodes."
  }
}

variable "network_cidr" {
  description = "Primary IPv4 range of the cluster's subnet."
  type        = string
  default     = "10.10.0.0/20"

  validation {
    condition     = can(cidrhost(var.network_cidr, 0))
    error_message = "The network_cidr must be an IPv4 CIDR such as 10.10.0.0/20."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the cluster (set false before destroy_cluster)."
  type        = bool
  default     = true
}
