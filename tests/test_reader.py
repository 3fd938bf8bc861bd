"""The data-set reader: what napari routes to it (File > Open, drag and drop) and what it reads."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _iqa_data import fake_biq, fake_livec
from napari_pmt_iqa._reader import DATASET_KEY, dataset_target, detect, get_reader, read_dataset

PLUGIN = "napari-pmt-iqa"


def _readers(path) -> set[str]:
    from napari.plugins._npe2 import get_readers

    return set(get_readers(str(path)))


def _ordinary_files(tmp_path):
    """An image of each common format, a folder of images and a napari points CSV."""
    import tifffile

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    paths = {}
    for fmt, name in (("PNG", "photo.png"), ("JPEG", "photo.jpg"), ("BMP", "photo.bmp")):
        Image.fromarray(rgb).save(tmp_path / name, format=fmt)
        paths[name] = tmp_path / name
    tifffile.imwrite(tmp_path / "photo.tif", rgb[..., 0])
    paths["photo.tif"] = tmp_path / "photo.tif"
    folder = tmp_path / "folder of images"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(rgb // (k + 1)).save(folder / f"frame{k}.png")
    paths["folder"] = folder
    (tmp_path / "points.csv").write_text("index,axis-0,axis-1\n0,10,20\n1,30,5\n")
    paths["points.csv"] = tmp_path / "points.csv"
    return paths


@pytest.mark.parametrize(
    "key", ["photo.png", "photo.jpg", "photo.tif", "photo.bmp", "folder", "points.csv"]
)
def test_ordinary_files_open_without_a_reader_choice(make_napari_viewer, tmp_path, key):
    """File > Open and drag and drop (``_open_or_raise_error``) open ordinary files with napari's
    own reader: this plugin does not claim them, so no MultipleReaderError, no dialog."""
    viewer = make_napari_viewer()
    path = _ordinary_files(tmp_path)[key]
    assert PLUGIN not in _readers(path)
    layers = viewer._open_or_raise_error([str(path)])
    assert layers, key
    expected = "Points" if key == "points.csv" else "Image"
    assert type(layers[0]).__name__ == expected
    assert DATASET_KEY not in layers[0].metadata


def test_livec_folder_is_napari_s_and_its_annotation_file_opens_the_data_set(
    make_napari_viewer, tmp_path
):
    """A LIVE-C folder is not claimed (napari offers every folder reader for every folder);
    LIVE-C's ``Data/AllMOS_release.mat`` is claimed by this plugin alone and opens the data set."""
    from napari.errors import MultipleReaderError

    viewer = make_napari_viewer()
    root = tmp_path / "ChallengeDB_release"
    names, mos = fake_livec(root, n=5)
    assert PLUGIN not in _readers(root)
    try:
        viewer._open_or_raise_error([str(root)])
    except MultipleReaderError:  # pragma: no cover - the failure this test guards against
        pytest.fail("a folder made napari ask which reader to use")
    except Exception:
        pass  # napari's own folder reader finds no image files at the top of the folder
    for mat in ("AllMOS_release.mat", "AllImages_release.mat"):
        assert _readers(root / "Data" / mat) == {PLUGIN}
    layers = viewer._open_or_raise_error([str(root / "Data" / "AllMOS_release.mat")])
    assert [lay.name for lay in layers] == names[7:]  # t1-t7 are not in the protocol
    meta = layers[0].metadata[DATASET_KEY]
    assert meta["dataset"] == "livec" and meta["mos"] == pytest.approx(mos[7])
    assert [lay.visible for lay in layers] == [True] + [False] * (len(layers) - 1)


def test_biq2021_csv_offers_this_reader_and_opens_its_part(make_napari_viewer, tmp_path):
    """BIQ2021's CSVs are claimed by name; napari's own reader claims every CSV, so napari asks
    (this plugin is among the choices) and the chosen part opens."""
    from napari.errors import MultipleReaderError

    viewer = make_napari_viewer()
    fake_biq(tmp_path)
    train = tmp_path / "Train (Images and MOS).csv"
    assert _readers(train) == {"napari", PLUGIN}
    with pytest.raises(MultipleReaderError) as info:
        viewer._open_or_raise_error([str(train)])
    assert PLUGIN in str(info.value)
    layers = viewer.open(str(train), plugin=PLUGIN)
    assert [lay.metadata[DATASET_KEY]["mos"] for lay in layers] == [0.25, 0.75, 0.5]
    test = viewer.open(str(tmp_path / "Test (Images and MOS).csv"), plugin=PLUGIN)
    assert len(test) == 1 and test[0].metadata[DATASET_KEY]["dataset"] == "biq2021-test"
    # a CSV of that name outside a BIQ2021 folder is declined
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "Train (Images and MOS).csv").write_text("a,b\n1,2\n")
    assert get_reader(str(other / "Train (Images and MOS).csv")) is None


def test_targets_from_names_and_headers(tmp_path):
    root = tmp_path / "ChallengeDB_release"
    fake_livec(root, n=3)
    assert dataset_target(root / "Data" / "AllMOS_release.mat") == (root, "livec", "all")
    assert dataset_target(root) == (root, "livec", "all")
    (tmp_path / "x_release.mat").write_bytes(b"not LIVE-C")
    assert dataset_target(tmp_path / "x_release.mat") is None
    biq = tmp_path / "biq"
    fake_biq(biq)
    assert dataset_target(biq / "Test (Images and MOS).csv") == (biq, "biq2021", "test")
    assert dataset_target(biq) == (biq, "biq2021", "all")


# --------------------------------------------------------------------------- generic CSV layout
def _csv_dataset(root, n=4):
    rng = np.random.default_rng(0)
    lines = ["image,mos"]
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / f"im{k}.png")
        lines.append(f"im{k}.png,{10 * k + 5}")
    (root / "scores.csv").write_text("\n".join(lines) + "\n")
    return root


def test_generic_csv_is_napari_s_but_read_by_the_hook(tmp_path):
    """A generic ``image,mos`` CSV has no recognisable name: napari's reader gets it (no dialog);
    the reader hook still reads it when called (the data-set widget opens such CSVs)."""
    root = _csv_dataset(tmp_path)
    assert PLUGIN not in _readers(root / "scores.csv")
    assert detect(root) == "csv" and detect(root / "scores.csv") == "csv"
    layers = get_reader(str(root))(str(root))
    assert len(layers) == 4
    data, kwargs, kind = layers[0]
    assert kind == "image" and data.shape == (40, 50, 3)
    assert kwargs["metadata"][DATASET_KEY]["mos"] == 5.0
    assert len(read_dataset(root, "csv", limit=2)) == 2


@pytest.mark.parametrize("scores", [[42.0], [7.0, 7.0, 7.0]], ids=["one-row", "all-equal"])
def test_reader_opens_csv_without_a_training_scale(tmp_path, scores):
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
