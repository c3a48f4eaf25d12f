variable "cluster_name" {
  description = "Name of the stand-in cluster; hubfleet sets it to the fleet's cluster name."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must be DNS-safe: lower-case letters, digits and '-', at most 40 characters."
  }
}

variable "location" {
  description = "Where the stand-in cluster lives. Changing it replaces the cluster, as moving a real cluster to another region does."
  type        = string
  default     = "lab-1"

  validation {
    condition     = contains(["lab-1", "lab-2", "lab-3"], var.location)
    error_message = "The location must be one of: lab-1, lab-2, lab-3."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the stand-in control plane, e.g. 1.30. Changes update it in place."
  type        = string
  default     = "1.30"

  validation {
    condition     = can(regex("^1\\.[0-9]+$", var.kubernetes_version))
    error_message = "The kubernetes_version must be a minor version such as 1.30."
  }
}

variable "core_node_count" {
  description = "Nodes in the core pool (hub, proxy, support chart)."
  type        = number
  default     = 1

  validation {
    condition     = var.core_node_count >= 1 && var.core_node_count <= 10
    error_message = "The core_node_count must be between 1 and 10."
  }
}

variable "user_pools" {
  description = "Autoscaling user node pools by name: machine type and node bounds."
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
