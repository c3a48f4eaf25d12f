output "cluster_name" {
  description = "Name of the EKS cluster (the x-k8s-aws-id of its tokens)."
  value       = var.cluster_name
}

output "cluster_endpoint" {
  description = "URL of the cluster's API server; null when deploy_eks is false."
  value       = var.deploy_eks ? aws_eks_cluster.this[0].endpoint : null
}

output "cluster_ca_certificate" {
  description = "Base64 CA certificate of the API server; null when deploy_eks is false."
  value       = var.deploy_eks ? aws_eks_cluster.this[0].certificate_authority[0].data : null
  sensitive   = true
}

output "deployer_identity" {
  description = "ARN of the IAM role hubfleet deploys as."
  value       = aws_iam_role.deployer.arn
}

output "vpc_id" {
  description = "ID of the cluster's VPC."
  value       = aws_vpc.this.id
}

output "exports_bucket" {
  description = "Bucket for hub data exports."
  value       = aws_s3_bucket.exports.bucket
}

output "data_stores" {
  description = "Data stores destroyed with the cluster."
  value       = ["s3://${aws_s3_bucket.exports.bucket}"]
}
