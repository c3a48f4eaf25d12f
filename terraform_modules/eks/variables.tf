variable "cluster_name" {
  description = "Name of the EKS cluster; hubfleet sets it to the fleet's cluster name."
  type        = string

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must start with a letter, use lower-case letters, digits and '-', at most 40 characters."
  }
}

variable "region" {
  description = "AWS region, e.g. us-west-2 (from the cluster's aws.region)."
  type        = string
}

variable "account_id" {
  description = "12-digit AWS account the cluster must live in (from aws.account_id); guards against the wrong credentials."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "The account_id must be the 12 digits of an AWS account."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the control plane, e.g. 1.30."
  type        = string
  default     = "1.30"

  validation {
    condition     = can(regex("^1\\.[0-9]+$", var.kubernetes_version))
    error_message = "The kubernetes_version must be a minor version such as 1.30."
  }
}

variable "core_instance_type" {
  description = "EC2 instance type of the core node group (hub, proxy, support chart)."
  type        = string
  default     = "m6i.large"
}

variable "core_node_count" {
  description = "Nodes in the core node group."
  type        = number
  default     = 1

  validation {
    condition     = var.core_node_count >= 1 && var.core_node_count <= 10
    error_message = "The core_node_count must be between 1 and 10."
  }
}

variable "user_pools" {
  description = "Autoscaling user node groups by name (labelled and tainted for user pods)."
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

variable "vpc_cidr" {
  description = "IPv4 CIDR of the cluster's VPC; split into two public and two private subnets."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "The vpc_cidr must be an IPv4 CIDR of /20 or larger, such as 10.20.0.0/16."
  }
}

variable "deploy_eks" {
  description = "Create the EKS control plane and node groups; false creates only network, IAM and bucket (what an emulator such as moto supports)."
  type        = bool
  default     = true
}
