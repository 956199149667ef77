#!/usr/bin/env bash
# Create .venv and install qfarm as a worker, with its test and lint tools.
# Idempotent. (A client alone is `pip install .`: no torch, no engines.)
#
# uv installs it where pip can install uv: the same versions pip resolves
# (one resolution over the same indexes; `pip freeze` of the two venvs was
# identical), in 53 s against pip's 2 min 40 s on two cores (2026-11-29), as
# uv unpacks and byte-compiles in parallel. That is a sixth of CI's budget.
# uv does not read pip's configuration: pip's indexes, find-links and
# constraints on this machine are handed to it (scripts/uv_install.py).
# QFARM_INSTALLER=pip installs with pip alone, as does any failure of uv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# torch pinned to the build the stack was tested with; on a machine with a
# CUDA driver the default torch wheel brings CUDA.
torch="torch==${QFARM_TORCH_VERSION:-2.13.0}"
if [ "${QFARM_INSTALLER:-uv}" = uv ] && { [ -x .venv/bin/uv ] || python -m pip install -q uv; }; then
  # pip byte-compiles what it installs and uv does not: without the .pyc
  # files every process compiles torch afresh where PYTHONDONTWRITEBYTECODE
  # is set (as it is on CI).
  if python scripts/uv_install.py -q --python .venv/bin/python --compile-bytecode "$torch" -e '.[worker,test,dev]'; then
    exit 0
  fi
  echo "setup.sh: uv could not install qfarm; installing with pip" >&2
fi
python -m pip install -q --upgrade pip
python -m pip install -q "$torch"
python -m pip install -q -e '.[worker,test,dev]'
