"""One short check for a CUDA machine: CPU/GPU agreement and batch scoring throughput.

1. **Agreement**: the same images scored on the CPU (fp32) and on the GPU (fp32 with TF32 off, and
   the GPU's default settings) must agree within ``--tol`` score units (default 0.5, i.e. 0.5 % of a
   0-100 range).
2. **Throughput**: images per second for ``score_batch`` on 500 x 500 images, fp32 and mixed
   precision (bf16, fp16), next to a bare torchvision ResNet-50 forward over the same 480 x 480
   inputs in the same batches (the fast path runs the backbone once per image).

Run::

    .venv/bin/python benchmarks/gpu_check.py [--model NAME_OR_FILE] [--images 64] [--batch 16]

Without a CUDA GPU it prints a message and exits with status 0. Without ``--model`` (or when the
default model cannot be loaded) a random-weight ResNet-50 PMT-IQA is used: agreement and speed do
not depend on trained weights. Exit status 1 when the CPU and GPU scores disagree.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _images(n: int, size: int = 500, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        f = rng.uniform(3, 30, 2)
        base = 128 + 60 * np.sin(x / f[0]) * np.cos(y / f[1])
        img = base[..., None] + rng.normal(0, rng.uniform(1, 30), (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tol", type=float, default=0.5, help="max |CPU - GPU| in score units")
    p.add_argument("--agree-images", type=int, default=8)
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine; nothing to check (exit 0).")
        return 0

    import torchvision

    from napari_pmt_iqa.model import PMTIQA
    from napari_pmt_iqa.scoring import score, score_batch
    from napari_pmt_iqa.weights import CheckpointError, load_model

    try:
        model = load_model(args.model, device="cpu")
        label = getattr(model, "checkpoint_path", str(args.model))
    except CheckpointError as exc:
        if args.model is not None:
            print(f"gpu_check: {exc}")
            return 1
        torch.manual_seed(0)
        model = PMTIQA(backbone="resnet50", pretrained=False).eval()
        label = "random-weight resnet50 PMT-IQA (default model not available)"
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; model: {label}")

    # ------------------------------------------------------------------ agreement
    imgs = _images(args.agree_images, seed=1)
    cpu = [score(im, model, "cpu", maps=False).score for im in imgs]
    gpu_model = (
        load_model(args.model, device="cuda")
        if hasattr(model, "checkpoint_path")
        else PMTIQA(model.config, pretrained=False).eval()
    )
    if not hasattr(model, "checkpoint_path"):
        gpu_model.load_state_dict(model.state_dict())
    gpu_model = gpu_model.cuda()
    ok = True
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        g = [score(im, gpu_model, "cuda", maps=False).score for im in imgs]
        d = np.abs(np.array(cpu) - np.array(g))
        good = d.max() <= args.tol
        ok &= bool(good) or tf32  # TF32 differences are reported, only strict fp32 must pass
        print(
            f"CPU vs GPU fp32 (TF32 {'on' if tf32 else 'off'}): max |diff| {d.max():.4f}, "
            f"mean {d.mean():.4f} (tolerance {args.tol}) -> {'OK' if good else 'DIFFERENT'}"
        )
    for prec in ("bf16", "fp16"):
        g = [score(im, gpu_model, "cuda", maps=False, precision=prec).score for im in imgs]
        d = np.abs(np.array(cpu) - np.array(g))
        print(f"CPU fp32 vs GPU {prec}: max |diff| {d.max():.4f}, mean {d.mean():.4f}")
    torch.backends.cudnn.allow_tf32 = True

    # ------------------------------------------------------------------ throughput
    batch = _images(args.images, seed=2)
    rows = []
    for prec in ("fp32", "bf16", "fp16"):
        score_batch(batch[: args.batch], gpu_model, "cuda", precision=prec, batch_size=args.batch)
        torch.cuda.synchronize()
        t = time.perf_counter()
        score_batch(batch, gpu_model, "cuda", precision=prec, batch_size=args.batch)
        torch.cuda.synchronize()
        rows.append(
            (
                f"score_batch, {gpu_model.config.backbone}, {prec}",
                len(batch) / (time.perf_counter() - t),
            )
        )
    t1 = time.perf_counter()
    for im in batch[:16]:
        score(im, gpu_model, "cuda", maps=True)
    torch.cuda.synchronize()
    rows.append(("score() one image at a time, maps on, fp32", 16 / (time.perf_counter() - t1)))

    bare = torchvision.models.resnet50(weights=None).eval().cuda()
    bare = bare.to(memory_format=torch.channels_last)
    x = torch.rand(args.batch, 3, 480, 480, device="cuda").contiguous(
        memory_format=torch.channels_last
    )
    for prec, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            bare(x)
            torch.cuda.synchronize()
            t = time.perf_counter()
            n = 0
            while n < args.images:
                bare(x)
                n += args.batch
            torch.cuda.synchronize()
        rows.append(
            (f"bare torchvision ResNet-50 forward, 480x480, {prec}", n / (time.perf_counter() - t))
        )
    print(f"\n500 x 500 images, batches of {args.batch}\n")
    print("| measurement | images / s |")
    print("|---|---|")
    for label, ips in rows:
        print(f"| {label} | {ips:.1f} |")
    print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if not ok:
        print("gpu_check: CPU and GPU scores DISAGREE beyond the tolerance.")
        return 1
    print("gpu_check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
