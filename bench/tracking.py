"""Tracking a synthetic contiguous sequence: frames per second, iterations, keypoint error, jitter.

Usage: ``python bench/tracking.py [--frames 100] [--working-size 96] [--budget 8]
[--variants icp,lm,adam8,adam] [--jump-at N] [--device auto|cpu|cuda] [--seed 0]``

A noisy SR305-sized sequence of a hand moving back and forth (:func:`fitting.synthetic.synthetic_sequence`,
about 1.6 mm and 1 degree per frame at most, like 30 fps) is tracked by :class:`fitting.tracking.Tracker`
with the true shape frozen and the first frame's pose given (what a calibration and a detector would
provide), so only the per-frame tracking is measured. Variants, each on the same frames in this run:

- ``icp``: Levenberg-Marquardt on the articulated-ICP tracking energy with closed-form Jacobians
  (``TrackOptions(energy="icp")``, :mod:`fitting.tracking_energy`), ``--budget`` iterations per
  warm frame (``fit-sequence --track``);
- ``lm``: Levenberg-Marquardt on the render-and-compare energy (forward-mode Jacobians through
  the soft rasterizer), ``--budget`` iterations per warm frame;
- ``adamN``: Adam with N iterations per warm frame (the same budget, first-order);
- ``adam``: Adam with the default warm stage (up to 120 iterations; ``fit-sequence`` without ``--track``).

A ``-seg`` suffix (``lm-seg``, ``icp-seg``) segments every frame in full instead of cropping
warm frames around the predicted hand (``TrackOptions(tracked_crop=False)``).

Prints per variant: frames per second (wall time of the tracking loop over frames 1..T-1, with
cropping and the final metrics; the one-off import of ``torch._dynamo`` that ``torch.func``
does on its first call is done before timing), frames per CPU second of this process (``cpu
f/s``: what one idle core would do, where other jobs share the machine; one torch thread),
iterations per frame, mean keypoint error (mm), jitter (mean
keypoint acceleration, mm/frame^2; the truth's own is printed too), re-acquired frames.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch._dynamo  # noqa: F401  torch.func's first jvp (the lm variant) imports it lazily: 1.6 s, not in the loop

from fitting import Fitter, FitConfig, Observation
from fitting.synthetic import SR305_CAMERA, synthetic_sequence
from fitting.tracking import Tracker, TrackOptions, keypoint_jitter
from hands import load_hand
from renderers import Camera, HybridRenderer


def run_variant(name: str, frames, params, truth, working_size: int, budget: int, device) -> dict:
    model = load_hand("default")
    name, _, suffix = name.partition("-")
    energy = "render"
    if name == "icp":
        config = FitConfig(optimizer="lm", search_optimizer="adam", working_size=working_size)
        iters, energy = budget, "icp"
    elif name == "lm":
        config, iters = FitConfig(optimizer="lm", search_optimizer="adam", working_size=working_size), budget
    elif name.startswith("adam") and name[4:]:
        config, iters = FitConfig(working_size=working_size), int(name[4:])
    else:
        config, iters = FitConfig(working_size=working_size), None
    fitter = Fitter(model, "soft", config, device=device)
    shape = {k: params[0][k] for k in ("alpha", "beta", "offsets")}
    options = TrackOptions(frame_iterations=iters, recover_from_last_pose=True, energy=energy,
                           tracked_crop=suffix != "seg")
    tracker = Tracker(fitter, options, shape=shape)
    with torch.no_grad():
        tracker.resume(params[0], load_hand("default")(**params[0]).keypoints[0])
    if fitter.device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    results = [tracker.step(o) for o in frames[1:]]
    if fitter.device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    kp = torch.stack([r.keypoints for r in results]).to(truth)
    return dict(fps=len(results) / seconds, cpu_fps=len(results) / cpu_seconds,
                iterations=sum(r.metrics["iterations"] for r in results) / len(results),
                error=float((kp - truth[1:]).norm(dim=-1).mean()), jitter=keypoint_jitter(kp),
                recovered=sum(r.metrics["recovered"] for r in results), device=str(fitter.device))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--working-size", type=int, default=96)
    parser.add_argument("--budget", type=int, default=8, help="LM iterations per warm frame")
    parser.add_argument("--variants", default="icp,lm,adam8,adam")
    parser.add_argument("--jump-at", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    camera = Camera(**SR305_CAMERA)
    model = load_hand("default")
    depths, params, truth = synthetic_sequence(model, HybridRenderer(), camera, args.frames,
                                               torch.Generator().manual_seed(args.seed), jump_at=args.jump_at)
    frames = [Observation(depth=d, camera=camera, name=f"frame{i}") for i, d in enumerate(depths)]
    print(f"{args.frames} frames {camera.width}x{camera.height}, working size {args.working_size} px, "
          f"torch threads {torch.get_num_threads()}; truth jitter {keypoint_jitter(truth):.2f} mm/frame^2")
    print(f"{'variant':8s} {'device':7s} {'frames/s':>9s} {'cpu f/s':>8s} {'iters':>6s} {'kp mm':>6s} {'jitter':>7s} "
          f"{'re-acq':>6s}")
    for name in args.variants.split(","):
        r = run_variant(name, frames, params, truth, args.working_size, args.budget, args.device)
        print(f"{name:8s} {r['device']:7s} {r['fps']:9.2f} {r['cpu_fps']:8.2f} {r['iterations']:6.1f} "
              f"{r['error']:6.2f} "
              f"{r['jitter']:7.2f} {r['recovered']:6d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
