output "recommend_url" {
  description = "HTTPS URL of the recommend function (send an identity token unless allow_unauthenticated)."
  value       = google_cloudfunctions2_function.http["recommend"].service_config[0].uri
}

output "ingest_url" {
  description = "HTTPS URL of the ingest function (POST product events as JSON)."
  value       = google_cloudfunctions2_function.http["ingest"].service_config[0].uri
}

output "events_topic" {
  description = "Full name of the product events topic (no Pub/Sub schema: the pipeline validates, see docs/events.md)."
  value       = google_pubsub_topic.events.id
}

output "events_subscription" {
  description = "Full name of the streaming pipeline's events subscription."
  value       = google_pubsub_subscription.events_pipeline.id
}

output "dead_letter_topic" {
  description = "Full name of the dead-letter topic."
  value       = google_pubsub_topic.dead_letter.id
}

output "dead_letter_subscription" {
  description = "Full name of the subscription to inspect dead letters (gcloud pubsub subscriptions pull)."
  value       = google_pubsub_subscription.dead_letter.id
}

output "catalog_topic" {
  description = "Full name of the catalogue updates topic (no Pub/Sub schema: the pipeline validates, see docs/events.md)."
  value       = google_pubsub_topic.catalog.id
}

output "catalog_subscription" {
  description = "Full name of the streaming pipeline's catalogue subscription."
  value       = google_pubsub_subscription.catalog_pipeline.id
}

output "served_topic" {
  description = "Full name of the topic the recommend function publishes served lists to (experiments: scripts/experiments.py)."
  value       = google_pubsub_topic.served.id
}

output "served_subscription" {
  description = "Full name of the streaming pipeline's subscription on the served topic."
  value       = google_pubsub_subscription.served_pipeline.id
}

output "buckets" {
  description = "Bucket names by purpose: models, archive (events), staging (Dataflow, templates, builds), function_source, access_logs."
  value = {
    models          = google_storage_bucket.bucket["models"].name
    archive         = google_storage_bucket.bucket["archive"].name
    staging         = google_storage_bucket.bucket["staging"].name
    function_source = google_storage_bucket.bucket["function_source"].name
    access_logs     = google_storage_bucket.access_logs.name
  }
}

output "model_dir" {
  description = "Where the training job writes model versions (--model-dir)."
  value       = local.model_dir
}

output "archive_dir" {
  description = "Where the streaming pipeline archives events and training reads them (--events)."
  value       = local.archive_dir
}

output "service_accounts" {
  description = "Service account e-mail of each component."
  value       = { for name, sa in google_service_account.component : name => sa.email }
}

output "image" {
  description = "Container image of the Flex Template launcher, the Dataflow workers and the training job."
  value       = local.image_uri
}

output "flex_template_path" {
  description = "GCS path of the streaming pipeline's Flex Template spec."
  value       = local.flex_template_path
}

output "dataflow_job_id" {
  description = "Id of the streaming Dataflow job (null when deploy_pipeline is false)."
  value       = one(google_dataflow_flex_template_job.streaming[*].job_id)
}

output "training_job" {
  description = "Name of the training Cloud Run job (run now: gcloud run jobs execute NAME --region REGION)."
  value       = google_cloud_run_v2_job.training.name
}

output "training_scheduler_job" {
  description = "Name of the Cloud Scheduler job that starts training on var.training_schedule (run now: gcloud scheduler jobs run NAME --location REGION)."
  value       = google_cloud_scheduler_job.training.name
}

output "firestore_database" {
  description = "Firestore database used by every component."
  value       = google_firestore_database.main.name
}
