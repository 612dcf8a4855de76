"""The depth initializer network against the orientation search, on held-out synthetic samples.

Usage: ``python bench/initializer.py DATASET CHECKPOINT [--frames 5] [--fast] [--device cpu]``

``DATASET`` is a ``handfit synth`` folder the network was not trained on (e.g. another
``--seed``), ``CHECKPOINT`` a ``handfit train-init`` checkpoint. Prints:

- the network alone on every sample of the set: MPJPE (mm) of its direct prediction
  (keypoints relative to the crop centre, as trained) and the forward time per crop;
- on the first ``--frames`` samples, the fitter from the search (``init="search"``) and from
  the network (``init="network"``), one frame at a time in this process: search and stage
  iterations, seconds per frame, IoU against the sample's segmentation, MPJPE against its
  keypoints (not an energy term here); then the means per variant and the median over frames
  of each frame's ratio of total iterations and of seconds (search / network).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import imageio.v3 as iio
import torch

from fitting import Fitter, Observation, read_depth
from fitting.config import FitConfig, preview_config
from fitting.initializer import load_initializer
from fitting.io import camera_from_args
from fitting.synth_dataset import SynthDataset
from hands import load_hand


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("checkpoint")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--fast", action="store_true", help="preview_config (a tenth of the iterations, 48 px)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = load_hand("default")
    data = SynthDataset(args.dataset, model)
    net = load_initializer(args.checkpoint, model, box_mm=data.box_mm, size=data.size)
    errors, seconds = [], []
    with torch.no_grad():
        for i in range(len(data)):
            s = data[i]
            t0 = time.perf_counter()
            pred = net(s["depth"][None])
            seconds.append(time.perf_counter() - t0)
            errors.append(float((pred.keypoints[0] - s["keypoints"]).norm(dim=-1).mean()))
    print(f"network alone on {len(data)} samples: MPJPE {statistics.mean(errors):.1f} mm "
          f"(median {statistics.median(errors):.1f}), {1000 * statistics.median(seconds):.1f} ms per crop")

    camera = camera_from_args(camera_json=Path(args.dataset) / "camera.json")
    cfg = preview_config() if args.fast else FitConfig()
    fitters = {"search": Fitter(load_hand("default"), "soft", cfg, device=args.device),
               "network": Fitter(load_hand("default"), "soft", cfg, device=args.device, init="network",
                                 checkpoint=args.checkpoint)}
    rows = {k: [] for k in fitters}
    for i, s in enumerate(data.samples[:args.frames]):
        obs = Observation(depth=read_depth(s["depth"], depth_scale=1.0), camera=camera,
                          mask=torch.from_numpy(iio.imread(s["segmentation"]).any(-1)), name=str(i))
        for name, fitter in fitters.items():
            r = fitter.fit(obs)
            m = r.metrics
            row = {"search": m["search_iterations"], "stages": m["iterations"], "seconds": m["seconds"],
                   "iou": m["iou"], "mpjpe_mm": float((r.keypoints - s["keypoints"]).norm(dim=-1).mean())}
            rows[name].append(row)
            print(f"frame {i} {name:7s}: {row['search']} search + {row['stages']} stage iterations, "
                  f"{row['seconds']:.1f} s, IoU {row['iou']:.3f}, MPJPE {row['mpjpe_mm']:.1f} mm", flush=True)
    for name, rs in rows.items():
        means = {k: statistics.mean(r[k] for r in rs) for k in rs[0]}
        print(f"{name:7s} means: " + json.dumps({k: round(v, 3) for k, v in means.items()}))
    its = [(a["search"] + a["stages"]) / max(1, b["search"] + b["stages"]) for a, b in zip(rows["search"], rows["network"])]
    secs = [a["seconds"] / b["seconds"] for a, b in zip(rows["search"], rows["network"])]
    print(f"search / network, median over frames: total iterations x{statistics.median(its):.2f}, "
          f"seconds x{statistics.median(secs):.2f}")


if __name__ == "__main__":
    main()
