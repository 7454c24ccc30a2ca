# One container image, built from the repository by Cloud Build (docker/pipeline.Dockerfile):
# it is the Flex Template launcher image, the Dataflow worker (SDK) image and the
# training job image. scripts/stage_pipeline.sh builds it and writes the Flex Template
# spec; with var.build_images Terraform runs the script whenever the sources change.

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Images contain only open-source code and this repository's code; Google-managed encryption keys are acceptable.
  project       = var.project
  location      = var.region
  repository_id = "${var.name_prefix}-images"
  format        = "DOCKER"
  description   = "Pipeline/training image and function builds of the real-time recommender."

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s" # 30 days; the 10 most recent versions are kept regardless
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "terraform_data" "pipeline_image" {
  count = var.build_images ? 1 : 0

  triggers_replace = {
    image         = local.image_uri
    template_path = local.flex_template_path
  }

  provisioner "local-exec" {
    command     = "scripts/stage_pipeline.sh"
    working_dir = local.repo_root
    environment = {
      PROJECT               = var.project
      REGION                = var.region
      IMAGE                 = local.image_uri
      TEMPLATE_PATH         = local.flex_template_path
      BUILD_SERVICE_ACCOUNT = google_service_account.component["build"].id
      STAGING_BUCKET        = google_storage_bucket.bucket["staging"].name
    }
  }

  depends_on = [time_sleep.build_iam_propagation]
}
