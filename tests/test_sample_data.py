"""Sample data (graded distortions) and the data-set reader."""

import numpy as np
import pytest

from napari_pmt_iqa import _sample_data
from napari_pmt_iqa._reader import detect, get_reader, read_dataset


@pytest.mark.parametrize("kind", ["blur", "noise", "jpeg"])
def test_graded_stacks_get_worse(kind):
    stack, kwargs = _sample_data.graded_stack(kind, max_side=128)
    assert stack.dtype == np.uint8 and stack.ndim == 4 and stack.shape[-1] == 3
    assert kwargs["rgb"] and len(kwargs["metadata"]["pmt_iqa_sample"]["labels"]) == stack.shape[0]
    ref = stack[0].astype(float)
    err = [np.abs(s.astype(float) - ref).mean() for s in stack]
    assert err[0] == 0 and all(b > a for a, b in zip(err, err[1:]))  # strictly graded


def test_sample_functions_return_layer_data():
    for fn in (_sample_data.graded_blur, _sample_data.photo_pair, _sample_data.local_defects):
        out = fn()
        assert out and all(isinstance(item[0], np.ndarray) and "name" in item[1] for item in out)


def test_local_defects_quadrants():
    ((img, kwargs),) = _sample_data.local_defects()
    q = _sample_data._photo("astronaut", 384)
    n = q.shape[0]
    assert img.shape == (2 * n, 2 * q.shape[1], 3) and img.dtype == np.uint8
    quads = [
        img[:n, : q.shape[1]],
        img[:n, q.shape[1] :],
        img[n:, : q.shape[1]],
        img[n:, q.shape[1] :],
    ]
    assert np.array_equal(quads[0], q)  # the clean quadrant is untouched
    for k in (1, 2, 3):
        assert np.abs(quads[k].astype(int) - q.astype(int)).mean() > 1  # the others are distorted
    assert "quadrants" in kwargs["metadata"]["pmt_iqa_sample"]


def test_distort_rejects_unknown():
    with pytest.raises(ValueError, match="Unknown distortion"):
        _sample_data.distort(np.zeros((8, 8, 3), np.uint8), "swirl", 1)


def _csv_dataset(root, n=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = ["image,mos"]
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / f"im{k}.png")
        lines.append(f"im{k}.png,{10 * k + 5}")
    (root / "scores.csv").write_text("\n".join(lines) + "\n")
    return root


def test_reader_csv_dataset(tmp_path):
    root = _csv_dataset(tmp_path)
    assert detect(root) == "csv" and detect(root / "scores.csv") == "csv"
    reader = get_reader(str(root))
    layers = reader(str(root))
    assert len(layers) == 4
    data, kwargs, kind = layers[0]
    assert kind == "image" and data.shape == (40, 50, 3)
    assert kwargs["metadata"]["pmt_iqa_dataset"]["mos"] == 5.0
    assert len(read_dataset(root, "csv", limit=2)) == 2


@pytest.mark.parametrize("scores", [[42.0], [7.0, 7.0, 7.0]], ids=["one-row", "all-equal"])
def test_reader_opens_csv_without_a_training_scale(tmp_path, scores):
    from PIL import Image

    lines = ["image,mos"]
    for k, v in enumerate(scores):
        Image.fromarray(np.full((30, 40, 3), 40 * k, np.uint8)).save(tmp_path / f"im{k}.png")
        lines.append(f"im{k}.png,{v}")
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    layers = get_reader(str(tmp_path / "scores.csv"))(str(tmp_path / "scores.csv"))
    assert [kw["metadata"]["pmt_iqa_dataset"]["mos"] for _, kw, _ in layers] == scores


def test_reader_declines_other_paths(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    assert get_reader(str(tmp_path)) is None
    assert get_reader(str(tmp_path / "notes.csv")) is None
    assert get_reader(str(tmp_path / "missing.png")) is None
