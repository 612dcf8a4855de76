"""Fit all SR305 frames of ../shared/data/sr305 and print per-frame and summary figures.

Usage: ``python bench/fit_sr305.py [--batch 4] [--working-size 96] [--angles -30,-15,0,15,30]
[--renderer soft|splat|pytorch3d] [--limit N] [--only SEQ/FRAME,...] [--out out/sr305] [--device auto|cpu|cuda] [--dtype float32|float64]
[--model default|mano|gltf [--mano-path FILE | --model-path FILE]]``

The hand model is chosen with the command line's model flags (``fitting.cli.build_model``);
the time to load it is printed first.

Prints, per frame: IoU against the segmented hand, mean and median absolute depth residual
(mm), iterations of the final fit, iterations of the initial search (summed over its
candidates and hypotheses) and seconds per frame; then mean, median and min of each column. Frames are
fitted in batches of ``--batch`` (the fitter is batched); seconds per frame are the batch's
wall time divided by its size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from fitting import DEFAULT_RENDERER, Fitter, FitConfig, Observation, read_depth
from fitting.cli import add_model_arguments, build_model
from fitting.config import IN_PLANE_ANGLES_DEG
from fitting.synthetic import SR305_CAMERA
from renderers import RENDERERS, Camera

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sr305"


def frames() -> list[Path]:
    return sorted(DATA.glob("*/*.png"), key=lambda p: (p.parent.name, int(p.stem)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--working-size", type=int, default=96)
    parser.add_argument("--limit", type=int, default=0, help="fit only the first N frames")
    parser.add_argument("--only", default="", help="fit only these frames (comma-separated, e.g. 20210326-231615/180)")
    parser.add_argument("--angles", default=",".join(f"{a:g}" for a in IN_PLANE_ANGLES_DEG),
                        help="in-plane rotations (degrees) of the initial search; 0 turns it off")
    parser.add_argument("--renderer", choices=sorted(RENDERERS), default=DEFAULT_RENDERER,
                        help=f"differentiable renderer (default {DEFAULT_RENDERER})")
    parser.add_argument("--out", default="", help="also write each frame's outputs here")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    add_model_arguments(parser)
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"no SR305 data at {DATA}", file=sys.stderr)
        return 1
    paths = frames()
    if args.only:
        wanted = set(args.only.split(","))
        paths = [p for p in paths if f"{p.parent.name}/{p.stem}" in wanted]
        if len(paths) != len(wanted):
            print(f"--only: no such frames: {sorted(wanted - {f'{p.parent.name}/{p.stem}' for p in paths})}",
                  file=sys.stderr)
            return 1
    paths = paths[: args.limit or None]
    camera = Camera(**SR305_CAMERA)
    import time

    t0 = time.perf_counter()
    model = build_model(args, "right")
    print(f"model: {model.data.source}, {model.num_vertices} vertices, loaded in {time.perf_counter() - t0:.2f} s")
    config = FitConfig(working_size=args.working_size, angles_deg=tuple(float(a) for a in args.angles.split(",")))
    fitter = Fitter(model, args.renderer, config, device=args.device, dtype=getattr(torch, args.dtype))
    print(f"device: {fitter.device}, dtype: {fitter.dtype}, renderer: {args.renderer}")
    torch.manual_seed(0)
    rows = []
    print(f"{'frame':28s} {'IoU':>6s} {'mean mm':>8s} {'med mm':>7s} {'iters':>6s} {'search':>7s} {'s/frame':>8s}")
    for start in range(0, len(paths), args.batch):
        batch = paths[start:start + args.batch]
        obs = [Observation(depth=read_depth(p, depth_scale=0.125), camera=camera,
                           name=f"{p.parent.name}/{p.stem}") for p in batch]
        results = fitter.fit(obs)
        for r in results:
            m = r.metrics
            rows.append(m)
            print(f"{r.name:28s} {m['iou']:6.3f} {m['depth_mean_mm']:8.2f} {m['depth_median_mm']:7.2f} "
                  f"{m['iterations']:6d} {m['search_iterations']:7d} {m['seconds']:8.1f}", flush=True)
            if args.out:
                r.save(Path(args.out) / r.name.replace("/", "_"))
    print()
    for key, label in (("iou", "IoU"), ("depth_mean_mm", "depth mean mm"), ("depth_median_mm", "depth median mm"),
                       ("iterations", "iterations"), ("search_iterations", "search iters"),
                       ("seconds", "s/frame")):
        values = [r[key] for r in rows]
        print(f"{label:16s} mean {statistics.fmean(values):8.3f}  median {statistics.median(values):8.3f}  "
              f"min {min(values):8.3f}  max {max(values):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
