"""Batch throughput: the ``pmt-iqa score`` path against the bare model forward on the same images.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_batch.py --quick          # under a minute
    OMP_NUM_THREADS=2 python benchmarks/bench_batch.py --folder ~/iqa-data/ChallengeDB_release/Images \\
        --tolerance                                                      # LIVE-C, + bf16 vs fp32

Without ``--folder`` a folder of generated photos (JPEG, 500 x 500 like LIVE-C) is written to a
temporary directory. Two timings over the same files, after a warm-up:

* **CLI path**: :func:`napari_pmt_iqa.cli.score.score_files`, what ``pmt-iqa score`` runs: decoding
  on a thread pool overlapping scoring, every intensity/layout check, the 81-crop grid, the rows.
* **bare forward**: the images decoded beforehand (not timed), then per image only the network:
  normalisation, one backbone pass, window pooling and the heads, same precision and memory
  format.

The last line is ``ratio X``: images/s of the CLI path / images/s of the bare forward (goal >= 0.85).
``--tolerance`` also scores every file in fp32 and bf16 and prints the largest and mean
difference of the image scores (the tolerance stated for ``--precision auto``).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_photos(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs (smooth shapes, texture, noise; quality 90)."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    paths = []
    for k in range(n):
        src = Image.fromarray(sources[k % len(sources)]).resize((size, size), Image.BICUBIC)
        arr = np.asarray(src).astype(np.float32)
        arr = arr * rng.uniform(0.6, 1.2) + rng.normal(0, rng.uniform(1, 12), arr.shape)
        if k % 3 == 1:
            arr = np.asarray(
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
                .resize((size // 3, size // 3), Image.BILINEAR)
                .resize((size, size), Image.BILINEAR)
            ).astype(np.float32)
        p = folder / f"photo{k:04d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def bare_forward(model, images: list[np.ndarray], precision: str) -> float:
    """Seconds for the network alone over decoded uint8 images (one pass each)."""
    import torch

    from napari_pmt_iqa.devices import autocast
    from napari_pmt_iqa.scoring import LATTICE

    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(dev, precision):
        for img in images:
            h, w = (img.shape[0] // LATTICE) * LATTICE, (img.shape[1] // LATTICE) * LATTICE
            x = torch.tensor(img[:h, :w, :3]).permute(2, 0, 1)[None].float().div_(255.0)
            x = model.normalize(x).contiguous(memory_format=torch.channels_last)
            pooled, _, _ = model.window_pooled(model.stage_maps(x))
            s, logits = model.heads(model.taps_from_pooled(pooled))
            float(s.float().mean())
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 generated images (under a minute)")
    ap.add_argument("--folder", type=Path, help="score this folder instead of generated photos")
    ap.add_argument("--n", type=int, default=200, help="generated images (default 200)")
    ap.add_argument("--size", type=int, default=500, help="side of the generated images")
    ap.add_argument("--limit", type=int, help="use at most this many files of --folder")
    ap.add_argument("--precision", default="auto", help="auto (as the CLI), fp32 or bf16")
    ap.add_argument("--model", default=None, help="default: the shipped default model")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--decode-threads", type=int, default=2)
    ap.add_argument("--tolerance", action="store_true", help="also measure bf16 against fp32")
    args = ap.parse_args(argv)

    import torch

    from napari_pmt_iqa.batch import auto_precision
    from napari_pmt_iqa.cli.score import score_files
    from napari_pmt_iqa.data.datasets import load_image_folder
    from napari_pmt_iqa.imaging import read_image
    from napari_pmt_iqa.scoring import get_model

    torch.set_num_threads(args.threads)
    model = get_model(args.model, "cpu")
    precision = auto_precision("cpu") if args.precision == "auto" else args.precision
    tmp = None
    if args.folder:
        files = load_image_folder(args.folder.expanduser())
        what = f"{args.folder}"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-batch-")
        n = 40 if args.quick else args.n
        files = make_photos(Path(tmp.name), n, args.size)
        what = f"{n} generated {args.size} x {args.size} JPEG photos"
    if args.limit:
        files = files[: args.limit]

    warm = files[: min(4, len(files))]
    score_files(warm, model, device="cpu", precision=precision, show_progress=False)

    t0 = time.perf_counter()
    rows = score_files(
        files,
        model,
        device="cpu",
        precision=precision,
        show_progress=False,
        decode_threads=args.decode_threads,
    )
    cli_s = time.perf_counter() - t0
    bad = [r for r in rows if r.get("error")]
    images = []
    for p in files:
        try:
            images.append(read_image(p))
        except Exception:
            pass
    bare_forward(model, images[: min(4, len(images))], precision)
    bare_s = bare_forward(model, images, precision)
    n_cli = len(rows) - len(bad)
    cli_ips, bare_ips = n_cli / cli_s, len(images) / bare_s
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"batch throughput: {what}, {model.config.backbone}, {precision}, {args.threads} threads")
    print(f"{'path':<34}{'images':>8}{'seconds':>10}{'images/s':>10}")
    print(f"{'CLI (score_files, decoding overlapped)':<34}{n_cli:>8}{cli_s:>10.2f}{cli_ips:>10.2f}")
    print(
        f"{'bare model forward (pre-decoded)':<34}{len(images):>8}{bare_s:>10.2f}{bare_ips:>10.2f}"
    )
    print(f"unreadable files: {len(bad)}; peak RSS {peak:.0f} MB")
    if args.tolerance and precision != "fp32":
        s16 = np.array([float(r["score"]) for r in rows if not r.get("error")])
        r32 = score_files(files, model, device="cpu", precision="fp32", show_progress=False)
        s32 = np.array([float(r["score"]) for r in r32 if not r.get("error")])
        d = np.abs(s16 - s32)
        print(
            f"{precision} vs fp32 over {d.size} images: largest difference {d.max():.3f}, mean "
            f"{d.mean():.3f}, 99th percentile {np.percentile(d, 99):.3f} points (0-100 scale)"
        )
    print(f"ratio {cli_ips / bare_ips:.3f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
