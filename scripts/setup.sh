#!/usr/bin/env bash
# Set up everything napari-pmt-iqa needs on a fresh Debian/Ubuntu machine (or reuse what is there):
# system packages for a virtual display (when run as root), a virtual environment in .venv with
# pinned torch/torchvision, napari with PyQt6, and this package (editable) with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_apt=()
for pkg in xvfb xauth libxcb-icccm4 libxcb-keysyms1 libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-shape0 libdbus-1-3 libfontconfig1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "note: missing system packages (${need_apt[*]}); install them with sudo apt-get install ..." >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# pin torch/torchvision here (pyproject.toml only declares ranges)
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 "napari[pyqt6]" -e ".[testing,baselines,backbones]"
