"""Time pyiqa metrics on one image; run with the Python of a separate venv that has pyiqa.

pyiqa is PolyForm Noncommercial: it is never a dependency of napari-pmt-iqa and never imported by
it. This script only measures its speed for the side-by-side table of bench_inference.py. Weights
are random (timm and torchvision are forced to pretrained=False, so nothing is downloaded).

Usage: python _pyiqa_timing.py IMAGE.npy THREADS REPEATS METRIC [METRIC ...]
Prints one JSON object: {metric: [median wall s, median CPU s]}.
"""

import json
import statistics
import sys
import time

import numpy as np
import torch


def main() -> None:
    path, threads, repeats, *metrics = sys.argv[1:]
    torch.set_num_threads(int(threads))
    import timm
    import torchvision

    orig_timm = timm.create_model
    timm.create_model = lambda *a, **k: orig_timm(*a, **{**k, "pretrained": False})
    for name in ("resnet50", "resnet18", "vgg16"):
        fn = getattr(torchvision.models, name)
        setattr(
            torchvision.models,
            name,
            lambda *a, _fn=fn, **k: _fn(
                *a,
                **{**k, "weights": None, "pretrained": False}
                if "pretrained" in k
                else {**k, "weights": None},
            ),
        )
    import pyiqa

    img = np.load(path)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    out = {}
    for metric in metrics:
        m = pyiqa.create_metric(metric, device="cpu", pretrained=False)
        with torch.inference_mode():
            m(x)  # warm-up
            ts, cs = [], []
            for _ in range(int(repeats)):
                t, c = time.perf_counter(), time.process_time()
                m(x)
                ts.append(time.perf_counter() - t)
                cs.append(time.process_time() - c)
        out[metric] = [statistics.median(ts), statistics.median(cs)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
