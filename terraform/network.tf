# Network of the Dataflow workers (and the Flex Template launcher VM). Workers run without
# public IPs, so their subnetwork needs Private Google Access to reach Pub/Sub, Firestore,
# Cloud Storage and Artifact Registry; Dataflow workers talk to each other on TCP 12345-12346
# (https://cloud.google.com/dataflow/docs/guides/routes-firewall). Nothing here is created
# when var.dataflow_subnetwork names an existing subnetwork that already meets both needs.

locals {
  create_network       = var.dataflow_subnetwork == null
  dataflow_subnet      = local.create_network ? google_compute_subnetwork.dataflow[0].self_link : var.dataflow_subnetwork
  dataflow_workers_tag = "dataflow" # the network tag Dataflow puts on every worker VM
}

resource "google_compute_network" "dataflow" {
  count = local.create_network ? 1 : 0

  project                 = var.project
  name                    = "${var.name_prefix}-dataflow"
  description             = "Dataflow workers of the real-time recommender (no public IPs)."
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [google_project_service.enabled]
}

resource "google_compute_subnetwork" "dataflow" {
  count = local.create_network ? 1 : 0

  project                  = var.project
  region                   = var.region
  name                     = "${var.name_prefix}-dataflow-${var.region}"
  network                  = google_compute_network.dataflow[0].id
  ip_cidr_range            = var.dataflow_subnet_cidr
  private_ip_google_access = true # Google APIs without public IPs

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.1
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "dataflow_workers" {
  count = local.create_network ? 1 : 0

  project     = var.project
  name        = "${var.name_prefix}-dataflow-workers"
  network     = google_compute_network.dataflow[0].id
  description = "Dataflow worker-to-worker traffic (shuffle and streaming), TCP 12345-12346."
  direction   = "INGRESS"
  priority    = 1000
  source_tags = [local.dataflow_workers_tag]
  target_tags = [local.dataflow_workers_tag]

  allow {
    protocol = "tcp"
    ports    = ["12345-12346"]
  }

  log_config {
    metadata = "EXCLUDE_ALL_METADATA"
  }
}
