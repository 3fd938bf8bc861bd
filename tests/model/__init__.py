"""Tests of napari_pmt_iqa.model."""
