#!/usr/bin/env bash
# Build the pipeline/training image with Cloud Build and stage the streaming Flex Template.
#
# `terraform apply` runs this script itself (var.build_images, the default) whenever the
# image sources change: setup.py, requirements/constraints.txt, docker/, schemas/, pipelines/.
# It is idempotent: an image tag that already exists is not rebuilt.
#
# By hand, after a first apply (e.g. from CI), with the values taken from Terraform's outputs:
#
#   scripts/stage_pipeline.sh --from-terraform [TAG]
#   terraform -chdir=terraform apply -var project=... -var build_images=false [-var image_tag=TAG]
#
# Or with explicit environment variables (what Terraform passes):
#   PROJECT, REGION            where to build
#   IMAGE                      full image URI with tag (Artifact Registry)
#   TEMPLATE_PATH              gs:// path of the Flex Template spec to write
#   BUILD_SERVICE_ACCOUNT      projects/PROJECT/serviceAccounts/EMAIL that runs the build
#   STAGING_BUCKET             bucket receiving the uploaded build context
#   FORCE_BUILD=1              rebuild even if IMAGE already exists
set -euo pipefail

die() { echo "stage_pipeline: $*" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "--from-terraform" ]]; then
  command -v terraform >/dev/null || die "terraform not found"
  outputs="$(terraform -chdir="$ROOT/terraform" output -json)"
  exports="$(python3 - "${2:-}" "$outputs" <<'PY'
import json, shlex, sys
out = {k: v["value"] for k, v in json.loads(sys.argv[2]).items()}
tag = sys.argv[1]
image, template = out["image"], out["flex_template_path"]
if tag:
    image = image.rsplit(":", 1)[0] + ":" + tag
    template = template.rsplit("/", 1)[0] + f"/streaming-{tag}.json"
project = image.split("/")[1]
values = {
    "PROJECT": project,
    "REGION": image.split("-docker.pkg.dev")[0],
    "IMAGE": image,
    "TEMPLATE_PATH": template,
    "BUILD_SERVICE_ACCOUNT": f"projects/{project}/serviceAccounts/{out['service_accounts']['build']}",
    "STAGING_BUCKET": out["buckets"]["staging"],
}
print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items()))
PY
)" || die "cannot read Terraform outputs: run terraform apply first"
  eval "$exports"
fi

for name in PROJECT REGION IMAGE TEMPLATE_PATH BUILD_SERVICE_ACCOUNT STAGING_BUCKET; do
  [[ -n "${!name:-}" ]] || die "$name is not set (see the header of $0)"
done
[[ "$TEMPLATE_PATH" == gs://* ]] || die "TEMPLATE_PATH must be a gs:// path, got $TEMPLATE_PATH"
command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud SDK"

CONTEXT="$(mktemp -d)"
log="$(mktemp)"
trap 'rm -rf "$CONTEXT" "$log"' EXIT

# The build context holds only what the image needs (not .venv, data or reports).
tar -C "$ROOT" --exclude='__pycache__' --exclude='*.pyc' -cf - \
  setup.py requirements/constraints.txt docker schemas pipelines | tar -C "$CONTEXT" -xf -

if [[ -z "${FORCE_BUILD:-}" ]] && gcloud artifacts docker images describe "$IMAGE" \
    --project "$PROJECT" >/dev/null 2>&1; then
  echo "stage_pipeline: $IMAGE exists, not rebuilding (FORCE_BUILD=1 to rebuild)"
else
  echo "stage_pipeline: building $IMAGE with Cloud Build (TensorFlow image, ~10-15 min)"
  # Roles granted by the same `terraform apply` can take a minute to propagate: retry a build
  # refused for permissions, but not one that failed for any other reason.
  for attempt in 1 2 3 4 5; do
    if gcloud builds submit "$CONTEXT" \
        --project "$PROJECT" \
        --region "$REGION" \
        --config "$CONTEXT/docker/cloudbuild.yaml" \
        --substitutions "_IMAGE=$IMAGE" \
        --service-account "$BUILD_SERVICE_ACCOUNT" \
        --gcs-source-staging-dir "gs://$STAGING_BUCKET/cloudbuild/source" 2>"$log"; then
      cat "$log" >&2
      break
    fi
    cat "$log" >&2
    if [[ $attempt -lt 5 ]] && grep -qiE "permission|PERMISSION_DENIED|403" "$log"; then
      echo "stage_pipeline: permission refused (IAM still propagating?), retrying in ${RETRY_SLEEP:-30}s" >&2
      sleep "${RETRY_SLEEP:-30}"
    else
      die "Cloud Build failed (see the log above)"
    fi
  done
fi

echo "stage_pipeline: writing the Flex Template spec $TEMPLATE_PATH"
gcloud dataflow flex-template build "$TEMPLATE_PATH" \
  --project "$PROJECT" \
  --image "$IMAGE" \
  --sdk-language PYTHON
echo "stage_pipeline: done"
