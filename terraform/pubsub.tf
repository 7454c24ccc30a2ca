# The events and catalogue topics, the pipeline's subscriptions, and the dead-letter topic the
# pipeline writes to.
#
# No topic carries a Pub/Sub schema: one event contract, locally and here (docs/events.md). Bound
# to the Avro schema with JSON encoding, a topic refuses the event a user naturally publishes (no
# optional fields, or "session_id": "s1") and accepts only Avro JSON with every union spelled out
# (measured on the emulator: Avro's JSON encoding has no omitted fields and wraps unions); Protocol Buffer schemas, whose JSON form allows omitted fields,
# are not implemented by the emulator, so the local stack could not bind the same contract. The
# contract is schemas/product_event.avsc and schemas/catalog_item.avsc as enforced by
# schemas.events.parse_event / schemas.catalog.parse_item in the pipeline: an invalid message
# goes to the dead-letter topic with the reason. scripts/local_stack.py creates the same topics
# (tests/unit/test_event_contract.py compares them with this file).
#
# The subscriptions Dataflow reads carry no dead_letter_policy and no retry_policy: Dataflow
# acknowledges a message once it is durably in the pipeline, not when it is processed, so
# Pub/Sub never sees a failure to redeliver or dead-letter, and Pub/Sub documents both as
# unsupported with Dataflow (https://cloud.google.com/pubsub/docs/handling-failures and
# https://cloud.google.com/dataflow/docs/concepts/streaming-with-cloud-pubsub). Bad events go
# to the dead-letter topic from the pipeline's own dead-letter output (pipelines.streaming
# --dead-letter-topic, with dlq_reason/dlq_field/dlq_source attributes), published by the
# pipeline's service account; no Pub/Sub service agent grant is needed.

locals {
  retention = "${var.message_retention_days * 86400}s"
}

resource "google_pubsub_topic" "events" {
  #checkov:skip=CKV_GCP_83:Events carry ids and timestamps only; Google-managed encryption keys are acceptable and avoid a KMS key ring that cannot be deleted.
  project                    = var.project
  name                       = var.events_topic
  message_retention_duration = "86400s"

  depends_on = [google_project_service.enabled]
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

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "served" {
  #checkov:skip=CKV_GCP_83:Served records carry ids and positions only; Google-managed encryption keys are acceptable (see events topic).
  # One message per list the recommend function answers (schemas/served_record.avsc): the
  # pipeline joins events carrying its recommendation_id to it (experiments, attribution).
  project                    = var.project
  name                       = var.served_topic
  message_retention_duration = "86400s"

  depends_on = [google_project_service.enabled]
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
}

resource "google_pubsub_subscription" "served_pipeline" {
  project                    = var.project
  name                       = var.served_subscription
  topic                      = google_pubsub_topic.served.id
  ack_deadline_seconds       = 60
  message_retention_duration = local.retention

  expiration_policy {
    ttl = ""
  }
}
