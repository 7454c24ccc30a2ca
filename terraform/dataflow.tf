# The streaming pipeline (python -m pipelines.streaming) as a Dataflow Flex Template job.
# Why a Flex Template: the pipeline graph is built at launch from the same image the
# workers run (TensorFlow + this repo's package pre-installed), so workers start without
# pip-installing TensorFlow and launch needs no local Python environment. The image and
# the template spec come from scripts/stage_pipeline.sh (images.tf).

locals {
  # Parameter names use underscores; docker/flex_main.py maps them to the pipeline's dashed
  # flags (--events-subscription ...). Beam/Dataflow options are set on the job below.
  pipeline_parameters = merge({
    events_subscription  = google_pubsub_subscription.events_pipeline.id
    catalog_subscription = google_pubsub_subscription.catalog_pipeline.id
    served_subscription  = google_pubsub_subscription.served_pipeline.id
    dead_letter_topic    = google_pubsub_topic.dead_letter.id
    model_dir            = local.model_dir
    archive_dir          = local.archive_dir
  }, var.pipeline_parameters)
}

resource "google_dataflow_flex_template_job" "streaming" {
  provider = google-beta
  count    = var.deploy_pipeline ? 1 : 0

  project                 = var.project
  region                  = var.region
  name                    = "${var.name_prefix}-streaming"
  container_spec_gcs_path = local.flex_template_path
  sdk_container_image     = local.image_uri
  parameters              = local.pipeline_parameters

  service_account_email   = google_service_account.component["pipeline"].email
  temp_location           = "gs://${google_storage_bucket.bucket["staging"].name}/temp"
  staging_location        = "gs://${google_storage_bucket.bucket["staging"].name}/staging"
  machine_type            = var.dataflow_machine_type
  num_workers             = var.dataflow_num_workers
  max_workers             = var.dataflow_max_workers
  enable_streaming_engine = true
  subnetwork              = local.dataflow_subnet
  ip_configuration        = "WORKER_IP_PRIVATE"

  # No autoscaling_algorithm: the provider sends it as the launch request's
  # environment.autoscalingAlgorithm, whose enum has no THROUGHPUT_BASED (the API answers
  # 400, hashicorp/terraform-provider-google#17570). Streaming Engine jobs autoscale
  # horizontally by default between 1 and max_workers
  # (https://cloud.google.com/dataflow/docs/horizontal-autoscaling).

  # Stop by draining: in-flight events are finished and their state written before exit.
  on_delete = "drain"

  depends_on = [
    terraform_data.pipeline_image,
    google_firestore_database.main,
    google_compute_firewall.dataflow_workers,
    google_project_iam_member.pipeline,
    google_storage_bucket_iam_member.grants,
    google_pubsub_subscription_iam_member.pipeline,
    google_pubsub_topic_iam_member.pipeline_dead_letter_publisher,
    google_artifact_registry_repository_iam_member.readers,
  ]
}
