# One service account per component, each with only what it needs. Grants are on the
# bucket / topic / subscription / repository / job wherever the API allows it; Firestore
# and Dataflow only offer project-level roles.

locals {
  # Component => display name; each runs as its own account (account_id <prefix>-<component>).
  service_accounts = {
    pipeline  = "Recommender streaming pipeline (Dataflow launcher and workers)"
    recommend = "Recommender recommend function"
    ingest    = "Recommender ingest function"
    training  = "Recommender training job (Cloud Run job)"
    scheduler = "Cloud Scheduler: starts the training job"
    build     = "Cloud Build: function builds and the pipeline/training image"
  }
}

resource "google_service_account" "component" {
  for_each = local.service_accounts

  project      = var.project
  account_id   = "${var.name_prefix}-${each.key}"
  display_name = each.value

  depends_on = [google_project_service.enabled]
}

moved {
  from = google_service_account.pipeline
  to   = google_service_account.component["pipeline"]
}

moved {
  from = google_service_account.recommend
  to   = google_service_account.component["recommend"]
}

moved {
  from = google_service_account.ingest
  to   = google_service_account.component["ingest"]
}

moved {
  from = google_service_account.training
  to   = google_service_account.component["training"]
}

moved {
  from = google_service_account.scheduler
  to   = google_service_account.component["scheduler"]
}

moved {
  from = google_service_account.build
  to   = google_service_account.component["build"]
}

# --- Project-level roles (no narrower resource exists for these APIs).

resource "google_project_iam_member" "pipeline" {
  for_each = toset([
    "roles/dataflow.worker",         # run Dataflow work items
    "roles/datastore.user",          # users/, items/, stats/ (Firestore has no per-collection IAM)
    "roles/monitoring.metricWriter", # pipeline counters
  ])

  project = var.project
  role    = each.value
  member  = google_service_account.component["pipeline"].member
}

resource "google_project_iam_member" "recommend" {
  for_each = toset([
    "roles/datastore.viewer", # reads users/, items/, models/, stats/; writes nothing
  ])

  project = var.project
  role    = each.value
  member  = google_service_account.component["recommend"].member
}

resource "google_project_iam_member" "training" {
  for_each = toset([
    "roles/datastore.user", # publishes items/ and models/
  ])

  project = var.project
  role    = each.value
  member  = google_service_account.component["training"].member
}

# The function builds read the source from the bucket Cloud Functions copies it into,
# gcf-v2-sources-<project number>-<region>, which Cloud Functions creates on the first deploy:
# no bucket-level grant can exist before it. Cloud Run documents roles/run.builder on the
# project for a user-specified build service account (it covers reading that source,
# pushing the image and writing logs): https://cloud.google.com/run/docs/configuring/services/build-service-account
resource "google_project_iam_member" "build" {
  for_each = toset([
    "roles/run.builder",       # function builds: source from gcf-v2-sources-*, image push, logs
    "roles/logging.logWriter", # build logs of the pipeline image (CLOUD_LOGGING_ONLY)
  ])

  project = var.project
  role    = each.value
  member  = google_service_account.component["build"].member
}

# IAM grants take a minute or two to propagate; a build started right after them fails with
# PERMISSION_DENIED (the provider's cloudfunctions2_basic_builder example waits the same way).
resource "time_sleep" "build_iam_propagation" {
  create_duration = "90s"

  triggers = {
    roles = join(",", sort([for m in google_project_iam_member.build : m.role]))
  }

  depends_on = [
    google_project_iam_member.build,
    google_storage_bucket_iam_member.grants,
    google_artifact_registry_repository_iam_member.build_writer,
  ]
}

# --- Buckets.

locals {
  bucket_grants = {
    pipeline_staging = { bucket = google_storage_bucket.bucket["staging"].name, role = "roles/storage.objectAdmin", member = google_service_account.component["pipeline"].member }
    pipeline_archive = { bucket = google_storage_bucket.bucket["archive"].name, role = "roles/storage.objectAdmin", member = google_service_account.component["pipeline"].member }
    pipeline_models  = { bucket = google_storage_bucket.bucket["models"].name, role = "roles/storage.objectViewer", member = google_service_account.component["pipeline"].member }
    recommend_models = { bucket = google_storage_bucket.bucket["models"].name, role = "roles/storage.objectViewer", member = google_service_account.component["recommend"].member }
    training_models  = { bucket = google_storage_bucket.bucket["models"].name, role = "roles/storage.objectAdmin", member = google_service_account.component["training"].member }
    training_archive = { bucket = google_storage_bucket.bucket["archive"].name, role = "roles/storage.objectViewer", member = google_service_account.component["training"].member }
    build_staging    = { bucket = google_storage_bucket.bucket["staging"].name, role = "roles/storage.objectAdmin", member = google_service_account.component["build"].member }
    build_sources    = { bucket = google_storage_bucket.bucket["function_source"].name, role = "roles/storage.objectViewer", member = google_service_account.component["build"].member }
  }
}

resource "google_storage_bucket_iam_member" "grants" {
  for_each = local.bucket_grants

  bucket = each.value.bucket
  role   = each.value.role
  member = each.value.member
}

# --- Pub/Sub: each component touches only its own topics and subscriptions.

resource "google_pubsub_topic_iam_member" "ingest_publisher" {
  project = var.project
  topic   = google_pubsub_topic.events.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.component["ingest"].member
}

resource "google_pubsub_topic_iam_member" "pipeline_dead_letter_publisher" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.component["pipeline"].member
}

resource "google_pubsub_topic_iam_member" "recommend_served_publisher" {
  project = var.project
  topic   = google_pubsub_topic.served.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.component["recommend"].member
}

resource "google_pubsub_subscription_iam_member" "pipeline" {
  for_each = {
    events_subscriber  = { subscription = google_pubsub_subscription.events_pipeline.name, role = "roles/pubsub.subscriber" }
    events_viewer      = { subscription = google_pubsub_subscription.events_pipeline.name, role = "roles/pubsub.viewer" }
    catalog_subscriber = { subscription = google_pubsub_subscription.catalog_pipeline.name, role = "roles/pubsub.subscriber" }
    catalog_viewer     = { subscription = google_pubsub_subscription.catalog_pipeline.name, role = "roles/pubsub.viewer" }
    served_subscriber  = { subscription = google_pubsub_subscription.served_pipeline.name, role = "roles/pubsub.subscriber" }
    served_viewer      = { subscription = google_pubsub_subscription.served_pipeline.name, role = "roles/pubsub.viewer" }
  }

  project      = var.project
  subscription = each.value.subscription
  role         = each.value.role
  member       = google_service_account.component["pipeline"].member
}

# --- Artifact Registry: the build pushes, the pipeline and training pull.

resource "google_artifact_registry_repository_iam_member" "build_writer" {
  project    = var.project
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.component["build"].member
}

resource "google_artifact_registry_repository_iam_member" "readers" {
  for_each = {
    pipeline = google_service_account.component["pipeline"].member
    training = google_service_account.component["training"].member
  }

  project    = var.project
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = each.value
}

# --- Cloud Scheduler may start the training job and nothing else.

resource "google_cloud_run_v2_job_iam_member" "scheduler_runs_training" {
  project  = var.project
  location = google_cloud_run_v2_job.training.location
  name     = google_cloud_run_v2_job.training.name
  role     = "roles/run.invoker"
  member   = google_service_account.component["scheduler"].member
}

# --- Function callers: public only when var.allow_unauthenticated says so.

locals {
  function_services = { for name, fn in google_cloudfunctions2_function.http : name => fn.name }
  function_invokers = {
    for pair in setproduct(keys(local.function_services), var.invoker_members) :
    "${pair[0]}/${pair[1]}" => { function = pair[0], member = pair[1] }
  }
}

resource "google_cloud_run_v2_service_iam_member" "public_invoker" {
  for_each = var.allow_unauthenticated ? local.function_services : {}

  project  = var.project
  location = var.region
  name     = each.value
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = local.function_invokers

  project  = var.project
  location = var.region
  name     = local.function_services[each.value.function]
  role     = "roles/run.invoker"
  member   = each.value.member
}
