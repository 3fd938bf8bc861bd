#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PMT_IQA_OFFLINE=1 QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-xcb}
.venv/bin/python -m pytest -q "$@"
