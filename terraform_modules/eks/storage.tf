# Where hub data exports land before an event hub is torn down.
resource "aws_s3_bucket" "exports" {
  bucket = "${var.cluster_name}-${var.account_id}-hub-exports"
}

resource "aws_s3_bucket_public_access_block" "exports" {
  bucket                  = aws_s3_bucket.exports.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}
