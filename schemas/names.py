"""Default resource names, used locally and as Terraform defaults.

Every component reads the actual names from flags or environment variables;
these are the defaults so that the local stack, the tests and the cloud agree.
"""

EVENTS_TOPIC = "product-events"
EVENTS_SUBSCRIPTION = "product-events-pipeline"
DEAD_LETTER_TOPIC = "product-events-dead-letter"
DEAD_LETTER_SUBSCRIPTION = "product-events-dead-letter-sub"
CATALOG_TOPIC = "catalog-updates"
CATALOG_SUBSCRIPTION = "catalog-updates-pipeline"
SERVED_TOPIC = "recommendations-served"  # one message per list the recommend function answers
SERVED_SUBSCRIPTION = "recommendations-served-pipeline"

USERS = "users"
ITEMS = "items"
MODELS = "models"
STATS = "stats"
EXPERIMENTS = "experiments"  # experiments/{id}: arms, shares, overrides (schemas.experiments)
EXPERIMENT_STATS_DOC = "experiments"  # stats/experiments/{experiment id}/{arm}: per-arm figures

FORGOTTEN_USERS = "forgotten_users"  # forgotten_users/{id}: the pipeline's forget floor (no events)

CURRENT_MODEL_DOC = "current"  # models/current points at the serving version
TRENDING_DOC = "trending"  # stats/trending holds the ranked trending list

DEFAULT_PROJECT = "demo-project"

# Attributes set on dead-lettered messages.
DLQ_REASON_ATTR = "dlq_reason"
DLQ_FIELD_ATTR = "dlq_field"
DLQ_SOURCE_ATTR = "dlq_source"

# The events topic also carries control messages: ``kind`` names one (absent: a product event).
KIND_ATTR = "kind"
FORGET_KIND = "forget"
