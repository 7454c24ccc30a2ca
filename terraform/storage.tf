# Buckets: models (versioned artefacts), event archive (training data), Dataflow
# staging/temp + Flex Template specs + Cloud Build sources, function source archives,
# and one bucket receiving the others' access logs.

locals {
  bucket_prefix = "${var.project}-${var.name_prefix}"
}

resource "google_storage_bucket" "access_logs" {
  #checkov:skip=CKV_GCP_62:This is the access-log sink itself; logging it into itself would loop.
  name                        = "${local.bucket_prefix}-access-logs"
  project                     = var.project
  location                    = var.region
  force_destroy               = var.force_destroy_buckets
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

# Cloud Storage writes usage logs as this Google group.
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}

resource "google_storage_bucket" "models" {
  name                        = "${local.bucket_prefix}-models"
  project                     = var.project
  location                    = var.region
  force_destroy               = var.force_destroy_buckets
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true # an overwritten or deleted model version can be restored
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
}

resource "google_storage_bucket" "archive" {
  name                        = "${local.bucket_prefix}-event-archive"
  project                     = var.project
  location                    = var.region
  force_destroy               = var.force_destroy_buckets
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true # archived events are the only copy of the training data
  }

  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
}

resource "google_storage_bucket" "staging" {
  name                        = "${local.bucket_prefix}-dataflow"
  project                     = var.project
  location                    = var.region
  force_destroy               = true # only temporary and re-creatable files
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # Versioning keeps an overwritten Flex Template spec restorable; old versions expire quickly.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age            = 7
      matches_prefix = ["temp/", "cloudbuild/"] # staging/ and templates/ serve running jobs
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
}

resource "google_storage_bucket" "function_source" {
  name                        = "${local.bucket_prefix}-function-source"
  project                     = var.project
  location                    = var.region
  force_destroy               = true # archives are rebuilt from the repository
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # Terraform replaces the object when the archive changes; versioning keeps the
  # previous archive briefly for a manual rollback.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
}
