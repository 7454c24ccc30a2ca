# Periodic training: Cloud Scheduler starts a Cloud Run job that runs
# `python -m pipelines.training` in the shared image, reads the event archive, writes a new
# model version under the models bucket and publishes it to Firestore.
# Why a Cloud Run job rather than a Dataflow batch job: training is a single-process
# TensorFlow fit, not a Beam graph; a Cloud Run job runs the container to completion,
# costs nothing between runs, and can be started by hand with `gcloud run jobs execute`.

locals {
  # The archive bucket is mounted read-only (Cloud Storage FUSE, implicit directories on by
  # default in Cloud Run): pipelines.training reads the archived JSON-lines files under events/
  # as a local directory; the model dir is a gs:// URI it writes to.
  archive_mount = "/mnt/archive"
  training_args = concat(
    ["--data", "${local.archive_mount}/${local.archive_prefix}", "--model-dir", local.model_dir, "--publish"],
    var.training_init_from != "" ? ["--init-from", var.training_init_from] : [],
    var.training_extra_args,
  )
}

resource "google_cloud_run_v2_job" "training" {
  project             = var.project
  location            = var.region
  name                = "${var.name_prefix}-training"
  deletion_protection = false

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account       = google_service_account.component["training"].email
      timeout               = "${var.training_timeout_seconds}s"
      max_retries           = 1
      execution_environment = "EXECUTION_ENVIRONMENT_GEN2" # needed by the bucket mount

      volumes {
        name = "archive"
        gcs {
          bucket    = google_storage_bucket.bucket["archive"].name
          read_only = true
        }
      }

      containers {
        image   = local.image_uri
        command = ["python", "-m", "pipelines.training"]
        args    = local.training_args

        env {
          name  = "GOOGLE_CLOUD_PROJECT"
          value = var.project
        }

        env {
          name  = "TF_USE_LEGACY_KERAS"
          value = "1"
        }

        volume_mounts {
          name       = "archive"
          mount_path = local.archive_mount
        }

        resources {
          limits = {
            cpu    = var.training_cpu
            memory = var.training_memory
          }
        }
      }
    }
  }

  depends_on = [
    terraform_data.pipeline_image,
    google_firestore_database.main,
    google_project_iam_member.training,
    google_storage_bucket_iam_member.grants,
    google_artifact_registry_repository_iam_member.readers,
  ]
}

resource "google_cloud_scheduler_job" "training" {
  project     = var.project
  region      = var.region
  name        = "${var.name_prefix}-training"
  description = "Starts the training job: a new model version from the archived events."
  schedule    = var.training_schedule
  time_zone   = var.training_time_zone

  retry_config {
    retry_count = 1
  }

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/${google_cloud_run_v2_job.training.id}:run"

    oauth_token {
      service_account_email = google_service_account.component["scheduler"].email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.scheduler_runs_training]
}
