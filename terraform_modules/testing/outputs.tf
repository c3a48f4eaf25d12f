output "cluster_name" {
  description = "Name of the stand-in cluster."
  value       = terraform_data.this.output.name
}

output "cluster_endpoint" {
  description = "API server URL of the stand-in cluster (not reachable: .invalid is reserved)."
  value       = "https://${var.cluster_name}.${var.location}.testing.invalid"
}

output "cluster_ca_certificate" {
  description = "Stand-in CA certificate (base64); unique per cluster instance, so tests can scan for it."
  value       = base64encode("testing-ca-${terraform_data.this.id}")
  sensitive   = true
}

output "cluster_token" {
  description = "Stand-in bearer token for the API server; real modules log in through the cloud instead."
  value       = sha256("token-${terraform_data.this.id}")
  sensitive   = true
}

output "deployer_identity" {
  description = "Identity hubfleet deploys as."
  value       = terraform_data.deployer.output.name
}

output "data_stores" {
  description = "Data stores destroyed with the cluster (hub data exports)."
  value       = ["testing://${terraform_data.exports_bucket.output.name}"]
}
