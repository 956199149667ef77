#!/usr/bin/env bash
# One machine, embedded defaults: SQLite and artifacts under ~/.qfarm, the
# local Redis, and a worker on this machine's GPUs (or its CPU without one).
# Usage: bash scripts/quickstart.sh [MODEL] [METHOD]
set -euo pipefail
cd "$(dirname "$0")/.."
default_model=HuggingFaceTB/SmolLM2-135M
[ -d ../shared/refmodel ] && default_model=$(cd ../shared/refmodel && pwd)
MODEL=${1:-$default_model}
METHOD=${2:-gptq}
bash scripts/setup.sh
bash scripts/services.sh
. .venv/bin/activate
qfarm db upgrade
mkdir -p "${QFARM_HOME:-$HOME/.qfarm}"
log="${QFARM_HOME:-$HOME/.qfarm}/worker.log"
qfarm worker start --gpus auto >"$log" 2>&1 &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null || true' EXIT
echo "worker started (log: $log)"
job=$(qfarm submit "$MODEL" --method "$METHOD" --json | python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
if qfarm watch "$job"; then
  qfarm status "$job"
  echo "done; to use qfarm in this shell: . .venv/bin/activate"
  exit 0
fi
qfarm status "$job" || true
echo "quickstart: job $job did not succeed (its error is above; the worker's log is $log)" >&2
if [ ! -d "$MODEL" ] && [ "${MODEL#s3://}" = "$MODEL" ]; then
  echo "quickstart: $MODEL was taken for a Hugging Face hub id, which the worker fetches from the hub;" \
       "offline, give a local checkpoint directory: bash scripts/quickstart.sh /path/to/model [METHOD]" >&2
fi
exit 1
