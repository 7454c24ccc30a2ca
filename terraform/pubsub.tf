# Topics bound to the Avro contracts in schemas/ (read from the files, not copied),
# the pipeline's subscriptions with dead-lettering, and the dead-letter topic.

locals {
  retention = "${var.message_retention_days * 86400}s"
}

resource "google_pubsub_schema" "product_event" {
  project    = var.project
  name       = "${var.name_prefix}-product-event"
  type       = "AVRO"
  definition = file("${path.module}/../schemas/product_event.avsc")

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_schema" "catalog_item" {
  project    = var.project
  name       = "${var.name_prefix}-catalog-item"
  type       = "AVRO"
  definition = file("${path.module}/../schemas/catalog_item.avsc")

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "events" {
  #checkov:skip=CKV_GCP_83:Events carry ids and timestamps only; Google-managed encryption keys are acceptable and avoid a KMS key ring that cannot be deleted.
  project                    = var.project
  name                       = var.events_topic
  message_retention_duration = "86400s"

  schema_settings {
    schema   = google_pubsub_schema.product_event.id
    encoding = "JSON"
  }
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Dead letters are copies of events; Google-managed encryption keys are acceptable (see events topic).
  project = var.project
  name    = var.dead_letter_topic

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "catalog" {
  #checkov:skip=CKV_GCP_83:Catalogue items are public product data; Google-managed encryption keys are acceptable.
  project = var.project
  name    = var.catalog_topic

  schema_settings {
    schema   = google_pubsub_schema.catalog_item.id
    encoding = "JSON"
  }
}

resource "google_pubsub_subscription" "events_pipeline" {
  project                    = var.project
  name                       = var.events_subscription
  topic                      = google_pubsub_topic.events.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.retention
  retain_acked_messages      = false

  expiration_policy {
    ttl = "" # never expire, even when the pipeline is stopped for a while
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }
}

resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project
  name                       = var.dead_letter_subscription
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.retention

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "catalog_pipeline" {
  project                    = var.project
  name                       = var.catalog_subscription
  topic                      = google_pubsub_topic.catalog.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.retention

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }
}

# The Pub/Sub service agent forwards undeliverable messages: it must publish to the
# dead-letter topic and acknowledge (subscribe) on the source subscriptions.
resource "google_pubsub_topic_iam_member" "dead_letter_agent_publisher" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_agent_subscriber" {
  for_each = {
    events  = google_pubsub_subscription.events_pipeline.name
    catalog = google_pubsub_subscription.catalog_pipeline.name
  }

  project      = var.project
  subscription = each.value
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
