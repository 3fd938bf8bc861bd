"""``python -m napari_pmt_iqa ...`` (also ``torchrun -m napari_pmt_iqa train ...``)."""

import sys

from .cli import main

sys.exit(main())
