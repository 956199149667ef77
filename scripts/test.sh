#!/usr/bin/env bash
# Everything the tests need, then the gate and the tests: .venv, Redis,
# PostgreSQL, ruff, mypy, pytest (the fault suite included; `-m "not slow"`
# for the fast loop).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
