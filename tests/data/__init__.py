"""Tests of napari_pmt_iqa.data (data sets, crops, degradations)."""
