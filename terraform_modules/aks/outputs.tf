output "cluster_name" {
  description = "Name of the AKS cluster."
  value       = azurerm_kubernetes_cluster.this.name
}

output "cluster_endpoint" {
  description = "URL of the cluster's API server."
  value       = azurerm_kubernetes_cluster.this.kube_config[0].host
}

output "cluster_ca_certificate" {
  description = "Base64 CA certificate of the API server."
  value       = azurerm_kubernetes_cluster.this.kube_config[0].cluster_ca_certificate
  sensitive   = true
}

output "deployer_identity" {
  description = "Client id of the service principal hubfleet deploys as."
  value       = azuread_application.deployer.client_id
}

output "exports_container" {
  description = "Blob container for hub data exports, as account/container."
  value       = "${azurerm_storage_account.exports.name}/${azurerm_storage_container.exports.name}"
}

output "data_stores" {
  description = "Data stores destroyed with the cluster."
  value       = ["https://${azurerm_storage_account.exports.name}.blob.core.windows.net/${azurerm_storage_container.exports.name}"]
}
