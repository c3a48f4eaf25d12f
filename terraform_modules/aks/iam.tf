# hubfleet's deployer: a service principal that may fetch cluster user credentials and
# write hub exports, nothing else in the subscription.
resource "azuread_application" "deployer" {
  display_name = "${var.cluster_name}-hubfleet-deployer"
}

resource "azuread_service_principal" "deployer" {
  client_id = azuread_application.deployer.client_id
}

resource "azurerm_role_assignment" "deployer_cluster_user" {
  scope                = azurerm_kubernetes_cluster.this.id
  role_definition_name = "Azure Kubernetes Service Cluster User Role"
  principal_id         = azuread_service_principal.deployer.object_id
}

resource "azurerm_role_assignment" "deployer_rbac_admin" {
  scope                = azurerm_kubernetes_cluster.this.id
  role_definition_name = "Azure Kubernetes Service RBAC Cluster Admin"
  principal_id         = azuread_service_principal.deployer.object_id
}

resource "azurerm_role_assignment" "deployer_exports" {
  scope                = azurerm_storage_container.exports.resource_manager_id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azuread_service_principal.deployer.object_id
}
