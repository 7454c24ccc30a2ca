# Optional monthly budget of the project, with e-mail alerts. Off unless var.billing_account
# is set: a budget belongs to the billing account, and creating it needs
# roles/billing.costsManager there, which a project owner does not have by default.

resource "google_billing_budget" "project" {
  count = var.billing_account == "" ? 0 : 1

  billing_account = var.billing_account
  display_name    = "${var.name_prefix} recommender (${var.project})"

  budget_filter {
    projects = ["projects/${data.google_project.this.number}"]
  }

  amount {
    specified_amount {
      units = tostring(var.budget_amount)
    }
  }

  threshold_rules {
    threshold_percent = 0.5
  }

  threshold_rules {
    threshold_percent = 0.9
  }

  threshold_rules {
    threshold_percent = 1.0
    spend_basis       = "FORECASTED_SPEND"
  }

  all_updates_rule {
    monitoring_notification_channels = local.notification_channels
    disable_default_iam_recipients   = false # billing admins are notified too
  }

  depends_on = [google_project_service.enabled]
}
