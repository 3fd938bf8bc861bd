"""The distortion-aware objective: ranking loss, pairs, validation, and training with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _iqa_data import make_dataset, make_image
from napari_pmt_iqa.data.degradations import CONTEXT
from napari_pmt_iqa.training import TrainConfig, train
from napari_pmt_iqa.training import events as E
from napari_pmt_iqa.training.errors import TrainingError
from napari_pmt_iqa.training.synthetic import (
    PairDataset,
    SyntheticTask,
    SyntheticValidation,
    pristine_samples,
    ranking_loss,
)
from napari_pmt_iqa.weights import read_metadata


def test_ranking_loss_sign_margin_and_gradients():
    better = torch.tensor([10.0, 5.0, 1.0], requires_grad=True)
    worse = torch.tensor([2.0, 4.0, 3.0], requires_grad=True)
    steps = torch.tensor([1.0, 1.0, 2.0])
    loss, acc = ranking_loss(better, worse, steps, margin=3.0)
    # pair 0 beats the margin (8 > 3): no loss; pair 1 is right but inside it (1 < 3): 2;
    # pair 2 is the wrong way round (-2 against a margin of 6): 8
    assert loss.item() == pytest.approx((0 + 2 + 8) / 3)
    assert acc == pytest.approx(2 / 3)
    loss.backward()
    # the gradient pushes the better version up and the worse one down, only where it is needed
    assert better.grad.tolist() == pytest.approx([0.0, -1 / 3, -1 / 3])
    assert worse.grad.tolist() == pytest.approx([0.0, 1 / 3, 1 / 3])


class _Store:
    def __init__(self, images):
        self.images = images

    def get(self, i):
        return self.images[i]


def _photos(n=3, size=304):
    rng = np.random.default_rng(0)
    return [make_image(rng, size, 1.0) for _ in range(n)]


def test_pairs_are_deterministic_and_the_first_version_is_less_degraded():
    store = _Store(_photos())
    ds = PairDataset(store, [0, 1, 2], length=12, crop_size=96, seed=3)
    ds.set_epoch(1)
    a, steps = ds[5]
    b, _ = ds[5]
    assert a.shape == (2, 3, 96, 96) and a.dtype == torch.uint8
    assert torch.equal(a, b) and steps.item() >= 1
    ds.set_epoch(2)
    assert not torch.equal(ds[5][0], a)
    # against the same crop at level 0, the first version is the closer one (it may be the
    # clean crop itself, level 0), for every pair of the epoch
    ds.set_epoch(1)
    for i in range(12):
        img = store.get(ds.photo_index(i))
        s = ds.spec(i, img.shape[:2])
        clean = ds.make(img, type(s)(**{**s.__dict__, "low": 0, "high": 0}))[0].astype(float)
        pair = ds.make(img, s).astype(float)
        if s.extra:
            continue  # a shared second degradation: both differ from the clean crop
        d0, d1 = np.abs(pair[0] - clean).mean(), np.abs(pair[1] - clean).mean()
        assert d0 < d1


def test_cross_region_pairs_set_a_clean_crop_against_another_degraded_one():
    store = _Store(_photos(2, 400))
    plain = PairDataset(store, [0, 1], length=40, crop_size=96, seed=3)
    ds = PairDataset(store, [0, 1], length=40, crop_size=96, seed=3, cross=0.5)
    specs = [ds.spec(i, (400, 400)) for i in range(40)]
    cross = [s for s in specs if s.y2 is not None]
    assert 8 <= len(cross) <= 32  # about half
    for i, s in enumerate(specs):
        if s.y2 is None:  # the other pairs are those of a run without cross-region pairs
            assert s == plain.spec(i, (400, 400))
            continue
        assert s.low == 0 and 3 <= s.high <= 5 and not s.extra
        img = store.get(ds.photo_index(i))
        pair = ds.make(img, s)
        c = CONTEXT
        first = img[s.y + c : s.y + c + 96, s.x + c : s.x + c + 96]
        first = first[:, ::-1] if s.flip else first
        assert np.array_equal(pair[0], first)  # level 0: the clean crop itself
        x, steps = ds[i]
        assert steps.item() == pytest.approx(0.5 * s.high)
    with pytest.raises(TrainingError, match="synthetic_cross must be in"):
        SyntheticTask(TrainConfig(synthetic="x", synthetic_cross=1.5), None, 96)


def test_zoomed_pairs_are_cut_from_the_enlarged_photo():
    store = _Store(_photos(2, 400))
    plain = PairDataset(store, [0, 1], length=30, crop_size=96, seed=3)
    ds = PairDataset(store, [0, 1], length=30, crop_size=96, seed=3, zoom=2.0)
    region = 96 + 2 * CONTEXT
    zooms = []
    for i in range(30):
        s, p = ds.spec(i, (400, 400)), plain.spec(i, (400, 400))
        # the zoom has its own random stream: the rest of the recipe is that of a run without it
        assert type(s)(**{**s.__dict__, "zoom": 1.0}) == p
        assert 1.0 <= s.zoom <= 2.0
        zooms.append(s.zoom)
        img = store.get(ds.photo_index(i))
        pair = ds.make(img, s)
        assert pair.shape == (2, 96, 96, 3) and pair.dtype == np.uint8
        if s.low == 0 and not s.extra:  # the clean version: the enlarged photo's crop
            side = int(np.ceil(region / s.zoom))
            big = Image.fromarray(np.ascontiguousarray(img[s.y : s.y + side, s.x : s.x + side]))
            big = np.asarray(big.resize((region, region), Image.BICUBIC))
            c = CONTEXT
            want = big[c : c + 96, c : c + 96]
            assert np.array_equal(pair[0], want[:, ::-1] if s.flip else want)
    assert np.ptp(zooms) > 0.5  # drawn, not fixed

    # an enlarged photo is smoother: fewer high frequencies in its crops, on average
    def edges(d):
        return np.mean(
            [np.abs(np.diff(d[i][0].float().numpy(), axis=-1)).mean() for i in range(30)]
        )

    assert edges(ds) < edges(plain)
    with pytest.raises(ValueError, match="zoom must be at least 1"):
        PairDataset(store, [0], length=1, zoom=0.5)
    for bad in (0.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(TrainingError, match="synthetic_zoom must be a number of at least 1"):
            SyntheticTask(TrainConfig(synthetic="x", synthetic_zoom=bad), None, 96)


def test_a_kind_margin_scales_the_steps_of_its_pairs():
    store = _Store(_photos(2, 304))
    kw = dict(length=40, crop_size=96, seed=3, kinds=("blur", "jpeg"))
    plain = PairDataset(store, [0, 1], **kw)
    ds = PairDataset(store, [0, 1], kind_margin={"jpeg": 12.0}, margin=3.0, **kw)
    kinds = set()
    for i in range(40):
        s = ds.spec(i, (304, 304))
        kinds.add(s.kind)
        x, steps = ds[i]
        x0, steps0 = plain[i]
        assert torch.equal(x, x0)  # the same pair, only its weight in the loss differs
        # ranking_loss multiplies steps by the margin (3): jpeg's pairs ask for 12 points a level
        want = steps0.item() * (4.0 if s.kind == "jpeg" else 1.0)
        assert steps.item() == pytest.approx(want)
    assert kinds == {"blur", "jpeg"}
    with pytest.raises(ValueError, match="not a kind of the bank"):
        PairDataset(store, [0], length=1, kinds=("blur",), kind_margin={"jpeg": 12})
    with pytest.raises(ValueError, match="must be a positive number"):
        PairDataset(store, [0], length=1, kinds=("jpeg",), kind_margin={"jpeg": -1})
    with pytest.raises(ValueError, match="needs a positive common margin"):
        PairDataset(store, [0], length=1, kinds=("jpeg",), kind_margin={"jpeg": 9}, margin=0)
    with pytest.raises(TrainingError, match="synthetic_margin must be a positive number"):
        SyntheticTask(
            TrainConfig(synthetic="x", synthetic_margin=0.0, synthetic_kind_margin={"jpeg": 9}),
            None,
            96,
        )
    with pytest.raises(TrainingError, match="not a kind of the bank"):
        SyntheticTask(
            TrainConfig(synthetic="x", synthetic_kinds=("blur",), synthetic_kind_margin={"x": 1}),
            None,
            96,
        )


def test_synthetic_validation_counts_ordered_pairs():
    store = _Store(_photos(2, 200))
    v = SyntheticValidation(store, [0, 1], kinds=("blur", "noise"), crop_size=96)
    assert len(v) == 4

    class Sharpness(torch.nn.Module):  # a "model" that scores the high frequencies of a crop
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def normalize(self, x):
            return x

        def forward(self, x):
            d = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
            return type("Out", (), {"score": -d})()  # fewer edges: "better" (wrong for blur)

    acc = v.accuracy(Sharpness())
    # blur removes high frequencies, noise adds them: this model orders noise right, blur wrong
    assert acc["synthetic_acc_noise"] == 1.0 and acc["synthetic_acc_blur"] == 0.0
    assert acc["synthetic_acc"] == pytest.approx(0.5)


def test_pristine_sources(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_photos(1, 64)[0]).save(folder / f"p{i}.png")
    (folder / "notes.txt").write_text("not an image list")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# a list\n{folder / 'p0.png'}\np1.png\n")
    assert len(pristine_samples(folder)) == 3
    (tmp_path / "p1.png").write_bytes((folder / "p1.png").read_bytes())
    got = pristine_samples([lst])
    assert [s.path.name for s in got] == ["p0.png", "p1.png"]
    with pytest.raises(ValueError, match="does not exist"):
        pristine_samples(tmp_path / "missing")


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    a = make_dataset(root / "a", n=20, size=96, seed=1, scale=100.0)
    b = make_dataset(root / "b", n=16, size=96, seed=2, scale=1.0)
    photos = root / "pristine"
    photos.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):
        Image.fromarray(make_image(rng, 160, 1.0)).save(photos / f"p{i}.png")
    return a, b, photos


def test_training_with_two_data_sets_and_the_synthetic_objective(two_datasets, tmp_path):
    a, b, photos = two_datasets
    cfg = TrainConfig(
        data=[a, b],
        data_repeat=(1.0, 0.5),
        out_dir=tmp_path / "run",
        backbone="tiny",
        pretrained=False,
        epochs=2,
        batch_size=4,
        device="cpu",
        synthetic=photos,
        synthetic_top=0.2,
        synthetic_pairs=2,
        synthetic_kinds=("blur", "noise", "jpeg"),
        synthetic_val_fraction=0.34,
        lr_schedule="cosine",
    )
    log = E.EventLog()
    res = train(cfg, listeners=[log])
    started = log.of(E.Started)[0]
    # 16 + 13 training images of a and b (20 % validation each), b at half: 16 + 6 per epoch
    assert started.n_train == 16 + 13 and started.batches_per_epoch == (16 + 6) // 4
    batches = log.of(E.BatchEnd)
    assert all(np.isfinite(ev.rank) and 0 <= ev.rank_acc <= 1 for ev in batches)
    ep = log.of(E.EpochEnd)
    assert [e.extra["w_syn"] for e in ep] == pytest.approx([1.0, 0.3])
    assert ep[0].lr == pytest.approx(1e-4) and ep[1].lr == pytest.approx(0.05e-4)
    val = ep[-1].val
    assert list(val["sets"]) == ["scores", "scores (2)"]  # both CSVs are called scores.csv
    assert 0 <= val["synthetic_acc"] <= 1 and "synthetic_acc_jpeg" in val
    assert val["select"] == pytest.approx(np.mean([val["srcc"], val["synthetic_acc"]]))
    meta = read_metadata(res.best_path)
    syn = meta["training"]["synthetic"]
    assert syn["kinds"] == ["blur", "noise", "jpeg"] and syn["photos"] == 4
    assert "motion_blur" in syn["held_out_kinds"] and syn["validation_photos"] == 2
    assert len(meta["training"]["data"]) == 2
    json.dumps(meta)


def test_resume_with_the_synthetic_objective_is_exact(two_datasets, tmp_path):
    a, _, photos = two_datasets
    common = dict(
        data=a,
        backbone="tiny",
        pretrained=False,
        epochs=2,
        batch_size=4,
        device="cpu",
        synthetic=photos,
        synthetic_pairs=2,
        synthetic_kinds=("blur", "noise"),
        seed=4,
    )
    full = train(TrainConfig(out_dir=tmp_path / "full", **common))
    ctl = E.Control()

    def stop_after_3(ev):
        if isinstance(ev, E.BatchEnd) and ev.epoch == 1 and ev.batch == 1:
            ctl.request_stop()

    part = train(TrainConfig(out_dir=tmp_path / "part", **common), [stop_after_3], ctl)
    assert part.stopped
    done = train(TrainConfig(out_dir=tmp_path / "part", resume=part.state_path, **common))
    from napari_pmt_iqa.weights import load_checkpoint

    sa = load_checkpoint(full.last_path).state_dict()
    sb = load_checkpoint(done.last_path).state_dict()
    assert all(torch.allclose(sa[k].double(), sb[k].double(), atol=1e-6) for k in sa)


def test_bad_synthetic_settings_are_clear_errors(two_datasets, tmp_path):
    from napari_pmt_iqa.training import TrainingError

    a, _, photos = two_datasets
    base = dict(data=a, backbone="tiny", pretrained=False, epochs=1, device="cpu")
    with pytest.raises(TrainingError, match="Unknown degradation"):
        train(
            TrainConfig(
                out_dir=tmp_path / "x", synthetic=photos, synthetic_kinds=("sepia",), **base
            )
        )
    with pytest.raises(TrainingError, match="does not exist"):
        train(TrainConfig(out_dir=tmp_path / "y", synthetic=tmp_path / "nope", **base))
    with pytest.raises(TrainingError, match="one positive number per data set"):
        train(TrainConfig(out_dir=tmp_path / "z", data_repeat=(1.0, 2.0), **base))
