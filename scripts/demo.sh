#!/usr/bin/env bash
# Run the demo: private Mosquitto and PostgreSQL, simulated devices, the daemon.
# Arguments go to `emon demo` (see `emon demo --help`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
exec .venv/bin/emon demo "$@"
