"""Tests of the napari widgets (napari_pmt_iqa._widgets), one file per module."""
