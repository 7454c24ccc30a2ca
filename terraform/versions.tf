terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "= 6.50.0"
    }
    # google_dataflow_flex_template_job exists only in the beta provider (checked against
    # the 6.50.0 schemas by tools/terraform_gate/).
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "= 6.50.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "= 2.7.1"
    }
    # time_sleep: waits for IAM grants to propagate before builds use them.
    time = {
      source  = "hashicorp/time"
      version = "= 0.13.1"
    }
  }
}

provider "google" {
  project               = var.project
  region                = var.region
  default_labels        = local.labels
  user_project_override = true
  billing_project       = var.project
}

provider "google-beta" {
  project               = var.project
  region                = var.region
  default_labels        = local.labels
  user_project_override = true
  billing_project       = var.project
}
