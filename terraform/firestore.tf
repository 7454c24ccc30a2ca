# Firestore in native mode: users/, items/, models/, stats/ (schemas/firestore.py).
# The recommend function's "items where indexed_at > X" is a single-field query served
# by Firestore's automatic indexes; find_nearest over items.embedding needs a vector index.

resource "google_firestore_database" "main" {
  project                           = var.project
  name                              = "(default)"
  location_id                       = local.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "OPTIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.firestore_delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = "DELETE"

  depends_on = [google_project_service.enabled]
}

resource "google_firestore_index" "items_embedding" {
  count = var.create_vector_index ? 1 : 0

  project     = var.project
  database    = google_firestore_database.main.name
  collection  = "items"
  query_scope = "COLLECTION"

  fields {
    field_path = "__name__"
    order      = "ASCENDING"
  }

  fields {
    field_path = "embedding"
    vector_config {
      dimension = var.embedding_dimension
      flat {}
    }
  }
}

# Opaque payload fields are never queried: exempt them from Firestore's automatic single-field
# indexes (an empty index_config disables them), so each write pays for no index entries.
# users.history is one packed JSON string (up to 50 rows); items.content_vector is a dense
# list of floats, which would otherwise get an array-contains entry per element.
locals {
  unindexed_fields = {
    users_history        = { collection = "users", field = "history" }
    items_content_vector = { collection = "items", field = "content_vector" }
  }
}

resource "google_firestore_field" "unindexed" {
  for_each = local.unindexed_fields

  project    = var.project
  database   = google_firestore_database.main.name
  collection = each.value.collection
  field      = each.value.field

  index_config {}
}

# Attribution's restart state (pipelines/streaming/experiment_io.py): served records of experiments
# and events waiting for theirs, each with expire_at = served time + the join's TTL. Firestore's
# TTL policy deletes them after that (within about a day), so nothing sweeps them by hand.
locals {
  ttl_collections = {
    attribution_served  = "attribution_served"
    attribution_pending = "attribution_pending"
  }
}

resource "google_firestore_field" "expire_at" {
  for_each = local.ttl_collections

  project    = var.project
  database   = google_firestore_database.main.name
  collection = each.value
  field      = "expire_at"

  ttl_config {}
  index_config {}
}
