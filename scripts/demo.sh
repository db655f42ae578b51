#!/usr/bin/env bash
# The quick start: a local Synapse with a room and users, and the bot serving it.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test bash scripts/bootstrap.sh
exec .venv/bin/python -m devstack.demo "$@"
