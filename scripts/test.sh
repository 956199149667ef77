#!/usr/bin/env bash
# Everything the tests need, then the tests: .venv, Redis, PostgreSQL, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
exec .venv/bin/python -m pytest -q "$@"
