# Shared names and values. Resources live in files grouped by concern:
# apis.tf, network.tf, pubsub.tf, firestore.tf, storage.tf, iam.tf, images.tf, functions.tf,
# dataflow.tf, training.tf, monitoring.tf, budget.tf.

data "google_project" "this" {
  project_id = var.project
}

locals {
  repo_root = "${path.module}/.."

  labels = merge({ app = "realtime-recommender", managed-by = "terraform" }, var.labels)

  firestore_location = coalesce(var.firestore_location, var.region)

  # --- Serving settings: functions/recommend/serving.env (KEY=VALUE lines), defaults, overrides.
  serving_env_file = "${local.repo_root}/functions/recommend/serving.env"
  serving_env_lines = fileexists(local.serving_env_file) ? [
    for line in split("\n", file(local.serving_env_file)) : trimspace(line)
    if can(regex("^[A-Za-z_][A-Za-z0-9_]*\\s*=", trimspace(line)))
  ] : []
  serving_env_from_file = {
    for line in local.serving_env_lines :
    trimspace(split("=", line)[0]) => trim(trimspace(join("=", slice(split("=", line), 1, length(split("=", line))))), "\"'")
  }
  serving_env = merge(
    { WORKERS = "2", THREADS = "2", OPENBLAS_NUM_THREADS = "1" },
    local.serving_env_from_file,
    var.serving_settings,
  )

  # --- Container image shared by the Flex Template launcher, the Dataflow workers and training.
  image_source_files = sort(concat(
    ["setup.py", "requirements/constraints.txt"],
    [for f in fileset(local.repo_root, "{docker,schemas,pipelines}/**") : f
    if !strcontains(f, "__pycache__") && !endswith(f, ".pyc")],
  ))
  image_source_hash = sha256(join("\n", [
    for f in local.image_source_files : "${f}=${filesha256("${local.repo_root}/${f}")}"
  ]))
  image_tag          = var.image_tag != "" ? var.image_tag : substr(local.image_source_hash, 0, 16)
  image_repository   = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
  image_uri          = "${local.image_repository}/recsys-pipeline:${local.image_tag}"
  flex_template_path = "gs://${google_storage_bucket.bucket["staging"].name}/templates/streaming-${local.image_tag}.json"

  # Model artefacts live under gs://<models>/models/<version>/; the archive under gs://<archive>/events/.
  archive_prefix = "events"
  model_dir      = "gs://${google_storage_bucket.bucket["models"].name}/models"
  archive_dir    = "gs://${google_storage_bucket.bucket["archive"].name}/${local.archive_prefix}"
}
