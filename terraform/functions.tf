# Cloud Functions gen2 built from their folders. Each archive holds the function folder
# plus the shared schemas/ package next to main.py (no manual build step): archive_file
# reads both trees with fileset(), so a change in either redeploys the function.

locals {
  function_dirs = {
    recommend = "${local.repo_root}/functions/recommend"
    ingest    = "${local.repo_root}/functions/ingest"
  }
  schemas_dir = "${local.repo_root}/schemas"

  # Text sources only: caches, compiled files and tests stay out of the archive.
  function_files = {
    for name, dir in local.function_dirs : name => [
      for f in fileset(dir, "**") : f
      if !strcontains(f, "__pycache__") && !endswith(f, ".pyc") && !startswith(f, "tests/")
    ]
  }
  schema_files = [
    for f in fileset(local.schemas_dir, "**") : f
    if !strcontains(f, "__pycache__") && !endswith(f, ".pyc")
  ]
}

data "archive_file" "recommend" {
  type        = "zip"
  output_path = "${path.module}/.build/recommend.zip"

  dynamic "source" {
    for_each = local.function_files.recommend
    content {
      content  = file("${local.function_dirs.recommend}/${source.value}")
      filename = source.value
    }
  }

  dynamic "source" {
    for_each = local.schema_files
    content {
      content  = file("${local.schemas_dir}/${source.value}")
      filename = "schemas/${source.value}"
    }
  }
}

data "archive_file" "ingest" {
  type        = "zip"
  output_path = "${path.module}/.build/ingest.zip"

  dynamic "source" {
    for_each = local.function_files.ingest
    content {
      content  = file("${local.function_dirs.ingest}/${source.value}")
      filename = source.value
    }
  }

  dynamic "source" {
    for_each = local.schema_files
    content {
      content  = file("${local.schemas_dir}/${source.value}")
      filename = "schemas/${source.value}"
    }
  }
}

# The object name carries the archive hash: a source change uploads a new object and
# redeploys the function; an unchanged tree is a no-op.
resource "google_storage_bucket_object" "recommend_source" {
  name   = "recommend/${data.archive_file.recommend.output_md5}.zip"
  bucket = google_storage_bucket.bucket["function_source"].name
  source = data.archive_file.recommend.output_path
}

resource "google_storage_bucket_object" "ingest_source" {
  name   = "ingest/${data.archive_file.ingest.output_md5}.zip"
  bucket = google_storage_bucket.bucket["function_source"].name
  source = data.archive_file.ingest.output_path
}

resource "google_cloudfunctions2_function" "recommend" {
  #checkov:skip=CKV_GCP_124:Public HTTP API for web/mobile clients; IAM still requires an identity token unless allow_unauthenticated. var.ingress_settings narrows ingress to a load balancer or the VPC.
  project     = var.project
  location    = var.region
  name        = "${var.name_prefix}-recommend"
  description = "Recommendations for a user: fresh user embedding from Firestore, in-memory item index."

  build_config {
    runtime           = var.python_runtime
    entry_point       = "recommend"
    service_account   = google_service_account.component["build"].id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.bucket["function_source"].name
        object = google_storage_bucket_object.recommend_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.recommend_memory
    available_cpu                    = var.recommend_cpu
    timeout_seconds                  = var.recommend_timeout_seconds
    min_instance_count               = var.recommend_min_instances
    max_instance_count               = var.recommend_max_instances
    max_instance_request_concurrency = var.recommend_concurrency
    ingress_settings                 = var.ingress_settings
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.component["recommend"].email

    environment_variables = merge(local.serving_env, {
      GOOGLE_CLOUD_PROJECT = var.project
      DEFAULT_ALPHA        = tostring(var.default_alpha)
      REFRESH_SECONDS      = tostring(var.refresh_seconds)
    })
  }

  depends_on = [
    time_sleep.build_iam_propagation,
    google_project_iam_member.recommend,
  ]
}

resource "google_cloudfunctions2_function" "ingest" {
  #checkov:skip=CKV_GCP_124:Public HTTP API for web/mobile clients; IAM still requires an identity token unless allow_unauthenticated. var.ingress_settings narrows ingress to a load balancer or the VPC.
  project     = var.project
  location    = var.region
  name        = "${var.name_prefix}-ingest"
  description = "HTTP ingest: validates product events and publishes them to the events topic."

  build_config {
    runtime           = var.python_runtime
    entry_point       = "ingest"
    service_account   = google_service_account.component["build"].id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.bucket["function_source"].name
        object = google_storage_bucket_object.ingest_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.ingest_memory
    available_cpu                    = "1"
    timeout_seconds                  = var.ingest_timeout_seconds
    min_instance_count               = var.ingest_min_instances
    max_instance_count               = var.ingest_max_instances
    max_instance_request_concurrency = var.ingest_concurrency
    ingress_settings                 = var.ingress_settings
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.component["ingest"].email

    environment_variables = {
      GOOGLE_CLOUD_PROJECT = var.project
      EVENTS_TOPIC         = google_pubsub_topic.events.name
      CORS_ALLOW_ORIGIN    = var.ingest_cors_allow_origin
    }
  }

  depends_on = [
    time_sleep.build_iam_propagation,
    google_pubsub_topic_iam_member.ingest_publisher,
  ]
}
