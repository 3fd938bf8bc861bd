"""Inference cost of ``napari_pmt_iqa.score`` on a 500 x 500 image, next to bare torchvision.

What is measured (CPU, ``--threads`` threads, random weights, one process):

* **crop method** (``method="crops"``): the 81 crops of the 32-px grid (9 x 9 for 500 x 500), in
  batches of 16, against a bare torchvision ResNet-50 forward over the same 81 crops in the same
  batches. The ratio is our overhead (goal <= 1.10).
* **fast path** (``method="fast"``, the default): one backbone pass over the whole image; goals
  <= 0.30 s for ResNet-50 and <= 0.10 s for EfficientNet-Lite0; fp32 and bf16; maps on and off
  (goal: maps <= 1.3 x score alone).
* **HyperIQA-like baseline**: a bare ResNet-50 over 25 separate 224 crops, one forward each, as a
  lower bound of pyiqa's HyperIQA cost (pyiqa is not installed here: it is non-commercial and
  heavy; HyperIQA's hyper-network adds to this).

Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_inference.py [--quick]

Times are medians over repeats. On a shared machine wall times are noisy; the table also gives
the process CPU time (all threads together), which another process's load disturbs much less:
ratios are computed from CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of ``fn``."""
    fn()  # warm-up
    ts, cs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    return statistics.median(ts), statistics.median(cs)


def _crops_tensor(img: np.ndarray, crop: int = 224, step: int = 32) -> torch.Tensor:
    from napari_pmt_iqa.scoring import _prepare, _tile_to_float

    rgb = _tile_to_float(_prepare(img, crop).rgb)
    H, W = rgb.shape[:2]
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    t = (t - mean) / std
    return torch.stack(
        [
            t[:, y : y + crop, x : x + crop]
            for y in range(0, H - crop + 1, step)
            for x in range(0, W - crop + 1, step)
        ]
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one repeat, fewer rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, default=500)
    p.add_argument(
        "--backbones",
        nargs="+",
        default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
        help="light backbones timed next to ResNet-50 and the shipped default model",
    )
    p.add_argument(
        "--no-anchors",
        action="store_true",
        help="skip the crop-method, bare ResNet-50 and HyperIQA-like rows (fast path only)",
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=["fp32", "bf16"],
        help="fast-path precisions (bf16 is emulated, about 25 x slower, on CPUs without AVX-512 BF16)",
    )
    p.add_argument(
        "--pyiqa-python",
        default=os.environ.get("PYIQA_PYTHON"),
        help="Python of a separate venv with pyiqa: adds its HyperIQA and TOPIQ-NR "
        "(random weights) on the same image (env PYIQA_PYTHON)",
    )
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import torchvision  # noqa: F401  (imported before skimage, as the environment notes ask)
    from skimage import data as skdata
    from skimage.transform import resize

    from napari_pmt_iqa.model import PMTIQA

    img = skdata.astronaut()  # a 512 x 512 photo, cut (or resized) to --size
    if args.size <= 512:
        img = np.ascontiguousarray(img[: args.size, : args.size])
    else:
        img = (resize(img, (args.size, args.size), preserve_range=True)).astype(np.uint8)
    crops = _crops_tensor(img)
    n_crops = crops.shape[0]
    bs = 16
    rows: list[tuple[str, tuple[float, float], str]] = []

    # ---------------------------------------------------------------- crop method vs bare ResNet-50
    pmt50 = PMTIQA(backbone="resnet50", pretrained=False).eval()
    if not args.no_anchors:
        rows += _anchor_rows(args, img, crops, pmt50, repeats, bs)
    _fast_rows(args, img, pmt50, repeats, rows)
    _print_table(args, rows, n_crops, repeats)


def _anchor_rows(args, img, crops, pmt50, repeats, bs) -> list:
    """The crop method against a bare torchvision ResNet-50, the HyperIQA-like bound, pyiqa."""
    import torchvision

    from napari_pmt_iqa.scoring import score

    n_crops = crops.shape[0]
    rows: list = []
    bare = torchvision.models.resnet50(weights=None).eval()
    bare_cl = torchvision.models.resnet50(weights=None).eval().to(memory_format=torch.channels_last)

    def run_bare(net, cl=False):
        with torch.inference_mode():
            for k in range(0, n_crops, bs):
                x = crops[k : k + bs]
                net(x.contiguous(memory_format=torch.channels_last) if cl else x)

    t_bare = _time(lambda: run_bare(bare), repeats)
    t_bare_cl = _time(lambda: run_bare(bare_cl, True), repeats)
    t_crops = _time(
        lambda: score(img, pmt50, "cpu", method="crops", maps=False, batch_size=bs), repeats
    )
    t_ref = min(t_bare[1], t_bare_cl[1])
    rows += [
        (f"bare torchvision ResNet-50, {n_crops} crops, batches of {bs} (NCHW)", t_bare, ""),
        (
            f"bare torchvision ResNet-50, {n_crops} crops, batches of {bs} (channels-last)",
            t_bare_cl,
            "",
        ),
        (
            f"score(method='crops') ResNet-50, {n_crops} crops, fp32",
            t_crops,
            f"overhead x{t_crops[1] / t_ref:.2f} (CPU time) vs the faster bare run (goal <= 1.10)",
        ),
    ]

    # ---------------------------------------------------------------- HyperIQA-like
    one = crops[:1]

    def hyper_like():
        with torch.inference_mode():
            for _ in range(25):
                bare(one)

    t_hyper = _time(hyper_like, max(1, repeats // 2))
    rows.append(
        (
            "HyperIQA-like: bare ResNet-50, 25 separate 224 crops, one forward each",
            t_hyper,
            "lower bound of HyperIQA's cost",
        )
    )

    # ---------------------------------------------------------------- pyiqa, in its own venv
    if args.pyiqa_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "img.npy", img)
            proc = subprocess.run(
                [
                    args.pyiqa_python,
                    str(Path(__file__).with_name("_pyiqa_timing.py")),
                    str(Path(tmp) / "img.npy"),
                    str(args.threads),
                    str(max(1, repeats // 2)),
                    "hyperiqa",
                    "topiq_nr",
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
            )
        if proc.returncode == 0:
            for name, t in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                rows.append((f"pyiqa {name} (separate venv, random weights)", tuple(t), "anchor"))
        else:
            print("pyiqa timing failed:", proc.stderr[-2000:])

    return rows


def _fast_rows(args, img, pmt50, repeats, rows) -> None:
    """The fast path of each backbone and of the shipped model, maps off and on."""
    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.scoring import get_model, score

    goals = {"resnet50": 0.30}
    models = {"resnet50": pmt50}
    for b in args.backbones:
        models[b] = PMTIQA(backbone=b, pretrained=False).eval()
        goals[b] = 0.10
    models["default model (shipped)"] = get_model(None, "cpu")
    goals["default model (shipped)"] = 0.10
    if models["default model (shipped)"].defect_head is not None:
        # the same weights without the defect head: what the head and its maps cost
        import copy

        from napari_pmt_iqa.training.defects import drop_defect_head

        bare_default = drop_defect_head(copy.deepcopy(models["default model (shipped)"]))
        models["default model without its defect head"] = bare_default
        goals["default model without its defect head"] = 0.10
    for name, model in models.items():
        precs = tuple(args.precisions)
        res = {}
        for prec in precs:
            for maps in (False, True):
                if args.quick and maps and prec == "bf16":
                    continue
                res[prec, maps] = _time(
                    lambda m=model, pr=prec, mp=maps: score(img, m, "cpu", maps=mp, precision=pr),
                    repeats,
                )
        for (prec, maps), t in res.items():
            note = ""
            if not maps:
                est = t[1] / args.threads  # wall time without other load, if threads scale
                note = (
                    f"goal <= {goals[name]:.2f} s: wall {'met' if t[0] <= goals[name] else 'missed'}"
                    f", CPU/threads {est:.3f} s {'met' if est <= goals[name] else 'missed'}"
                )
            elif (prec, False) in res:
                ratio = t[1] / res[prec, False][1]
                note = f"maps / score alone = {ratio:.2f} (goal <= 1.3)"
            rows.append(
                (f"score(method='fast') {name}, {prec}, maps {'on' if maps else 'off'}", t, note)
            )


def _print_table(args, rows, n_crops, repeats) -> None:
    print(
        f"\n500 x 500 image ({n_crops} crops), {args.threads} threads, torch "
        f"{torch.__version__}, median of {repeats}\n"
    )
    print("| measurement | wall s / image | CPU s / image (all threads) | note |")
    print("|---|---|---|---|")
    for label, (t, c), note in rows:
        print(f"| {label} | {t:.3f} | {c:.3f} | {note} |")


if __name__ == "__main__":
    main()
