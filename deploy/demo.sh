#!/usr/bin/env bash
# One command, fresh machine: set up a virtual environment and run the whole system on embedded
# defaults (simulated devices -> edge agents -> broker -> a verifying subscriber), with progress.
# Pass options through to `senken demo`, e.g. `bash deploy/demo.sh --devices 5 --duration 60`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[demo]'
exec .venv/bin/senken demo "$@"
