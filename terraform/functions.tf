# The two HTTP Cloud Functions (gen2), built from their folders: one archive_file -> bucket
# object -> function per entry of local.http_functions. Each archive holds the function
# folder at the zip root plus the shared packages it imports, each under its package name
# (no manual build step): archive_file reads the trees with fileset(), so a change in any of
# them redeploys the function. A tree that does not exist (yet) contributes no files:
# fileset() of a missing directory is empty.

locals {
  # Zip prefix => folder of the repository, per function.
  function_trees = {
    recommend = {
      ""         = "functions/recommend" # main.py, requirements.txt, openapi.yaml, serving.env, recommender/
      "schemas/" = "schemas"
      "scoring/" = "scoring"
      "httpfn/"  = "functions/httpfn"
    }
    ingest = {
      ""         = "functions/ingest"
      "schemas/" = "schemas"
      "httpfn/"  = "functions/httpfn"
    }
  }

  # Text sources only: caches, compiled files and tests stay out of the archive.
  # function => { name in the zip => path on disk }
  function_files = {
    for name, trees in local.function_trees : name => merge([
      for prefix, dir in trees : {
        for f in fileset("${local.repo_root}/${dir}", "**") : "${prefix}${f}" => "${local.repo_root}/${dir}/${f}"
        if !strcontains(f, "__pycache__") && !endswith(f, ".pyc") && !startswith(f, "tests/")
      }
    ]...)
  }

  # Per-function settings; everything else is shared.
  http_functions = {
    recommend = {
      description     = "Recommendations for a user: fresh user embedding from Firestore, in-memory item index."
      entry_point     = "recommend"
      memory          = var.recommend_memory
      cpu             = var.recommend_cpu
      timeout_seconds = var.recommend_timeout_seconds
      min_instances   = var.recommend_min_instances
      max_instances   = var.recommend_max_instances
      concurrency     = var.recommend_concurrency
      service_account = google_service_account.component["recommend"].email
      environment = merge(local.serving_env, {
        GOOGLE_CLOUD_PROJECT = var.project
        DEFAULT_ALPHA        = tostring(var.default_alpha)
        REFRESH_SECONDS      = tostring(var.refresh_seconds)
        SERVED_TOPIC         = google_pubsub_topic.served.id
      })
    }
    ingest = {
      description     = "HTTP ingest: validates product events and publishes them to the events topic."
      entry_point     = "ingest"
      memory          = var.ingest_memory
      cpu             = "1"
      timeout_seconds = var.ingest_timeout_seconds
      min_instances   = var.ingest_min_instances
      max_instances   = var.ingest_max_instances
      concurrency     = var.ingest_concurrency
      service_account = google_service_account.component["ingest"].email
      environment = {
        GOOGLE_CLOUD_PROJECT = var.project
        EVENTS_TOPIC         = google_pubsub_topic.events.name
        CORS_ALLOW_ORIGIN    = var.ingest_cors_allow_origin
      }
    }
  }
}

data "archive_file" "function" {
  for_each = local.function_trees

  type        = "zip"
  output_path = "${path.module}/.build/${each.key}.zip"

  dynamic "source" {
    for_each = local.function_files[each.key]
    content {
      content  = file(source.value)
      filename = source.key
    }
  }
}

# The object name carries the archive hash: a source change uploads a new object and
# redeploys the function; an unchanged tree is a no-op.
resource "google_storage_bucket_object" "function_source" {
  for_each = data.archive_file.function

  name   = "${each.key}/${each.value.output_md5}.zip"
  bucket = google_storage_bucket.bucket["function_source"].name
  source = each.value.output_path
}

resource "google_cloudfunctions2_function" "http" {
  #checkov:skip=CKV_GCP_124:Public HTTP API for web/mobile clients; IAM still requires an identity token unless allow_unauthenticated. var.ingress_settings narrows ingress to a load balancer or the VPC.
  for_each = local.http_functions

  project     = var.project
  location    = var.region
  name        = "${var.name_prefix}-${each.key}"
  description = each.value.description

  build_config {
    runtime           = var.python_runtime
    entry_point       = each.value.entry_point
    service_account   = google_service_account.component["build"].id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.bucket["function_source"].name
        object = google_storage_bucket_object.function_source[each.key].name
      }
    }
  }

  service_config {
    available_memory                 = each.value.memory
    available_cpu                    = each.value.cpu
    timeout_seconds                  = each.value.timeout_seconds
    min_instance_count               = each.value.min_instances
    max_instance_count               = each.value.max_instances
    max_instance_request_concurrency = each.value.concurrency
    ingress_settings                 = var.ingress_settings
    all_traffic_on_latest_revision   = true
    service_account_email            = each.value.service_account
    environment_variables            = each.value.environment
  }

  lifecycle {
    precondition {
      # Cloud Run serves more than one request at a time only with at least 1 vCPU.
      condition     = tonumber(each.value.cpu) >= 1 || each.value.concurrency == 1
      error_message = "${each.key}: concurrency > 1 needs at least 1 vCPU (raise the cpu or set the concurrency to 1)."
    }
  }

  depends_on = [
    time_sleep.build_iam_propagation,
    google_firestore_database.main,
    google_project_iam_member.recommend,
    google_pubsub_topic_iam_member.ingest_publisher,
  ]
}

moved {
  from = google_cloudfunctions2_function.recommend
  to   = google_cloudfunctions2_function.http["recommend"]
}

moved {
  from = google_cloudfunctions2_function.ingest
  to   = google_cloudfunctions2_function.http["ingest"]
}

moved {
  from = google_storage_bucket_object.recommend_source
  to   = google_storage_bucket_object.function_source["recommend"]
}

moved {
  from = google_storage_bucket_object.ingest_source
  to   = google_storage_bucket_object.function_source["ingest"]
}
