#!/usr/bin/env bash
# Build the wheel, install it into a brand-new virtual environment (no editable install, no source
# tree on the path) and check that napari/npe2 find the plugin, its manifest validates, and the CLI
# scores an image with the default model that ships inside the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m build --wheel --no-isolation --outdir "$work/dist" . >/dev/null
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 "napari[pyqt6]" "$work"/dist/*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import napari_pmt_iqa, npe2
from npe2 import PluginManager
print("installed at", napari_pmt_iqa.__file__)
assert "site-packages" in napari_pmt_iqa.__file__
pm = PluginManager.instance()
pm.discover()
mf = pm.get_manifest("napari-pmt-iqa")
print("napari finds:", mf.name, "with", len(mf.contributions.widgets or []), "widgets,",
      len(mf.contributions.sample_data or []), "sample data")
PY
"$work/venv/bin/npe2" validate napari-pmt-iqa
"$work/venv/bin/python" -c "import numpy as np, skimage.io as io, skimage.data as d; io.imsave('astro.png', d.astronaut())"
PMT_IQA_OFFLINE=1 "$work/venv/bin/pmt-iqa" score astro.png
echo "wheel check passed"
