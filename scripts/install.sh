#!/usr/bin/env bash
# Creates .venv (if missing) and installs Helyx with the pinned versions of constraints.txt.
# Usage: bash scripts/install.sh [test]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
extras=""
if [ "${1:-}" = "test" ]; then extras="[test]"; fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
