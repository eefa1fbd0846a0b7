#!/usr/bin/env bash
# One command, fresh machine: set up a virtual environment and run the whole system on embedded
# defaults, with progress: simulated meters -> edge agents -> MQTT broker -> four validators
# (k = 3) -> the ledger (SQLite), devices enrolled through the gateway (SQLite).
# Pass options through to `senken demo`, e.g. `bash deploy/demo.sh --devices 5 --duration 120`;
# `bash deploy/demo.sh --help` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[demo,server,chain]'
exec .venv/bin/senken demo "$@"
