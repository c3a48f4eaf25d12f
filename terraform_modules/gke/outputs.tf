output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = google_container_cluster.this.name
}

output "cluster_endpoint" {
  description = "IP address of the cluster's API server (hubfleet adds https://)."
  value       = google_container_cluster.this.endpoint
}

output "cluster_ca_certificate" {
  description = "Base64 CA certificate of the API server."
  value       = google_container_cluster.this.master_auth[0].cluster_ca_certificate
  sensitive   = true
}

output "deployer_identity" {
  description = "Email of the service account hubfleet deploys as."
  value       = google_service_account.deployer.email
}

output "exports_bucket" {
  description = "Bucket for hub data exports."
  value       = google_storage_bucket.exports.name
}

output "data_stores" {
  description = "Data stores destroyed with the cluster."
  value       = ["gs://${google_storage_bucket.exports.name}"]
}
