# Where hub data exports land before an event hub is torn down.
resource "azurerm_storage_account" "exports" {
  # 3-24 lower-case letters and digits, globally unique.
  name                            = substr(replace("${var.cluster_name}exports", "-", ""), 0, 24)
  resource_group_name             = azurerm_resource_group.this.name
  location                        = azurerm_resource_group.this.location
  account_tier                    = "Standard"
  account_replication_type        = "LRS"
  allow_nested_items_to_be_public = false
  min_tls_version                 = "TLS1_2"
}

resource "azurerm_storage_container" "exports" {
  name                  = "hub-exports"
  storage_account_name  = azurerm_storage_account.exports.name
  container_access_type = "private"
}
