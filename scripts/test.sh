#!/usr/bin/env bash
# The test command: installs into .venv if needed, then runs the whole suite.
# Tests that need PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) skip when those are
# unreachable, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"
