# ---------------------------------------------------------------------------
# Project and naming
# ---------------------------------------------------------------------------

variable "project" {
  type        = string
  description = "Google Cloud project id to deploy into (billing must be enabled)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project id: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "Region for the functions, the Dataflow job, the Cloud Run job, the scheduler and the buckets."
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must look like us-central1 or europe-west4."
  }
}

variable "firestore_location" {
  type        = string
  description = "Firestore location (a region such as us-central1 or a multi-region such as nam5/eur3). Null means var.region."
  default     = null
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name (functions, service accounts, buckets, jobs). Keep it short: service account ids are limited to 30 characters."
  default     = "recsys"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,12}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-14 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource that supports them."
  default     = {}
}

variable "force_destroy_buckets" {
  type        = bool
  description = "Let `terraform destroy` delete buckets that still hold objects (models, archived events). Keep false in production."
  default     = false
}

# ---------------------------------------------------------------------------
# Pub/Sub
# ---------------------------------------------------------------------------

variable "events_topic" {
  type        = string
  description = "Name of the product events topic (schemas.names.EVENTS_TOPIC)."
  default     = "product-events"
}

variable "events_subscription" {
  type        = string
  description = "Name of the streaming pipeline's subscription on the events topic (schemas.names.EVENTS_SUBSCRIPTION)."
  default     = "product-events-pipeline"
}

variable "dead_letter_topic" {
  type        = string
  description = "Name of the dead-letter topic (schemas.names.DEAD_LETTER_TOPIC)."
  default     = "product-events-dead-letter"
}

variable "dead_letter_subscription" {
  type        = string
  description = "Name of the subscription used to inspect dead letters (schemas.names.DEAD_LETTER_SUBSCRIPTION)."
  default     = "product-events-dead-letter-sub"
}

variable "catalog_topic" {
  type        = string
  description = "Name of the catalogue updates topic (schemas.names.CATALOG_TOPIC)."
  default     = "catalog-updates"
}

variable "catalog_subscription" {
  type        = string
  description = "Name of the streaming pipeline's subscription on the catalogue topic (schemas.names.CATALOG_SUBSCRIPTION)."
  default     = "catalog-updates-pipeline"
}

variable "served_topic" {
  type        = string
  description = "Name of the topic the recommend function publishes served lists to (schemas.names.SERVED_TOPIC)."
  default     = "recommendations-served"
}

variable "served_subscription" {
  type        = string
  description = "Name of the streaming pipeline's subscription on the served topic (schemas.names.SERVED_SUBSCRIPTION)."
  default     = "recommendations-served-pipeline"
}

variable "message_retention_days" {
  type        = number
  description = "Days unacknowledged messages are kept on the subscriptions (lets the pipeline catch up after an outage). Undeliverable events are not retried by Pub/Sub: the pipeline routes them to the dead-letter topic itself."
  default     = 7

  validation {
    condition     = var.message_retention_days >= 1 && var.message_retention_days <= 7
    error_message = "message_retention_days must be between 1 and 7."
  }
}

# ---------------------------------------------------------------------------
# Firestore
# ---------------------------------------------------------------------------

variable "firestore_delete_protection" {
  type        = bool
  description = "Enable delete protection on the Firestore database. `terraform destroy` fails while it is on (see README)."
  default     = true
}

variable "create_vector_index" {
  type        = bool
  description = "Create a Firestore vector index on items.embedding for find_nearest queries. The recommend function ranks with its in-memory index and does not need it; enable it for ad-hoc or benchmark find_nearest queries."
  default     = false
}

variable "embedding_dimension" {
  type        = number
  description = "Dimension of the item embeddings written by the training job (the vector index is built for this size)."
  default     = 32

  validation {
    condition     = var.embedding_dimension >= 1 && var.embedding_dimension <= 2048
    error_message = "embedding_dimension must be between 1 and 2048 (Firestore vector limit)."
  }
}

# ---------------------------------------------------------------------------
# Cloud Functions
# ---------------------------------------------------------------------------

variable "python_runtime" {
  type        = string
  description = "Cloud Functions runtime for both functions. At least python311: the recommend function pins numpy 2.4, which requires Python >= 3.11."
  default     = "python311"

  validation {
    condition     = contains(["python311", "python312", "python313"], var.python_runtime)
    error_message = "python_runtime must be python311, python312 or python313 (numpy 2.4 needs Python >= 3.11)."
  }
}

variable "allow_unauthenticated" {
  type        = bool
  description = "Grant allUsers the invoker role on both functions. Off by default: callers need an identity token."
  default     = false
}

variable "invoker_members" {
  type        = list(string)
  description = "IAM members (user:, group:, serviceAccount:) allowed to call both functions when they are not public."
  default     = []

  validation {
    condition     = alltrue([for m in var.invoker_members : can(regex("^(user|group|serviceAccount|domain):", m))])
    error_message = "invoker_members entries must start with user:, group:, serviceAccount: or domain: (use allow_unauthenticated for public access)."
  }
}

variable "ingress_settings" {
  type        = string
  description = "Ingress for both functions: ALLOW_ALL (authentication still enforced by IAM), ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  default     = "ALLOW_ALL"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.ingress_settings)
    error_message = "ingress_settings must be ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

variable "default_alpha" {
  type        = number
  description = "Default blend weight α of the recommend function, DEFAULT_ALPHA (1 = collaborative only, 0 = content only). Keep in step with functions/recommend/serving.env."
  default     = 0.7

  validation {
    condition     = var.default_alpha >= 0 && var.default_alpha <= 1
    error_message = "default_alpha must be in [0, 1]."
  }
}

variable "refresh_seconds" {
  type        = number
  description = "How often (seconds) the recommend function polls models/current and new items (REFRESH_SECONDS)."
  default     = 5

  validation {
    condition     = var.refresh_seconds >= 1 && var.refresh_seconds <= 3600
    error_message = "refresh_seconds must be between 1 and 3600."
  }
}

# Measured with make bench-serving / bench-serving-1m (docs/benchmarks.md, 2026-12-02; WORKERS=2,
# index loaded before the fork and shared): 100k items PSS 180 MB (RSS 462 MB summed over the 3
# processes); 1M items PSS 730 MB (RSS 2,075 MB summed). A version switch holds the old and the new
# index for a moment (about 2x), so 1Gi covers 100k items with room; 1M items need "2Gi".
variable "recommend_memory" {
  type        = string
  description = "Memory of one recommend function instance (holds the item index in memory): 1Gi for 100k items, 2Gi for 1M (measured PSS 180 MB at 100k, 730 MB at 1M)."
  default     = "1Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.recommend_memory))
    error_message = "recommend_memory must be a size such as 512Mi or 2Gi."
  }
}

# Server CPU per request measured at 1.74 ms (100k items) and 1.94 ms (1M) with faiss retrieval:
# 1 vCPU serves about 500 requests/s before Firestore latency; WORKERS=2 in serving.env.
variable "recommend_cpu" {
  type        = string
  description = "vCPUs of one recommend function instance. Cloud Run allows concurrency > 1 only with at least 1 vCPU; a precondition on the function enforces it."
  default     = "1"

  validation {
    condition     = contains(["0.583", "1", "2", "4", "6", "8"], var.recommend_cpu)
    error_message = "recommend_cpu must be one of 0.583, 1, 2, 4, 6, 8."
  }
}

variable "recommend_min_instances" {
  type        = number
  description = "Warm recommend instances kept running (0 allows cold starts)."
  default     = 1

  validation {
    condition     = var.recommend_min_instances >= 0 && var.recommend_min_instances <= 100
    error_message = "recommend_min_instances must be between 0 and 100."
  }
}

variable "recommend_max_instances" {
  type        = number
  description = "Upper bound on recommend instances (caps cost and Firestore load)."
  default     = 10

  validation {
    condition     = var.recommend_max_instances >= 1 && var.recommend_max_instances <= 1000
    error_message = "recommend_max_instances must be between 1 and 1000."
  }
}

variable "recommend_concurrency" {
  type        = number
  description = "Concurrent requests per recommend instance (match the serving WORKERS x THREADS)."
  default     = 8

  validation {
    condition     = var.recommend_concurrency >= 1 && var.recommend_concurrency <= 1000
    error_message = "recommend_concurrency must be between 1 and 1000."
  }
}

variable "recommend_timeout_seconds" {
  type        = number
  description = "Request timeout of the recommend function."
  default     = 30

  validation {
    condition     = var.recommend_timeout_seconds >= 1 && var.recommend_timeout_seconds <= 3600
    error_message = "recommend_timeout_seconds must be between 1 and 3600."
  }
}

variable "serving_settings" {
  type        = map(string)
  description = "Environment overrides for the recommend function on top of functions/recommend/serving.env (e.g. WORKERS, THREADS, OPENBLAS_NUM_THREADS). default_alpha and refresh_seconds win over both."
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.serving_settings) : can(regex("^[A-Z][A-Z0-9_]*$", k))])
    error_message = "serving_settings keys must be environment variable names (upper case, digits, underscores)."
  }
}

variable "ingest_cors_allow_origin" {
  type        = string
  description = "Origin allowed to call the ingest function from a browser (CORS_ALLOW_ORIGIN); empty disables CORS."
  default     = ""
}

variable "ingest_memory" {
  type        = string
  description = "Memory of one ingest function instance."
  default     = "512Mi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.ingest_memory))
    error_message = "ingest_memory must be a size such as 256Mi or 1Gi."
  }
}

variable "ingest_min_instances" {
  type        = number
  description = "Warm ingest instances kept running."
  default     = 0

  validation {
    condition     = var.ingest_min_instances >= 0 && var.ingest_min_instances <= 100
    error_message = "ingest_min_instances must be between 0 and 100."
  }
}

variable "ingest_max_instances" {
  type        = number
  description = "Upper bound on ingest instances."
  default     = 20

  validation {
    condition     = var.ingest_max_instances >= 1 && var.ingest_max_instances <= 1000
    error_message = "ingest_max_instances must be between 1 and 1000."
  }
}

variable "ingest_concurrency" {
  type        = number
  description = "Concurrent requests per ingest instance (publishing is I/O bound)."
  default     = 16

  validation {
    condition     = var.ingest_concurrency >= 1 && var.ingest_concurrency <= 1000
    error_message = "ingest_concurrency must be between 1 and 1000."
  }
}

variable "ingest_timeout_seconds" {
  type        = number
  description = "Request timeout of the ingest function."
  default     = 30

  validation {
    condition     = var.ingest_timeout_seconds >= 1 && var.ingest_timeout_seconds <= 3600
    error_message = "ingest_timeout_seconds must be between 1 and 3600."
  }
}

# ---------------------------------------------------------------------------
# Images (streaming pipeline Flex Template and training job)
# ---------------------------------------------------------------------------

variable "build_images" {
  type        = bool
  description = "Run scripts/stage_pipeline.sh from `terraform apply` (needs gcloud) to build the image with Cloud Build and stage the Flex Template when the sources change. Set false to run the script yourself and pass image_tag."
  default     = true
}

variable "image_tag" {
  type        = string
  description = "Tag of the pipeline/training image and Flex Template spec. Empty means a hash of the sources, as computed by scripts/stage_pipeline.sh."
  default     = ""

  validation {
    condition     = var.image_tag == "" || can(regex("^[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a valid container image tag."
  }
}

# ---------------------------------------------------------------------------
# Dataflow streaming pipeline
# ---------------------------------------------------------------------------

variable "deploy_pipeline" {
  type        = bool
  description = "Launch the streaming Dataflow job. Set false to create everything else first (e.g. before the first model exists)."
  default     = true
}

variable "dataflow_machine_type" {
  type        = string
  description = "Worker machine type of the streaming pipeline."
  default     = "n1-standard-2"

  validation {
    condition     = can(regex("^[a-z0-9]+-[a-z]+-[0-9]+$", var.dataflow_machine_type))
    error_message = "dataflow_machine_type must be a machine type such as n1-standard-2 or e2-standard-4."
  }
}

variable "dataflow_max_workers" {
  type        = number
  description = "Maximum workers the streaming pipeline autoscales to."
  default     = 3

  validation {
    condition     = var.dataflow_max_workers >= 1 && var.dataflow_max_workers <= 1000
    error_message = "dataflow_max_workers must be between 1 and 1000."
  }
}

variable "dataflow_num_workers" {
  type        = number
  description = "Initial workers of the streaming pipeline."
  default     = 1

  validation {
    condition     = var.dataflow_num_workers >= 1 && var.dataflow_num_workers <= 1000
    error_message = "dataflow_num_workers must be between 1 and 1000."
  }
}

variable "dataflow_subnetwork" {
  type        = string
  description = "Existing subnetwork for the Dataflow workers (self link, or regions/REGION/subnetworks/NAME; for a Shared VPC the full self link). It must have Private Google Access and allow TCP 12345-12346 between workers. Null creates a network, a subnetwork with Private Google Access and that firewall rule (network.tf)."
  default     = null

  validation {
    condition     = var.dataflow_subnetwork == null || can(regex("(^|/)regions/[a-z0-9-]+/subnetworks/[a-z0-9-]+$", var.dataflow_subnetwork))
    error_message = "dataflow_subnetwork must be null, regions/REGION/subnetworks/NAME or a subnetwork self link."
  }
}

variable "dataflow_subnet_cidr" {
  type        = string
  description = "IP range of the subnetwork created for the Dataflow workers when dataflow_subnetwork is null."
  default     = "10.20.0.0/22"

  validation {
    condition     = can(cidrhost(var.dataflow_subnet_cidr, 0))
    error_message = "dataflow_subnet_cidr must be a CIDR range such as 10.20.0.0/22."
  }
}

variable "pipeline_parameters" {
  type        = map(string)
  description = "Extra Flex Template parameters for the streaming pipeline (flag name without dashes => value)."
  default     = {}
}

# ---------------------------------------------------------------------------
# Training job
# ---------------------------------------------------------------------------

variable "training_schedule" {
  type        = string
  description = "Cron schedule (5 fields) of the training job."
  default     = "0 3 * * *"

  validation {
    condition     = length(split(" ", trimspace(var.training_schedule))) == 5
    error_message = "training_schedule must be a 5-field cron expression such as \"0 3 * * *\"."
  }
}

variable "training_time_zone" {
  type        = string
  description = "Time zone of the training schedule (IANA name)."
  default     = "Etc/UTC"
}

variable "training_cpu" {
  type        = string
  description = "vCPUs of the training Cloud Run job."
  default     = "4"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.training_cpu)
    error_message = "training_cpu must be 1, 2, 4, 6 or 8."
  }
}

variable "training_memory" {
  type        = string
  description = "Memory of the training Cloud Run job."
  default     = "8Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.training_memory))
    error_message = "training_memory must be a size such as 4Gi."
  }
}

variable "training_timeout_seconds" {
  type        = number
  description = "Maximum duration of one training run."
  default     = 3600

  validation {
    condition     = var.training_timeout_seconds >= 60 && var.training_timeout_seconds <= 86400
    error_message = "training_timeout_seconds must be between 60 and 86400 (Cloud Run job limit)."
  }
}

variable "training_init_from" {
  type        = string
  description = "Warm start each training run from this model version (--init-from): \"current\" fine-tunes the serving version on the events archived since it was trained (a full training when none is published yet); empty trains from scratch."
  default     = "current"
}

variable "training_extra_args" {
  type        = list(string)
  description = "Extra arguments appended to `python -m pipelines.training` (e.g. [\"--epochs\", \"5\"])."
  default     = []
}

# ---------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------

variable "alert_email" {
  type        = string
  description = "E-mail address notified by the alert policies. Empty means alerts are recorded without notification."
  default     = ""

  validation {
    condition     = var.alert_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alert_email))
    error_message = "alert_email must be empty or an e-mail address."
  }
}

variable "dead_letter_backlog_threshold" {
  type        = number
  description = "Alert when the dead-letter subscription holds more than this many undelivered messages."
  default     = 0

  validation {
    condition     = var.dead_letter_backlog_threshold >= 0
    error_message = "dead_letter_backlog_threshold must be >= 0."
  }
}

variable "function_5xx_ratio_threshold" {
  type        = number
  description = "Alert when the share of 5xx responses of a function exceeds this fraction over 5 minutes."
  default     = 0.01

  validation {
    condition     = var.function_5xx_ratio_threshold > 0 && var.function_5xx_ratio_threshold <= 1
    error_message = "function_5xx_ratio_threshold must be in (0, 1]."
  }
}

variable "function_p99_latency_ms" {
  type        = map(number)
  description = "Alert when a function's p99 request latency (ms) exceeds this over 5 minutes; keys are recommend and ingest."
  default = {
    recommend = 300
    ingest    = 500
  }

  validation {
    condition     = alltrue([for k, v in var.function_p99_latency_ms : contains(["recommend", "ingest"], k) && v > 0])
    error_message = "function_p99_latency_ms keys must be recommend/ingest with positive values."
  }
}

variable "pipeline_max_lag_seconds" {
  type        = number
  description = "Alert when the streaming pipeline's system lag or data freshness (watermark age) exceeds this many seconds."
  default     = 300

  validation {
    condition     = var.pipeline_max_lag_seconds >= 10
    error_message = "pipeline_max_lag_seconds must be at least 10."
  }
}

# ---------------------------------------------------------------------------
# Budget (optional)
# ---------------------------------------------------------------------------

variable "billing_account" {
  type        = string
  description = "Billing account id (three groups of six hex characters, e.g. 012345-6789AB-CDEF01) for the budget alert. Empty creates no budget; setting it needs roles/billing.costsManager on the billing account."
  default     = ""

  validation {
    condition     = var.billing_account == "" || can(regex("^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$", var.billing_account))
    error_message = "billing_account must be empty or a billing account id such as 012345-6789AB-CDEF01."
  }
}

variable "budget_amount" {
  type        = number
  description = "Monthly budget of the project in the billing account's currency; alerts at 50%, 90% and 100% (forecast) go to the billing account's admins and var.alert_email."
  default     = 200

  validation {
    condition     = var.budget_amount > 0
    error_message = "budget_amount must be positive."
  }
}
