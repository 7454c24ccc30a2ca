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

locals {
  # Bucket => settings. Every bucket is private (uniform access, public access prevention),
  # versioned and logs its access to access_logs; names, force_destroy and lifecycle differ.
  # A lifecycle rule deletes (or moves to storage_class) objects older than age days, or
  # noncurrent (overwritten or deleted) versions noncurrent_days after they were replaced.
  buckets = {
    models = {
      suffix        = "models"
      force_destroy = var.force_destroy_buckets
      lifecycle_rules = [
        { action = "Delete", noncurrent_days = 30 }, # a replaced model version stays restorable
      ]
    }
    archive = {
      suffix        = "event-archive" # the only copy of the training data
      force_destroy = var.force_destroy_buckets
      lifecycle_rules = [
        { action = "SetStorageClass", storage_class = "NEARLINE", age = 30 },
        { action = "Delete", noncurrent_days = 7 },
      ]
    }
    staging = {
      suffix        = "dataflow" # Dataflow staging/temp, Flex Template specs, Cloud Build sources
      force_destroy = true       # only temporary and re-creatable files
      lifecycle_rules = [
        { action = "Delete", age = 7, prefixes = ["temp/", "cloudbuild/"] }, # staging/, templates/ serve running jobs
        { action = "Delete", noncurrent_days = 7 },
      ]
    }
    function_source = {
      suffix        = "function-source" # archives are rebuilt from the repository
      force_destroy = true
      lifecycle_rules = [
        { action = "Delete", noncurrent_days = 7 }, # the previous archive, for a manual rollback
      ]
    }
  }
}

resource "google_storage_bucket" "bucket" {
  for_each = local.buckets

  name                        = "${local.bucket_prefix}-${each.value.suffix}"
  project                     = var.project
  location                    = var.region
  force_destroy               = each.value.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.lifecycle_rules
    content {
      condition {
        age                        = try(lifecycle_rule.value.age, null)
        matches_prefix             = try(lifecycle_rule.value.prefixes, null)
        days_since_noncurrent_time = try(lifecycle_rule.value.noncurrent_days, null)
        with_state                 = can(lifecycle_rule.value.noncurrent_days) ? "ARCHIVED" : null
      }
      action {
        type          = lifecycle_rule.value.action
        storage_class = try(lifecycle_rule.value.storage_class, null)
      }
    }
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
}

# Addresses before the buckets, service accounts and functions became for_each resources:
# existing state moves instead of being destroyed and re-created.
moved {
  from = google_storage_bucket.models
  to   = google_storage_bucket.bucket["models"]
}

moved {
  from = google_storage_bucket.archive
  to   = google_storage_bucket.bucket["archive"]
}

moved {
  from = google_storage_bucket.staging
  to   = google_storage_bucket.bucket["staging"]
}

moved {
  from = google_storage_bucket.function_source
  to   = google_storage_bucket.bucket["function_source"]
}
