#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: napari with the plugin docked and a sample image
# scored with its quality maps. Without a display it runs under Xvfb, writes demo.png and prints the
# scores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${DISPLAY:-}" ] && [ -z "${PMT_IQA_HEADLESS:-}" ]; then
  exec .venv/bin/python scripts/demo.py "$@"
else
  exec xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python scripts/demo.py --screenshot demo.png "$@"
fi
