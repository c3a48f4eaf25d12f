locals {
  location = coalesce(var.zone, var.region)
  # Labels and taints the hub chart's scheduling uses (zero-to-jupyterhub conventions).
  core_labels = { "hub.jupyter.org/node-purpose" = "core" }
  user_labels = { "hub.jupyter.org/node-purpose" = "user" }
}

resource "google_compute_network" "this" {
  name                    = "${var.cluster_name}-network"
  project                 = var.project_id
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "this" {
  name                     = "${var.cluster_name}-subnet"
  project                  = var.project_id
  region                   = var.region
  network                  = google_compute_network.this.id
  ip_cidr_range            = var.network_cidr
  private_ip_google_access = true
}

resource "google_container_cluster" "this" {
  name                = var.cluster_name
  project             = var.project_id
  location            = local.location
  network             = google_compute_network.this.id
  subnetwork          = google_compute_subnetwork.this.id
  min_master_version  = var.kubernetes_version
  deletion_protection = var.deletion_protection

  # Pools are managed below, so they can change without replacing the cluster.
  remove_default_node_pool = true
  initial_node_count       = 1

  ip_allocation_policy {}

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  release_channel {
    channel = "REGULAR"
  }
}

resource "google_container_node_pool" "core" {
  name       = "core"
  project    = var.project_id
  location   = local.location
  cluster    = google_container_cluster.this.name
  node_count = var.core_node_count

  node_config {
    machine_type    = var.core_machine_type
    labels          = local.core_labels
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "user" {
  for_each = var.user_pools

  name     = "user-${each.key}"
  project  = var.project_id
  location = local.location
  cluster  = google_container_cluster.this.name

  autoscaling {
    min_node_count = each.value.min_nodes
    max_node_count = each.value.max_nodes
  }

  node_config {
    machine_type    = each.value.machine_type
    labels          = local.user_labels
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    taint {
      key    = "hub.jupyter.org_dedicated"
      value  = "user"
      effect = "NO_SCHEDULE"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}
