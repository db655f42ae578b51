#!/usr/bin/env bash
# The test command: installs what it needs, lints, type-checks, then runs every test
# against real servers started on 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
