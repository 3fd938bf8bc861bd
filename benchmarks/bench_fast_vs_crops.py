"""How much the fast path (``method="fast"``) differs from scoring every crop (``method="crops"``).

On LIVE-C images, with a given checkpoint: the mean and maximum absolute difference between the two
methods' image scores (and crop scores), and the SRCC/PLCC of each method against the MOS.

Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_fast_vs_crops.py \\
        --model pmt-lite0-livec-biq --limit 200 [--root ~/iqa-data/ChallengeDB_release]

The crop method costs about as many backbone passes as there are crops (81 for a 500 x 500 image),
so keep ``--limit`` small on a CPU.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registered name or checkpoint (default model)")
    p.add_argument("--root", default="~/iqa-data/ChallengeDB_release", help="LIVE-C folder")
    p.add_argument("--limit", type=int, default=20, help="number of images (first N, sorted)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--csv", type=Path, default=None, help="per-image scores to this CSV")
    args = p.parse_args(argv)

    import torch

    from napari_pmt_iqa.data.datasets import load_livec
    from napari_pmt_iqa.imaging import read_image
    from napari_pmt_iqa.metrics import iqa_metrics
    from napari_pmt_iqa.scoring import get_model, score

    torch.set_num_threads(args.threads)
    ds = load_livec(Path(args.root).expanduser())
    samples = ds.samples[: args.limit] if args.limit else ds.samples
    model = get_model(args.model, args.device)
    rows = []
    crop_diffs = []
    t_fast = t_crops = 0.0
    for k, s in enumerate(samples, 1):
        img = read_image(s.path)
        t = time.perf_counter()
        f = score(img, model, args.device, maps=False, method="fast", precision=args.precision)
        t_fast += time.perf_counter() - t
        t = time.perf_counter()
        c = score(img, model, args.device, maps=False, method="crops", precision=args.precision)
        t_crops += time.perf_counter() - t
        crop_diffs.append(np.abs(f.crop_scores - c.crop_scores).ravel())
        rows.append({"path": str(s.path), "mos": s.mos, "fast": f.score, "crops": c.score})
        print(
            f"[{k}/{len(samples)}] {s.path.name}: fast {f.score:.3f}  crops {c.score:.3f}  "
            f"MOS {s.mos:.2f}",
            flush=True,
        )

    fast = np.array([r["fast"] for r in rows])
    crops = np.array([r["crops"] for r in rows])
    mos = np.array([r["mos"] for r in rows])
    diff = np.abs(fast - crops)
    cd = np.concatenate(crop_diffs)
    mf, mc = iqa_metrics(fast, mos), iqa_metrics(crops, mos)
    units = getattr(model, "score_scale", None)
    print(
        f"\n{len(rows)} LIVE-C images, model {getattr(model, 'checkpoint_path', args.model)}, "
        f"{args.precision}, scores in {units.name if units else 'internal units'}\n"
    )
    print("| quantity | fast | crops |")
    print("|---|---|---|")
    print(f"| SRCC vs MOS | {mf['srcc']:.4f} | {mc['srcc']:.4f} |")
    print(f"| PLCC vs MOS | {mf['plcc']:.4f} | {mc['plcc']:.4f} |")
    print(f"| seconds / image | {t_fast / len(rows):.3f} | {t_crops / len(rows):.3f} |")
    print(f"\nimage score |fast - crops|: mean {diff.mean():.4f}, max {diff.max():.4f}")
    print(f"crop score  |fast - crops|: mean {cd.mean():.4f}, max {cd.max():.4f}")
    print(f"SRCC between the two methods: {iqa_metrics(fast, crops)['srcc']:.4f}")
    if args.csv:
        from napari_pmt_iqa.atomic import atomic_write_text

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["path", "mos", "fast", "crops"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(args.csv, buf.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
