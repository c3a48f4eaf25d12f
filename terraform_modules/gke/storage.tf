# Where hub data exports land before an event hub is torn down.
resource "google_storage_bucket" "exports" {
  name                        = "${var.project_id}-${var.cluster_name}-exports"
  project                     = var.project_id
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
    }
  }
}
