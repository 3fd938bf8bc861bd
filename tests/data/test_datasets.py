"""Data set loaders (generic CSV, LIVE-C, BIQ2021 layouts), splits, in-memory pairs and crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _iqa_data import make_dataset, make_image, make_pairs
from napari_pmt_iqa.data.crops import array_to_rgb8, load_sample_rgb
from napari_pmt_iqa.data.datasets import (
    BIQ2021_SCALE,
    LIVEC_SCALE,
    ArraySample,
    DatasetError,
    dataset_from_pairs,
    detect_layout,
    infer_scale,
    load_biq2021,
    load_csv_dataset,
    load_dataset,
    load_livec,
    random_split,
)
from napari_pmt_iqa.training.data import CropDataset, ImageStore, epoch_batches, rank_share


def _png(path, size=40, seed=0):
    Image.fromarray(make_image(np.random.default_rng(seed), size, 0.5)).save(path)


# --------------------------------------------------------------------------- generic CSV
def test_csv_layout_reads_scores_split_and_scale(tmp_path):
    csv_path = make_dataset(tmp_path, n=10, size=32, split=True)
    ds = load_dataset(tmp_path)  # a folder with exactly one CSV
    assert len(ds) == 10 and ds.root == tmp_path
    assert ds.scale.low == 0 and ds.scale.high == 100
    assert {s.split for s in ds.samples} == {"train", "test"}
    assert len(ds.split("test")) == 2
    assert load_csv_dataset(csv_path).samples[3].mos == pytest.approx(35.0)


def test_csv_missing_columns(tmp_path):
    (tmp_path / "a.csv").write_text("file_name,quality\nx.png,3\n")
    with pytest.raises(DatasetError, match="'image' and 'mos'"):
        load_csv_dataset(tmp_path / "a.csv")


@pytest.mark.parametrize("bad", ["abc", "", "nan"])
def test_csv_non_numeric_or_missing_score(tmp_path, bad):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "s.csv").write_text(f"image,mos\na.png,3\nb.png,{bad}\n")
    with pytest.raises(DatasetError, match="missing or non-numeric"):
        load_csv_dataset(tmp_path / "s.csv")


def test_csv_missing_files_are_listed_and_all_missing_is_an_error(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "s.csv").write_text("image,mos\na.png,1\nB.PNG,2\ngone.png,3\n")
    ds = load_csv_dataset(tmp_path / "s.csv")
    assert len(ds) == 2  # B.PNG matches b.png case-insensitively
    assert ds.skipped == ["gone.png: file not found"]
    (tmp_path / "t.csv").write_text("image,mos\nx.png,1\ny.png,2\n")
    with pytest.raises(DatasetError, match="none of the 2 images exist"):
        load_csv_dataset(tmp_path / "t.csv")


def test_zero_width_score_range_is_refused():
    with pytest.raises(DatasetError, match="All 3 scores are equal"):
        infer_scale([0.5, 0.5, 0.5])
    assert infer_scale([0.1, 0.9]).high == 1.0
    assert infer_scale([1.0, 4.5]).high == 5.0
    s = infer_scale([-3.0, 250.0])
    assert (s.low, s.high) == (-3.0, 250.0)


# --------------------------------------------------------------------------- official layouts
def _fake_livec(root, n=12):
    from scipy.io import savemat

    (root / "Data").mkdir(parents=True)
    (root / "Images" / "trainingImages").mkdir(parents=True)
    names = [f"t{i}.bmp" for i in range(1, 8)] + [f"{100 + i}.bmp" for i in range(n)]
    for k, n_ in enumerate(names):
        folder = root / "Images" / ("trainingImages" if n_.startswith("t") else "")
        Image.fromarray(make_image(np.random.default_rng(k), 32, 0.5)).save(
            folder / n_, format="BMP"
        )
    mos = np.linspace(10, 90, len(names))[None, :]
    arr = np.empty((len(names), 1), dtype=object)
    for k, n_ in enumerate(names):
        arr[k, 0] = np.array([n_])
    savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": arr})
    savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    return names, mos.ravel()


def test_livec_layout_excludes_training_images_and_keeps_all_others(tmp_path):
    root = tmp_path / "ChallengeDB_release"
    names, mos = _fake_livec(root)
    assert detect_layout(tmp_path) == "livec" and detect_layout(root) == "livec"
    ds = load_livec(tmp_path)
    assert len(ds) == 12  # all 12 test-protocol images; t1..t7 excluded, none dropped
    assert [s.path.name for s in ds.samples] == names[7:]
    assert ds.samples[0].mos == pytest.approx(mos[7])
    assert ds.skipped == []
    assert ds.scale == LIVEC_SCALE and ds.samples[0].content == "100"


def test_livec_not_a_livec_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a LIVE-C folder"):
        load_livec(tmp_path)


def _fake_biq(root, bad_score=False):
    (root / "Images").mkdir(parents=True)
    for k, name in enumerate(["ss01 (1).jpg", "ss02 (1014).JPG", "ss03 (5).jpg", "ss03 (6).jpg"]):
        Image.fromarray(make_image(np.random.default_rng(k), 32, 0.5)).save(
            root / "Images" / name, format="JPEG"
        )
    (root / "Train (Images and MOS).csv").write_text(
        "Image Name,MOS,,\nss01 (1).jpg,0.25,,\nss02 (1014).jpg,0.75,,\nss03 (5).jpg,"
        + ("n/a" if bad_score else "0.5")
        + ",,\n"
    )
    (root / "Test (Images and MOS).csv").write_text("Image Name,MOS\nss03 (6).jpg,0.4\n")


def test_biq2021_layout_parts_and_case_insensitive_names(tmp_path):
    _fake_biq(tmp_path)
    assert detect_layout(tmp_path) == "biq2021"
    tr = load_biq2021(tmp_path)
    assert len(tr) == 3 and tr.scale == BIQ2021_SCALE
    assert tr.samples[1].path.name == "ss02 (1014).JPG"
    assert len(load_biq2021(tmp_path, "test")) == 1
    assert len(load_dataset(tmp_path, "biq2021", part="all")) == 4
    with pytest.raises(DatasetError, match="part must be"):
        load_biq2021(tmp_path, "val")


def test_biq2021_bad_score(tmp_path):
    _fake_biq(tmp_path, bad_score=True)
    with pytest.raises(DatasetError, match="non-numeric MOS"):
        load_biq2021(tmp_path)


# --------------------------------------------------------------------------- splits
def test_random_split_is_seeded_and_keeps_content_together(tmp_path):
    csv_path = make_dataset(tmp_path, n=20, size=32)
    ds = load_csv_dataset(csv_path)
    from dataclasses import replace

    ds = replace(ds, samples=[replace(s, content=str(i // 2)) for i, s in enumerate(ds.samples)])
    a_tr, a_te = random_split(ds, 0.2, seed=3)
    b_tr, b_te = random_split(ds, 0.2, seed=3)
    assert [s.path for s in a_te.samples] == [s.path for s in b_te.samples]
    assert len(a_te) == 4 and len(a_tr) == 16
    assert not {s.content for s in a_tr.samples} & {s.content for s in a_te.samples}
    c_tr, c_te = random_split(ds, 0.2, seed=4)
    assert [s.path for s in c_te.samples] != [s.path for s in a_te.samples]


def test_random_split_needs_two_items(tmp_path):
    ds = dataset_from_pairs(make_pairs(2, size=32))
    ds = ds.subset(ds.samples[:1])
    with pytest.raises(DatasetError, match="cannot be split"):
        random_split(ds, 0.2)


# --------------------------------------------------------------------------- in-memory pairs
def test_pairs_of_arrays_and_paths(tmp_path):
    _png(tmp_path / "a.png")
    pairs = make_pairs(4, size=32) + [(tmp_path / "a.png", 4.9)]
    ds = dataset_from_pairs(pairs)
    assert len(ds) == 5 and ds.scale.high == 5.0
    assert isinstance(ds.samples[0], ArraySample) and ds.samples[0].path.name == "array-00000"
    assert load_sample_rgb(ds.samples[0], 64).shape == (64, 64, 3)
    assert load_sample_rgb(ds.samples[4], 32).shape == (40, 40, 3)
    with pytest.raises(DatasetError, match="non-numeric score"):
        dataset_from_pairs([(np.zeros((8, 8)), "good")])
    with pytest.raises(DatasetError, match="does not exist"):
        dataset_from_pairs([(tmp_path / "nope.png", 1.0)])
    with pytest.raises(DatasetError, match="not an \\(image, score\\) pair"):
        dataset_from_pairs([5])


# --------------------------------------------------------------------------- crops and batches
def test_array_to_rgb8_layouts_and_enlarging():
    g16 = np.arange(50 * 60, dtype=np.uint16).reshape(50, 60) * 20
    out = array_to_rgb8(g16, 100)
    assert out.dtype == np.uint8 and out.shape == (100, 120, 3)
    assert array_to_rgb8(np.zeros((3, 300, 240), np.uint8)).shape == (300, 240, 3)
    with pytest.raises(Exception, match="NaN"):
        array_to_rgb8(np.full((40, 40), np.nan))


def test_crop_dataset_is_deterministic_per_seed_epoch_index():
    ds = dataset_from_pairs(make_pairs(4, size=80))
    store = ImageStore(ds.samples, min_side=64)
    assert store.check() == [] and store.cached_mb > 0
    cd = CropDataset(store, [0, 1, 2, 3], [10, 20, 30, 40], crop_size=64, crops_per_image=3)
    x, y = cd[2]
    assert tuple(x.shape) == (3, 3, 64, 64) and float(y) == 30
    assert (cd[2][0] == x).all()
    cd.set_epoch(1)
    assert not (cd[2][0] == x).all()


def test_image_store_reports_bad_images(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    _png(tmp_path / "ok.png")
    from napari_pmt_iqa.data.datasets import Sample

    store = ImageStore([Sample(tmp_path / "ok.png", 1.0), Sample(tmp_path / "broken.png", 2.0)], 32)
    bad = store.check()
    assert [i for i, _ in bad] == [1] and "broken.png" in bad[0][1]


def test_batches_split_across_ranks_cover_the_single_process_batches():
    single = epoch_batches(23, 6, seed=1, epoch=2)
    assert len(single) == 3 and all(len(b) == 6 for b in single)
    assert epoch_batches(23, 6, seed=1, epoch=2) == single
    assert epoch_batches(23, 6, seed=1, epoch=3) != single
    for b in single:
        assert rank_share(b, 0, 2) + rank_share(b, 1, 2) == b


def test_a_ref_column_keeps_every_version_of_a_photo_in_one_part(tmp_path):
    from PIL import Image

    from napari_pmt_iqa.data.datasets import load_csv_dataset, random_split

    rng = np.random.default_rng(0)
    rows = ["image,mos,ref"]
    for photo in range(10):
        for level in range(4):
            name = f"p{photo}_l{level}.png"
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
            rows.append(f"{name},{90 - 20 * level},photo{photo}")
    (tmp_path / "scores.csv").write_text("\n".join(rows) + "\n")
    ds = load_csv_dataset(tmp_path / "scores.csv")
    assert {s.content for s in ds.samples} == {f"photo{i}" for i in range(10)}
    for seed in range(5):
        train, test = random_split(ds, 0.3, seed=seed)
        a = {s.content for s in train.samples}
        b = {s.content for s in test.samples}
        assert a and b and not (a & b)  # no photo in two parts
        assert len(train) % 4 == 0 and len(test) % 4 == 0


def test_a_dmos_column_is_lower_is_better(tmp_path):
    from PIL import Image

    from napari_pmt_iqa.data.datasets import load_csv_dataset

    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / f"i{i}.png")
    (tmp_path / "d.csv").write_text("image,dmos\ni0.png,10\ni1.png,40\ni2.png,70\n")
    ds = load_csv_dataset(tmp_path / "d.csv")
    assert ds.scale.higher_is_better is False and "DMOS" in ds.scale.name
    # a DMOS of 10 is a better image than 70: a higher internal score
    assert ds.scale.to_internal(10.0) > ds.scale.to_internal(70.0)
    (tmp_path / "m.csv").write_text("image,mos\ni0.png,10\ni1.png,40\ni2.png,70\n")
    assert load_csv_dataset(tmp_path / "m.csv").scale.higher_is_better is True


def test_the_recipes_livec_parts_are_one_seeded_split(tmp_path):
    from napari_pmt_iqa.data.datasets import (
        LIVEC_LEFT_OUT,
        IQADataset,
        Sample,
        livec_recipe_parts,
        with_splits,
    )
    from napari_pmt_iqa.score_scale import ScoreScale

    samples = [Sample(tmp_path / f"{i}.bmp", float(i % 100), None, str(i)) for i in range(40, 240)]
    ds = IQADataset("livec", samples, ScoreScale(0, 100))
    parts = livec_recipe_parts(ds)
    again = livec_recipe_parts(ds)
    assert [s.content for s in parts["test"].samples] == [s.content for s in again["test"].samples]
    names = {s.content for p in parts.values() for s in p.samples}
    assert not names & LIVEC_LEFT_OUT and len(parts["test"]) == round(0.2 * (200 - 7))
    marked = with_splits(ds, parts)
    assert {s.split for s in marked.samples} == {"train", "test"} and len(marked) == 193
