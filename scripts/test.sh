#!/usr/bin/env bash
# The project's test command (README, .ci/run): bootstrap, lint, type-check, tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_localservices.py -x`.
# Runs every stage even when an earlier one fails, and exits non-zero if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh --with-browser

failed=()

stage() {
    local name="$1"
    shift
    printf '== %s\n' "$name"
    local status=0
    "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        printf '== %s FAILED (exit status %s)\n' "$name" "$status"
        failed+=("$name")
    fi
    return 0
}

stage "ruff" .venv/bin/ruff check .
stage "mypy" .venv/bin/mypy

printf '== pytest\n'
pytest_status=0
# A base temp dir per checkout: pytest prunes old /tmp/pytest-of-<user>/pytest-N dirs, which
# would delete the data dir of another checkout's running test PostgreSQL.
basetemp="/tmp/emon-pytest-$(pwd | sha1sum | cut -c1-10)"
# Two workers (pytest-xdist), a file per worker at a time so module fixtures (the rules
# corpus, a module's daemon) are built once; EMON_TEST_WORKERS=0 runs in one process.
# The slowest tests are listed at the end so a creeping suite is seen in CI's log.
workers="${EMON_TEST_WORKERS:-2}"
.venv/bin/python -m pytest -q -p no:cacheprovider --basetemp="$basetemp" \
    --numprocesses="$workers" --dist=loadfile --durations=15 "$@" || pytest_status=$?
case "$pytest_status" in
    0) ;;
    5)
        printf '== pytest FAILED: no tests were collected (exit status 5)\n'
        failed+=("pytest")
        ;;
    *)
        printf '== pytest FAILED (exit status %s)\n' "$pytest_status"
        failed+=("pytest")
        ;;
esac

if [ ${#failed[@]} -ne 0 ]; then
    printf '== FAILED: %s\n' "${failed[*]}"
    exit 1
fi
printf '== all checks passed\n'
