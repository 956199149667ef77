#!/usr/bin/env bash
# Runs on the lent GPU machine (see bench/RESULTS.md): installs the carried
# wheels, starts the carried redis-server, then one suite: `compare`
# (bench/compare.py), `farm` (bench/farm.py), `moe` (bench/moe.py), `kernels` (bench/kernels.py)
# or one of bench.py's.
# Usage: bash bench/gpu_run.sh SUITE [options...]
# Carried, git-ignored: .whl/ (the wheels the image lacks), .gpu/ (redis-server
# and its libraries, the shared data, tok/: the reference model's tokenizer),
# .moto/ (moto's S3 server, for `farm --s3`), .gpr/refmodel (the reference model).
set -euo pipefail
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
unset PYTHONDONTWRITEBYTECODE
# A second run in the same call finds them installed; a warm machine whose
# /tmp/site came from another set of wheels (GGUF's added) installs again.
flock /tmp/site.lock sh -c 'want=$(ls .whl | sha1sum); [ "$(cat /tmp/site/.wheels 2>/dev/null)" = "$want" ] || { python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && echo "$want" > /tmp/site/.wheels; }'
if [ -d .moto ]; then
  flock /tmp/site.lock sh -c '[ -d /tmp/site/moto ] || python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .moto/*.whl'
fi
export PYTHONPATH=/tmp/site:$PWD
ldconfig -p | grep -q libpcre2-8.so.0 || export LD_LIBRARY_PATH=$PWD/.gpu/pcre${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! ldconfig -p | grep -q libpcre2-8.so.0; then mkdir -p .gpu/pcre && cp .gpu/lib/libpcre2-8.so.0 .gpu/pcre/; fi
chmod +x .gpu/redis-server
# A second run on a warm machine finds Redis up; a worker left by a run cut short must not take this run's jobs.
# (BENCH_KEEP_WORKERS=1: another run of this call shares the machine.)
[ -n "${BENCH_KEEP_WORKERS:-}" ] || pkill -f "celery -A worker.app:app" || true
python3 -c "import socket; socket.create_connection(('127.0.0.1', 6379), 1)" 2>/dev/null \
  || LD_LIBRARY_PATH=$PWD/.gpu/lib .gpu/redis-server --daemonize yes --port 6379 --save "" --appendonly no --dir /tmp
export QFARM_HOME=${QFARM_HOME:-/tmp/qfarm} QFARM_BROKER_URL=${QFARM_BROKER_URL:-redis://127.0.0.1:6379/0} QFARM_BENCH_TOKENIZER=$PWD/.gpu/tok
# A suite starts on an empty queue and a fresh home: a call cut short leaves
# its group's jobs queued, and on a warm machine the next call's worker ran
# them first (2026-11-29: three minutes of a ten-minute call). The home's
# database, with the cut call's figures, and its logs are kept aside; its
# artifacts are not (2026-11-29: three calls' artifacts beside a 20 GiB MoE
# filled the lent machine's 64 GiB disk and failed the fourth call's job).
if [ -z "${BENCH_KEEP_WORKERS:-}" ] && [ -z "${BENCH_KEEP_STATE:-}" ]; then
  python3 -c "import os, redis; redis.Redis.from_url(os.environ['QFARM_BROKER_URL']).flushdb()"
  if [ -d "$QFARM_HOME" ]; then
    aside="$QFARM_HOME.before-$(date +%s)"
    mv "$QFARM_HOME" "$aside"
    find "$aside" -mindepth 1 -maxdepth 1 ! -name '*.db' ! -name '*.log' -exec rm -rf {} +
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, llmcompressor, gptqmodel, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'llmcompressor', llmcompressor.__version__, 'gptqmodel', gptqmodel.__version__, 'bnb', bitsandbytes.__version__)" 2>&1 | tail -1
python3 -c "from importlib.metadata import version as v; import worker.gguf_runtime as r; print('gguf', v('gguf'), 'auto-round', v('auto-round'), 'sentencepiece', v('sentencepiece'), 'GGUF runtime', r.runtime())" 2>&1 | tail -1
suite=$1; shift
# Stop short of the call's limit (counted from this script's start) so the
# logs and the table still come back. `compare` is bench/compare.py (its own
# --timeout ends the wait and still prints the table); the rest bench.py's suites.
name=${BENCH_NAME:-$suite}
if [ "$suite" = kernels ]; then
  # bench/kernels.py: each W4 kernel against bf16 on a 7B shape; --budget stops starting kernels in time.
  timeout $(( ${BENCH_TIMEOUT:-540} - SECONDS )) python3 -m bench.kernels "$@" --budget $(( ${BENCH_TIMEOUT:-540} - SECONDS - 40 )) \
    --json "${OUT:-/tmp}/$name.json" 2>&1 | tee "${OUT:-/tmp}/$name.log" || true
elif [ "$suite" = compare ] || [ "$suite" = farm ] || [ "$suite" = moe ]; then
  timeout $(( ${BENCH_TIMEOUT:-540} - SECONDS )) python3 -m bench.$suite "$@" --timeout $(( ${BENCH_TIMEOUT:-540} - SECONDS - 25 )) \
    --json "${OUT:-/tmp}/$name.json" 2>&1 | tee "${OUT:-/tmp}/$name.log" || true
else
  timeout $(( ${BENCH_TIMEOUT:-540} - SECONDS )) python3 -m bench.bench "$suite" "$@" --json "${OUT:-/tmp}/$name.json" 2>&1 \
    | tee "${OUT:-/tmp}/$name.log" | grep -v " running " || true
fi
for f in "$QFARM_HOME"/worker-*.log; do [ -f "$f" ] && tail -c 300000 "$f" > "${OUT:-/tmp}/$name-$(basename "$f")"; done
grep -h "preload" "$QFARM_HOME"/worker-*.log | cut -c1-400 || true
