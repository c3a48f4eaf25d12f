terraform {
  # terraform_data is built in from 1.4; no provider plugin is needed, so this module
  # inits, plans and applies offline (what the tests rely on).
  required_version = ">= 1.4"
}
