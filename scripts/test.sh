#!/usr/bin/env bash
# Everything the tests need, then the gate and the tests: .venv, Redis,
# PostgreSQL, ruff, mypy, pytest (the fault suite included; `-m "not slow"`
# for the fast loop). pytest runs in QFARM_TEST_WORKERS pytest-xdist
# processes (3: on two cores, while one test waits for a worker or a fault,
# another computes; 4 left the cores oversubscribed and the memory tight,
# 11 min 8 s against 10 min 22 s with 3, and 2 waited too much, measured
# 2026-11-29); mypy, a minute of one core from a clean clone, runs beside
# them. CI's budget is 12 minutes on two cores (README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
.venv/bin/ruff check .
mypy_log=$(mktemp)
.venv/bin/mypy >"$mypy_log" 2>&1 &
mypy_pid=$!
status=0
.venv/bin/python -m pytest -q -n "${QFARM_TEST_WORKERS:-3}" --dist loadgroup "$@" || status=$?
if ! wait "$mypy_pid"; then
  cat "$mypy_log"
  status=1
fi
rm -f "$mypy_log"
exit "$status"
