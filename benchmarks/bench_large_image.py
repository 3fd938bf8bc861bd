"""Score one very large RGB image within a memory budget and report time, tiles and peak memory.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_large_image.py [--side 10000] [--memory-mb 1024]

The image is a uint8 photo tiled up to ``--side`` pixels (content does not change the cost). Peak
memory is the process's maximum resident set size, reported next to its size before scoring, so
the growth can be compared with the image itself and with the budget.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10_000)
    ap.add_argument("--memory-mb", type=float, default=1024)
    ap.add_argument("--model", default=None, help="default: the shipped default model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from skimage import data

    from napari_pmt_iqa.scoring import get_model, score

    torch.set_num_threads(args.threads)
    tile = data.astronaut()
    reps = -(-args.side // tile.shape[0])
    img = np.tile(tile, (reps, reps, 1))[: args.side, : args.side]
    model = get_model(args.model, "cpu")
    score(tile, model=model, device="cpu", maps=False)  # warm-up
    before = rss_mb()
    calls = []
    t0 = time.perf_counter()
    r = score(
        img,
        model=model,
        device="cpu",
        maps=True,
        memory_mb=args.memory_mb,
        progress=lambda d, t: calls.append((d, t)),
    )
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| image | {args.side} x {args.side} RGB uint8 ({img.nbytes / 2**20:.0f} MiB) |")
    print("|---|---|")
    print(f"| model | {model.config.backbone} |")
    print(f"| memory budget | {args.memory_mb:.0f} MB |")
    print(f"| tiles (progress calls) | {len(calls)} |")
    print(f"| crops scored | {r.n_crops} |")
    print(f"| time | {dt:.1f} s |")
    print(f"| score | {r.score:.2f} {r.units} |")
    print(f"| RSS before scoring | {before:.0f} MB |")
    print(f"| peak RSS | {peak:.0f} MB (growth {peak - before:.0f} MB) |")


if __name__ == "__main__":
    main()
