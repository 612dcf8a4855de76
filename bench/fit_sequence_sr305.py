"""Fit the two SR305 sequences as sequences, with and without the plausibility energies.

Usage: ``python bench/fit_sequence_sr305.py [--limit 0] [--working-size 96]
[--angles -30,-15,0,15,30] [--shape-frames 3] [--renderer soft|splat|pytorch3d]
[--out out/sequence_sr305]``

For each sequence of ``../shared/data/sr305`` and each configuration

- ``plain``: warm start, no temporal term, no penetration energy;
- ``plausible``: warm start, the temporal term (``fitting.TEMPORAL_WEIGHT``) and the
  penetration energy (``fitting.PLAUSIBILITY_WEIGHTS``),

it runs :func:`fitting.sequence.fit_sequence` from scratch and prints per frame: IoU against
the segmented hand, mean and median absolute depth residual (mm), the largest sphere
overlap (mm) and the number of overlapping pairs, fit + search iterations and seconds per
frame (search and shape estimation included); then per sequence the means and the jitter
(mean keypoint acceleration, mm/frame^2). ``--limit N`` fits only the first N frames of each
sequence (the shape is still estimated on the first ``--shape-frames``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from fitting import DEFAULT_RENDERER, PLAUSIBILITY_WEIGHTS, TEMPORAL_WEIGHT, Fitter, FitConfig
from fitting.config import IN_PLANE_ANGLES_DEG
from fitting.sequence import SequenceOptions, fit_sequence
from fitting.synthetic import SR305_CAMERA
from hands import load_hand
from renderers import RENDERERS, Camera

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sr305"
CONFIGS = {
    "plain": ({}, 0.0),
    "plausible": (PLAUSIBILITY_WEIGHTS, TEMPORAL_WEIGHT),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="fit only the first N frames of each sequence")
    parser.add_argument("--working-size", type=int, default=96)
    parser.add_argument("--shape-frames", type=int, default=3)
    parser.add_argument("--angles", default=",".join(f"{a:g}" for a in IN_PLANE_ANGLES_DEG),
                        help="in-plane rotations (degrees) of the initial search")
    parser.add_argument("--renderer", choices=sorted(RENDERERS), default=DEFAULT_RENDERER,
                        help=f"differentiable renderer (default {DEFAULT_RENDERER})")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which configurations to run")
    parser.add_argument("--out", default="out/sequence_sr305")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"no SR305 data at {DATA}", file=sys.stderr)
        return 1
    camera = Camera(**SR305_CAMERA)
    model = load_hand("default")
    torch.manual_seed(0)
    angles = tuple(float(a) for a in args.angles.split(","))
    summary = []
    for sequence in sorted(p for p in DATA.iterdir() if p.is_dir()):
        for name in args.configs.split(","):
            weights, temporal = CONFIGS[name]
            out = Path(args.out) / name / sequence.name
            shutil.rmtree(out, ignore_errors=True)
            options = SequenceOptions(shape_frames=args.shape_frames, max_frames=args.limit or None,
                                      depth_scale=0.125, progress=False)
            config = FitConfig(weights={**weights, "temporal": temporal}, working_size=args.working_size,
                               angles_deg=angles)
            fitter = Fitter(model, args.renderer, config, device=args.device)
            t0 = time.perf_counter()
            report = fit_sequence(sequence, out, fitter, camera, options)
            wall = time.perf_counter() - t0
            print(f"\n{sequence.name} [{name}]  (wall {wall:.0f} s including the shape estimate)")
            print(f"{'frame':8s} {'IoU':>6s} {'mean mm':>8s} {'med mm':>7s} {'pen mm':>7s} {'pairs':>5s} "
                  f"{'iters':>6s} {'search':>6s} {'s/frame':>8s}")
            rows = [report.metrics[f] for f in report.frames if f in report.metrics]
            for f in report.frames:
                if f in report.failures:
                    print(f"{f:8s} skipped: {report.failures[f]}")
                if f not in report.metrics:
                    continue
                m = report.metrics[f]
                print(f"{f:8s} {m['iou']:6.3f} {m['depth_mean_mm']:8.2f} {m['depth_median_mm']:7.2f} "
                      f"{m['penetration_max_mm']:7.2f} {m['penetration_pairs']:5d} {m['iterations']:6d} "
                      f"{m['search_iterations']:6d} {m['seconds']:8.1f}", flush=True)
            means = {k: statistics.fmean(r[k] for r in rows)
                     for k in ("iou", "depth_mean_mm", "depth_median_mm", "penetration_max_mm", "seconds")}
            summary.append((sequence.name, name, len(rows), means, report.jitter_mm, wall / max(len(rows), 1)))
    print(f"\n{'sequence':18s} {'config':10s} {'n':>3s} {'IoU':>6s} {'mean mm':>8s} {'med mm':>7s} "
          f"{'pen mm':>7s} {'jitter':>7s} {'fit s':>6s} {'wall s':>7s}")
    for seq, name, n, m, jitter, wall in summary:
        print(f"{seq:18s} {name:10s} {n:3d} {m['iou']:6.3f} {m['depth_mean_mm']:8.2f} {m['depth_median_mm']:7.2f} "
              f"{m['penetration_max_mm']:7.2f} {jitter:7.2f} {m['seconds']:6.1f} {wall:7.1f}")
    print("(mm: depth residuals and the largest sphere overlap; jitter: mean keypoint acceleration, "
          "mm/frame^2; fit s: per-frame fit time; wall s: wall time per frame including the shape estimate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
