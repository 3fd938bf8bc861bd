"""Training throughput of the PMT-IQA trainer next to a bare PyTorch loop on the same batches.

For each backbone, in the same process:

* ``trainer``: :func:`napari_pmt_iqa.training.train` on in-memory images (one epoch,
  ``--warmup + --batches`` batches, no validation), timed from its ``BatchEnd`` events
  (``data_s`` = time waiting for the batch, ``step_s`` = forward/backward/step);
* ``bare loop``: the same model, loss and optimiser on the same crops, pre-stacked in memory, in
  a minimal ``for x, y in batches: forward, loss, backward, step`` loop.

Goals: the trainer within 10 % of the bare loop, and under 5 % of its time waiting for data.
Random weights (no download); speed does not depend on them. Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_training.py [--batch 8 --batches 3 --threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def make_pairs(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
        img = np.kron(img, np.ones((8, 8, 1), np.uint8))
        out.append((img, 100.0 * (i + 0.5) / n))
    return out


def bench_trainer(pairs, backbone, batch, n_batches, warmup, precision):
    from napari_pmt_iqa.training import TrainConfig, train
    from napari_pmt_iqa.training.events import BatchEnd

    evs = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            data=pairs,
            out_dir=tmp,
            backbone=backbone,
            pretrained=False,
            epochs=1,
            batch_size=batch,
            max_batches=warmup + n_batches,
            val_fraction=0,
            device="cpu",
            precision=precision,
            score_scale=(0, 100),
        )
        train(cfg, listeners=[lambda e: evs.append(e) if isinstance(e, BatchEnd) else None])
    timed = evs[warmup:]
    data = sum(e.data_s for e in timed)
    total = sum(e.data_s + e.step_s for e in timed)
    return batch * len(timed) / total, data / total


def bench_bare(pairs, backbone, batch, n_batches, warmup, precision):
    from napari_pmt_iqa.data.datasets import dataset_from_pairs
    from napari_pmt_iqa.devices import autocast
    from napari_pmt_iqa.model import PMTIQA, PMTLoss
    from napari_pmt_iqa.training.data import CropDataset, ImageStore, epoch_batches

    ds = dataset_from_pairs(pairs)
    store = ImageStore(ds.samples, 224)
    store.check()
    crops = CropDataset(store, range(len(ds)), [s.mos for s in ds.samples])
    batches = []
    for idx in epoch_batches(len(ds), batch, 0, 0)[: warmup + n_batches]:
        items = [crops[i] for i in idx]
        batches.append((torch.cat([x for x, _ in items]), torch.stack([y for _, y in items])))
    torch.manual_seed(0)
    model = PMTIQA(backbone=backbone, pretrained=False).train()
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.Adam(
        [{"params": model.backbone.parameters(), "lr": 1e-4}, {"params": heads, "lr": 1e-3}],
        weight_decay=5e-4,
    )
    loss_fn = PMTLoss()
    dev = torch.device("cpu")
    t0 = None
    for k, (x, y) in enumerate(batches):
        if k == warmup:
            t0 = time.perf_counter()
        x = model.normalize(x.float().div_(255.0))
        with autocast(dev, precision):
            out = model(x)
        loss, _, _ = loss_fn(out.score, out.logits, y.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * n_batches / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backbones", nargs="+", default=["resnet50", "efficientnet_lite0"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=3, help="timed batches")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", type=int, default=320, help="side of the generated images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.batch * (args.batches + args.warmup) + 2, args.size)
    rows = []
    for bb in args.backbones:
        ours, wait = bench_trainer(pairs, bb, args.batch, args.batches, args.warmup, args.precision)
        bare = bench_bare(pairs, bb, args.batch, args.batches, args.warmup, args.precision)
        rows.append((bb, ours, bare, ours / bare, wait))
    print(
        f"\ntraining throughput, CPU, {args.threads} threads, batch {args.batch} x 224 crops, "
        f"{args.precision}, {args.batches} timed batches after {args.warmup} warm-up"
    )
    print(
        f"{'backbone':<20} {'trainer img/s':>13} {'bare loop img/s':>15} {'ratio':>6} {'data wait':>9}"
    )
    for bb, ours, bare, ratio, wait in rows:
        print(f"{bb:<20} {ours:>13.2f} {bare:>15.2f} {ratio:>6.2f} {wait:>8.1%}")


if __name__ == "__main__":
    main()
