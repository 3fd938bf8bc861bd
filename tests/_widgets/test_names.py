"""Layer names as the docks show them (_widgets/names.py)."""

from napari_pmt_iqa._widgets.names import shown_name


def test_shown_name_keeps_short_names_and_cuts_long_ones_in_the_middle():
    assert shown_name("astronaut") == "astronaut"
    spaced = "astronaut x4 (clean, blur, noise, JPEG)"  # words wrap: kept whole
    assert shown_name(spaced) == spaced
    assert len(shown_name("word " * 40)) == 64
    long = "2026-11-30_slide-04_region-12_channel-DAPI_maximum-projection_stitched.ome.tif"
    short = shown_name(long)
    assert len(short) == 32 and "\u2026" in short
    assert long.startswith(short.split("\u2026")[0]) and long.endswith(short.split("\u2026")[1])
