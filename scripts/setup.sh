#!/usr/bin/env bash
# Create .venv and install qfarm as a worker, with its test and lint tools.
# Idempotent. (A client alone is `pip install .`: no torch, no engines.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned to the build the stack was tested with; on a machine
# with a CUDA driver pip's default torch wheel brings CUDA.
python -m pip install -q "torch==${QFARM_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e '.[worker,test,dev]'
