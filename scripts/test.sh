#!/usr/bin/env bash
# The test command: installs into .venv if needed, then runs the whole suite.
# Tests that need PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) skip when those are
# unreachable, except under CI=true, where they fail.
#
# Without arguments the suite runs in two parts: everything but the `exclusive` tests spread over
# HELYX_TEST_WORKERS pytest-xdist processes (default 3 on this 2-core machine: most of the suite
# waits on processes, sockets and deadlines, not on the CPU; the non-exclusive part took 6-7.5 min
# with 3 against 9-11 with 2, all passing), then the `exclusive` tests alone, since they restart
# PostgreSQL or freeze Redis under everyone's feet. With arguments, they go to one plain pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
# Two runs at once on one machine break each other (the exclusive tests restart the PostgreSQL both
# use; both flush the same Redis databases; in one clone, both install into .venv): they take turns,
# holding this lock until pytest ends. One path for every user (not $TMPDIR), opened read-only, so a
# lock file another user made serves as well.
lock=/tmp/helyx-test-suite.lock
(umask 000 && touch "$lock") 2>/dev/null || true
if command -v flock >/dev/null && exec 9<"$lock" && ! flock -n 9; then
  echo "scripts/test.sh: another test run on this machine holds $lock; waiting (30 min at most)" >&2
  flock -w 1800 9 || { echo "scripts/test.sh: still held after 30 min; giving up" >&2; exit 1; }
fi
bash scripts/install.sh test
.venv/bin/ruff check .
.venv/bin/mypy
if [ "$#" -gt 0 ]; then
  exec .venv/bin/pytest "$@"
fi
# --dist loadfile: a module's tests stay on one worker (a module-scoped deployment is started once)
.venv/bin/pytest -n "${HELYX_TEST_WORKERS:-3}" --dist loadfile -m "not exclusive"
exec .venv/bin/pytest -m exclusive
