# Alert policies: dead letters piling up, function 5xx share and p99 latency, and the
# streaming pipeline falling behind (system lag, data freshness). Notifications go to
# var.alert_email when set.

locals {
  notification_channels = [for c in google_monitoring_notification_channel.email : c.name]
  function_names        = { for name, fn in google_cloudfunctions2_function.http : name => fn.name }
  pipeline_job_name     = "${var.name_prefix}-streaming"
}

resource "google_monitoring_notification_channel" "email" {
  count = var.alert_email == "" ? 0 : 1

  project      = var.project
  display_name = "${var.name_prefix} recommender alerts"
  type         = "email"
  labels = {
    email_address = var.alert_email
  }

  depends_on = [google_project_service.enabled]
}

resource "google_monitoring_alert_policy" "dead_letter_backlog" {
  project               = var.project
  display_name          = "${var.name_prefix}: dead-letter backlog"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "Undelivered messages on ${google_pubsub_subscription.dead_letter.name}"

    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.dead_letter.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.dead_letter_backlog_threshold
      duration        = "300s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Events are failing validation or processing. Pull a few from `${google_pubsub_subscription.dead_letter.name}`: the `dlq_reason`, `dlq_field` and `dlq_source` attributes say why."
  }
}

resource "google_monitoring_alert_policy" "function_5xx" {
  for_each = local.function_names

  project               = var.project
  display_name          = "${var.name_prefix}: ${each.key} 5xx rate"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "Share of 5xx responses of ${each.value}"

    condition_threshold {
      filter             = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${each.value}\" AND metric.type = \"run.googleapis.com/request_count\" AND metric.labels.response_code_class = \"5xx\""
      denominator_filter = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${each.value}\" AND metric.type = \"run.googleapis.com/request_count\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.function_5xx_ratio_threshold
      duration           = "300s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.labels.service_name"]
      }

      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.labels.service_name"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The ${each.key} function answers with server errors. Its logs: Cloud Run service `${each.value}`. Callers' mistakes are 4xx and do not count here."
  }
}

resource "google_monitoring_alert_policy" "function_latency" {
  for_each = local.function_names

  project               = var.project
  display_name          = "${var.name_prefix}: ${each.key} p99 latency"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "p99 request latency of ${each.value} above ${var.function_p99_latency_ms[each.key]} ms"

    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${each.value}\" AND metric.type = \"run.googleapis.com/request_latencies\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.function_p99_latency_ms[each.key]
      duration        = "300s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_PERCENTILE_99"
        group_by_fields      = ["resource.labels.service_name"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The ${each.key} function is slow. Check instance count against max instances, cold starts (min instances) and Firestore latency."
  }
}

resource "google_monitoring_alert_policy" "pipeline_lag" {
  project               = var.project
  display_name          = "${var.name_prefix}: streaming pipeline lag"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "System lag of ${local.pipeline_job_name}"

    condition_threshold {
      filter          = "resource.type = \"dataflow_job\" AND resource.labels.job_name = \"${local.pipeline_job_name}\" AND metric.type = \"dataflow.googleapis.com/job/system_lag\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.pipeline_max_lag_seconds
      duration        = "300s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  conditions {
    display_name = "Data freshness (watermark age) of ${local.pipeline_job_name}"

    condition_threshold {
      filter          = "resource.type = \"dataflow_job\" AND resource.labels.job_name = \"${local.pipeline_job_name}\" AND metric.type = \"dataflow.googleapis.com/job/data_watermark_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.pipeline_max_lag_seconds
      duration        = "300s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The streaming pipeline falls behind: user embeddings and trending get stale. Check the job's autoscaling (max workers), errors in its logs and the events subscription backlog."
  }

  depends_on = [google_project_service.enabled]
}
