"""Multi-view vs single-view fits from silhouettes: 3D keypoint error (MPJPE, mm) and seconds per fit.

Usage: ``python bench/multiview.py [--poses 5] [--size 96] [--working-size 64] [--azimuths 0,90]
[--scale-spread 0.1] [--keypoints] [--renderer soft] [--device auto|cpu|cuda] [--seed 0]``

Random hands (:func:`fitting.synthetic.random_hand_parameters`, 410-490 mm from the first camera,
palm roughly towards it; every bone scale multiplied by one factor drawn from
``1 +- --scale-spread``: hands larger and smaller than the template, whose size a single
silhouette cannot tell from its distance)
are rendered exactly (:class:`renderers.HybridRenderer`) into the views of a calibrated rig of
``--size`` px cameras on a circle round the hand (:func:`fitting.synthetic.look_at_rig`,
``--azimuths`` degrees; 0 and 90 are two views 90 degrees apart), as masks (and, with
``--keypoints``, the true 2D keypoints of every view). Each pose is fitted, in this process:

- ``all``: from all views together (:meth:`fitting.Fitter.fit` of the
  :class:`fitting.MultiViewObservation`: triangulated centre, candidates, search, stages);
- ``<view>``: from that view alone (the same fit of a one-view rig: the centre from the
  hand-size prior), in the same world frame.

and, to separate the energy from the initialization, once more from one common start (the truth
moved 30 mm in depth and 0.15 rad, the fingers 0.2 rad, template shape) with the same stages
(``Fitter.run``): ``same start``. Prints per variant the MPJPE (mean and median over the poses)
against the true world keypoints, and the median seconds per fit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fitting import FitConfig, Fitter, MultiViewObservation, Observation, Rig
from fitting.evaluation import mpjpe
from fitting.multiview import prepare_views, stack_views
from fitting.synthetic import look_at_rig, random_hand_parameters, render_views
from hands import load_hand
from renderers import HybridRenderer


def single_view(obs: MultiViewObservation, v: int) -> MultiViewObservation:
    """View ``v`` of ``obs`` alone, in the same world frame."""
    rig = obs.rig
    sub = Rig([rig.names[v]], [rig.cameras[v]], rig.rotation[v:v + 1], rig.translation[v:v + 1])
    o = obs.views[v]
    return MultiViewObservation(sub, [Observation(camera=o.camera, mask=o.mask, keypoints_2d=o.keypoints_2d,
                                                  name=o.name)], keypoints_3d=obs.keypoints_3d, name=obs.name)


def start_from(model, truth: dict, g: torch.Generator) -> dict:
    init = {k: v.clone() for k, v in truth.items()}
    init["transl"] = truth["transl"] + torch.tensor([[8.0, -6.0, 30.0]])
    init["global_orient"] = truth["global_orient"] + torch.tensor([[0.15, -0.1, 0.1]])
    init["theta"] = model.clamp_theta(truth["theta"] + 0.2 * torch.randn(truth["theta"].shape, generator=g))
    init["beta"] = torch.zeros_like(truth["beta"])
    init["alpha"] = torch.ones_like(truth["alpha"])
    return init


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=int, default=5)
    parser.add_argument("--size", type=int, default=96, help="view image side (px)")
    parser.add_argument("--working-size", type=int, default=64, help="working crop side (px)")
    parser.add_argument("--azimuths", default="0,90", help="view azimuths in degrees, comma-separated")
    parser.add_argument("--scale-spread", type=float, default=0.1,
                        help="the true hands' bone scales lie in 1 +- this (one factor per hand)")
    parser.add_argument("--keypoints", action="store_true", help="give every view its true 2D keypoints too")
    parser.add_argument("--renderer", default="soft")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    azimuths = [float(a) for a in args.azimuths.split(",")]
    model = load_hand("default")
    # the true keypoints are the ground truth for MPJPE, not a fitting term
    config = FitConfig(working_size=args.working_size, weights={"keypoints_3d": 0.0})
    fitter = Fitter(load_hand("default"), args.renderer, config, device=args.device)
    rig = look_at_rig([0.0, 0.0, 450.0], azimuths, size=args.size, names=[f"az{a:g}" for a in azimuths])
    g = torch.Generator().manual_seed(args.seed)
    variants = ["all"] + list(rig.names)
    errors = {f"{k} {m}": [] for m in ("fit", "same start") for k in variants}
    seconds = {f"{k} {m}": [] for m in ("fit", "same start") for k in variants}
    for i in range(args.poses):
        truth = random_hand_parameters(model, g)
        scale = 1.0 + args.scale_spread * (2.0 * float(torch.rand((), generator=g)) - 1.0)
        truth["alpha"] = torch.full_like(truth["alpha"], scale)
        obs = render_views(model, HybridRenderer(), truth, rig, keypoints=args.keypoints, name=f"pose{i}")
        if not args.keypoints:
            obs = MultiViewObservation(rig, [Observation(camera=o.camera, mask=o.mask, name=o.name) for o in obs.views],
                                       keypoints_3d=obs.keypoints_3d, name=obs.name)
        init = start_from(model, truth, g)
        cases = {"all": obs, **{n: single_view(obs, v) for v, n in enumerate(rig.names)}}
        line = [f"scale {scale:.3f}:"]
        for name, o in cases.items():
            t0 = time.perf_counter()
            result = fitter.fit(o)
            seconds[f"{name} fit"].append(time.perf_counter() - t0)
            errors[f"{name} fit"].append(result.metrics["mpjpe_mm"])
            t0 = time.perf_counter()
            prepared = prepare_views(o, fitter.config.box_mm, fitter.config.working_size)
            target = stack_views([o], [prepared.crops], fitter.device, fitter.dtype)
            state = fitter.run(target, {k: v.to(fitter.device, fitter.dtype) for k, v in init.items()})
            seconds[f"{name} same start"].append(time.perf_counter() - t0)
            with torch.no_grad():
                kp = fitter.model(**state.params).keypoints
            errors[f"{name} same start"].append(float(mpjpe(kp, obs.keypoints_3d[None].to(kp))[0]))
            line.append(f"{name} {errors[f'{name} fit'][-1]:.1f}/{errors[f'{name} same start'][-1]:.1f}")
        print(f"pose {i}: MPJPE fit/same start (mm): " + " ".join(line), flush=True)
    print(f"\n{args.poses} poses (bone scales 1 +- {args.scale_spread:g}), {len(rig)} views at {args.azimuths} "
          f"degrees, {args.size} px views, "
          f"{args.working_size} px crops, {args.renderer}, masks{' + 2D keypoints' if args.keypoints else ''}, "
          f"{fitter.device}")
    print(f"{'variant':<22} {'MPJPE mean':>11} {'median':>8} {'s/fit':>7}")
    for key in errors:
        e = errors[key]
        print(f"{key:<22} {statistics.mean(e):>8.1f} mm {statistics.median(e):>5.1f} mm "
              f"{statistics.median(seconds[key]):>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
