"""Tests of the ``pmt-iqa`` command line (``napari_pmt_iqa.cli``), one file per verb group."""
