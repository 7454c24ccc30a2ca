#!/usr/bin/env bash
# Serve the recommend function locally with its production settings (functions/recommend/serving.env).
#
#   scripts/serve_recommend.sh [PORT]            # default 8080, on 127.0.0.1
#
# Firestore: set FIRESTORE_EMULATOR_HOST / GOOGLE_CLOUD_PROJECT first (e.g. `source .local/stack.env`
# after `make stack-start`). Settings already in the environment win over serving.env.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${1:-${PORT:-8080}}"
HOST="${HOST:-127.0.0.1}"
while IFS='=' read -r key value; do
  [[ -z "$key" || "$key" == \#* ]] && continue
  if [[ -z "${!key:-}" ]]; then export "$key=$value"; fi
done < "$ROOT/functions/recommend/serving.env"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
exec "$PY" -m functions_framework --target recommend --source "$ROOT/functions/recommend/main.py" \
  --host "$HOST" --port "$PORT"
