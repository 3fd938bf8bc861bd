"""Exports: score tables and map files round-trip; a full disk leaves the previous file intact."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from napari_pmt_iqa import export
from napari_pmt_iqa.atomic import DiskFullError
from napari_pmt_iqa.scoring import score


def _photo(shape=(288, 320, 3), seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = (np.sin(x / 9.0) + np.cos(y / 13.0)) * 60 + 128
    img = base[..., None] + rng.normal(0, 20, shape if len(shape) == 3 else shape + (1,))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img if len(shape) == 3 else img[..., 0]


def test_scores_csv_round_trip_of_an_image(tiny_model, tmp_path):
    r = score(_photo(), tiny_model, "cpu")
    path = export.write_scores_csv(tmp_path / "s.csv", r, source="photo", model="tiny")
    rows = export.read_scores_csv(path)
    image = [x for x in rows if x["kind"] == "image"]
    crops = [x for x in rows if x["kind"] == "crop"]
    assert len(image) == 1 and image[0]["score"] == r.score
    assert image[0]["quality_class"] == r.predicted_class + 1  # CSVs count from 1, as napari
    assert image[0]["source"] == "photo" and image[0]["model"] == "tiny"
    assert image[0]["units"] == r.units and image[0]["higher_is_better"] is True
    assert len(crops) == r.n_crops
    ny = r.crop_scores.shape[0]
    got = np.array([[c["score"] for c in crops if c["row"] == i] for i in range(ny)])
    np.testing.assert_array_equal(got, r.crop_scores)  # full precision, not rounded
    c = next(c for c in crops if c["row"] == 1 and c["col"] == 2)
    assert (c["y"], c["x"]) == tuple(r.crop_positions[1, 2]) and c["size"] == r.crop_size
    cls = r.maps.crop_grid(r.maps.class_map)[1, 2]
    assert c["quality_class"] == cls + 1  # the class map holds 0-based classes, the CSV 1-based
    assert c["class_low"] == r.class_edges[cls] and c["class_high"] == r.class_edges[cls + 1]
    assert c["probability"] == pytest.approx(float(r.maps.crop_grid(r.maps.confidence)[1, 2]))


def test_scores_csv_of_a_stack_has_every_plane(tiny_model, tmp_path):
    stack = np.stack([_photo((256, 256), seed=s) for s in range(5)])  # 5: not colour
    r = score(stack, tiny_model, "cpu", maps=False)
    rows = export.read_scores_csv(export.write_scores_csv(tmp_path / "st.csv", r))
    planes = [x for x in rows if x["kind"] == "plane"]
    assert [p["plane"] for p in planes] == [0, 1, 2, 3, 4]
    assert [p["score"] for p in planes] == list(r.scores)
    assert [x for x in rows if x["kind"] == "image"][0]["score"] == r.score
    crops = [x for x in rows if x["kind"] == "crop"]
    assert len(crops) == sum(p.n_crops for p in r.planes)
    assert {c["plane"] for c in crops} == {0, 1, 2, 3, 4}
    assert all(c["quality_class"] is None for c in crops)  # no maps: no crop classes


def _map_layer(r, key="quality"):
    from napari_pmt_iqa._widgets.overlays import overlay_specs

    spec = next(s for s in overlay_specs(r, "photo", (1.0, 1.0), (0.0, 0.0)) if s.key == key)
    return spec.data, {"name": spec.name, **spec.kwargs}


def test_map_csv_and_tiff_round_trip(tiny_model, tmp_path):
    r = score(_photo(), tiny_model, "cpu")
    data, meta = _map_layer(r)
    rows = export.read_map_csv(export.write_map(tmp_path / "q.csv", data, meta))
    assert len(rows) == data.size
    g = r.maps.geometry
    cell = next(x for x in rows if x["row"] == 4 and x["col"] == 5)
    assert cell["quality"] == pytest.approx(float(data[4, 5]))
    assert cell["y0"] == g.translate[0] + 4 * g.scale[0] and cell["x1"] == g.translate[1] + 6 * 32
    grid = np.array(
        [[x["on_crop_grid"] for x in rows if x["row"] == i] for i in range(data.shape[0])]
    )
    np.testing.assert_array_equal(grid, np.pad(np.ones(r.crop_scores.shape, bool), 3))
    back, info = export.read_map_tiff(export.write_map(tmp_path / "q.map.tif", data, meta))
    np.testing.assert_array_equal(back, data)
    assert info["cell_size"] == list(g.scale) and info["origin"] == list(g.translate)
    assert info["units"] == r.units and info["key"] == "quality"
    labels, lmeta = _map_layer(r, "class")
    back, info = export.read_map_tiff(export.write_map(tmp_path / "c.map.tif", labels, lmeta))
    assert back.dtype == np.int32 and (back == labels).all()


def test_several_maps_in_one_csv(tiny_model, tmp_path):
    r = score(_photo(), tiny_model, "cpu")
    layers = [_map_layer(r, k) for k in ("quality", "class", "confidence")]
    rows = export.read_map_csv(export.write_maps_csv(tmp_path / "all.csv", layers))
    assert {"quality", "class", "confidence"} <= set(rows[0])
    assert rows[0]["class"] == float(layers[1][0][0, 0])
    other = score(_photo((256, 256, 3)), tiny_model, "cpu")
    with pytest.raises(export.ExportError, match="do not share one grid"):
        export.write_maps_csv(tmp_path / "mix.csv", [layers[0], _map_layer(other)])


def test_non_maps_and_bad_extensions_are_refused(tiny_model, tmp_path):
    r = score(_photo(), tiny_model, "cpu")
    data, meta = _map_layer(r)
    with pytest.raises(export.ExportError, match="not a quality map"):
        export.write_map(tmp_path / "x.csv", np.zeros((4, 4)), {"name": "photo", "metadata": {}})
    with pytest.raises(export.ExportError, match=r"\.csv .* or \.tif"):
        export.write_map(tmp_path / "x.png", data, meta)
    assert not list(tmp_path.iterdir())


def test_full_disk_is_a_clear_error_and_keeps_the_previous_file(tiny_model, tmp_path, monkeypatch):
    import os

    r = score(_photo(), tiny_model, "cpu")
    path = export.write_scores_csv(tmp_path / "s.csv", r)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:100])  # part of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def fileno(self):
            return self.f.fileno()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(DiskFullError, match="Not enough disk space .* previous file is unchanged"):
        export.write_scores_csv(path, r)
    data, meta = _map_layer(r)
    with pytest.raises(DiskFullError, match="Nothing was written"):
        export.write_map(tmp_path / "new.map.tif", data, meta)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]  # no temporary files
