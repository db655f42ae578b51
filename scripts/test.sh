#!/usr/bin/env bash
# The test command: installs what it needs, lints, type-checks, then runs every test
# against real servers started on 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
# Two workers (each with its own Synapse, PostgreSQL and moto on free ports): every bot test
# runs on both stores, SQLite and PostgreSQL, and two at a time keep a 2-core machine busy.
exec .venv/bin/pytest -q -n "${TEST_WORKERS:-2}" --dist worksteal "$@"
