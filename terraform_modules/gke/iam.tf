# Nodes run as a service account with only what nodes need (logs, metrics, images).
resource "google_service_account" "nodes" {
  account_id   = "${substr(var.cluster_name, 0, 22)}-nodes"
  project      = var.project_id
  display_name = "GKE nodes of ${var.cluster_name}"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/artifactregistry.reader",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

# The identity hubfleet deploys as: Kubernetes access to this project's clusters and
# objects in the exports bucket, nothing else.
resource "google_service_account" "deployer" {
  account_id   = "${substr(var.cluster_name, 0, 19)}-deployer"
  project      = var.project_id
  display_name = "hubfleet deployer for ${var.cluster_name}"
}

resource "google_project_iam_member" "deployer" {
  project = var.project_id
  role    = "roles/container.developer"
  member  = "serviceAccount:${google_service_account.deployer.email}"
}

resource "google_storage_bucket_iam_member" "deployer" {
  bucket = google_storage_bucket.exports.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.deployer.email}"
}
