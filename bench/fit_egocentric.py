"""Fit synthetic egocentric frames (a head-mounted camera) with truth, held object on and off.

Usage: ``python bench/fit_egocentric.py [--frames 20] [--start 0] [--working-size 96] [--renderer soft]
[--seed 0] [--device auto|cpu|cuda] [--pose-prior auto|open|grasp] [--search-poses open[,grasp]]
[--pose-prior-weight W]``

Each of ``--frames`` scenes (:func:`fitting.synthetic.egocentric_frame`: the forearm from the
bottom, left or right border in turn, a table, a distractor jar farther away, sensor noise)
is rendered twice, with the held object (a cylinder or a box in turn) and without it, and
fitted from scratch by ``Fitter.fit`` (segmentation, forearm cut, search, stages), the
truth never given to the fit. Prints per frame and then per case (border x object):

- ``found``: the segmented hand holds at least 80 % of the true hand's visible pixels;
- ``cut mm``: the forearm cut's distance from the true wrist (3D, mm; ``-`` without a cut);
- ``wrist ok``: the fitted hand points the right way (the fitted wrist -> middle MCP
  direction within 90 degrees of the true one, i.e. the wrist is at the forearm's end);
- ``MPJPE``: mean per-joint position error of the 21 keypoints (mm);
- ``growth``: the fitted hand's size (wrist to middle fingertip at rest, with its bone
  scales and shape) over the true one's, minus 1 (%);
- ``occl``: the share of the crop's mask the fit reports as occluded (``occluded_fraction``).

Measured (CPU, shared machine under load, 96 px, ``--frames 10``, i.e. scenes 0-9, 20 fits of
25-50 s), with the held object separated from the hand mask (:mod:`fitting.held_object`),
its pixels an occluder, and the grasp prior where it was separated: found and wrist end right
20/20; MPJPE with the object mean 9.9 mm, median 8.6 (bottom 8.4, left 7.7, right 13.9 mean),
without it 9.0 mm, median 8.6 (bottom 9.2, left 6.6, right 11.3). On scenes 0-3
(``--frames 4``) with the object 9.7 / 4.8 / 7.9 / 8.1 mm (mean 7.6; before the separation
and the grasp prior 36.7 / 50.1 / 28.6 / 39.8, mean 38.8), without it 6.7 / 8.2 / 7.6 /
10.0 (mean 8.1, the same code path as before: nothing is separated there). With
``--pose-prior grasp`` (the grasp prior in every frame) the scenes 0-3 without an object
came out 5.8 / 6.0 / 4.1 / 7.1 mm (mean 5.75). The issue's goals: < 10 mm with the object
reached on the mean of 10 scenes (not in every scene: the right-border scenes 5 and 8 at
17.3 / 16.6 mm), < 6 mm without it not reached with the default prior (9.0).

With ``--search-poses open,grasp --pose-prior-weight 1e-4`` (each in-plane hypothesis also from
the curled hand, the lower energy kept; measured at commit d2ef07d, 10 scenes): found and wrist
end right 20/20; with the object 10.1 mm mean, 8.8 median (bottom 9.0, left 7.7, right 13.9),
without it 9.0 mm, 8.7 median (bottom 9.3, left 6.6, right 10.8): scenes 0-5 without an object
8.1 mm against 8.6, scenes 8-9 worse. ``bench/egocentric_breakdown.py`` splits the error by
parameter group and segmentation (README "Egocentric views and held objects").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fitting import Fitter, FitConfig, Observation
from fitting.config import DEFAULT_RENDERER, DEFAULT_WEIGHTS, POSE_PRIORS, SEARCH_POSES
from fitting.preprocess import segment_large_frame
from fitting.synthetic import egocentric_frame
from hands import load_hand
from renderers import RENDERERS, HybridRenderer

BORDERS = ("bottom", "left", "right")
OBJECTS = ("cylinder", "box")


def hand_length(model, params: dict) -> float:
    """Wrist to middle fingertip (mm) of the hand at rest with ``params``' bone scales and shape."""
    rest = model.neutral_parameters(1)
    for k in ("alpha", "beta"):
        rest[k] = params[k].reshape(1, -1).to(rest[k])
    with torch.no_grad():
        kp = model(**rest).keypoints[0]
    return float((kp[12] - kp[0]).norm())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--start", type=int, default=0, help="the first scene's index (scene i has seed --seed + i)")
    parser.add_argument("--working-size", type=int, default=96)
    parser.add_argument("--renderer", choices=sorted(RENDERERS), default=DEFAULT_RENDERER)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pose-prior", choices=POSE_PRIORS, default="auto", help="FitConfig.pose_prior")
    parser.add_argument("--search-poses", default=",".join(SEARCH_POSES),
                        help="FitConfig.search_poses, comma-separated (open,grasp: both starts)")
    parser.add_argument("--pose-prior-weight", type=float, default=DEFAULT_WEIGHTS["pose_prior"],
                        help="the pose prior's weight (FitConfig.weights['pose_prior'])")
    args = parser.parse_args()
    model = load_hand("default")
    try:
        config = FitConfig(working_size=args.working_size, pose_prior=args.pose_prior,
                           search_poses=tuple(args.search_poses.split(",")),
                           weights={"pose_prior": args.pose_prior_weight})
    except ValueError as err:
        parser.error(str(err))
    fitter = Fitter(model, args.renderer, config, device=args.device)
    truth_model = load_hand("default")
    print(f"device: {fitter.device}, renderer: {args.renderer}, working size {args.working_size}, "
          f"pose prior {args.pose_prior} (weight {args.pose_prior_weight:g}), search poses {config.search_poses}")
    print(f"{'frame':24s} {'found':>5s} {'cut mm':>6s} {'wrist ok':>8s} {'MPJPE':>6s} {'growth':>6s} {'occl':>5s} {'s':>5s}")
    rows = []
    torch.manual_seed(0)
    for i in range(args.start, args.start + args.frames):
        border = BORDERS[i % len(BORDERS)]
        for obj in (OBJECTS[i % len(OBJECTS)], None):
            frame = egocentric_frame(truth_model, HybridRenderer(), torch.Generator().manual_seed(args.seed + i),
                                     border=border, held_object=obj)
            name = f"{i:02d}-{border}-{obj or 'none'}"
            obs = Observation(depth=frame.depth, camera=frame.camera, name=name)
            t0 = time.perf_counter()
            try:
                result = fitter.fit(obs)
            except Exception as err:  # noqa: BLE001 - a bench reports every failure and goes on
                print(f"{name:24s} failed: {err}")
                rows.append(dict(border=border, obj=obj is not None, found=False, wrist=False,
                                 mpjpe=float("nan"), cut=float("nan"), growth=float("nan"), occl=float("nan")))
                continue
            seconds = time.perf_counter() - t0
            # the segmentation the fit used, in the frame: the crop's hand pixels came from it
            seg = segment_large_frame(frame.depth, frame.camera, return_info=True)
            truth = frame.hand_mask
            found = float((seg.mask & truth).sum()) >= 0.8 * float(truth.sum())
            cut = (float((torch.tensor(seg.cut.point_mm) - frame.wrist_mm).norm()) if seg.cut is not None
                   else float("nan"))
            k, kt = result.keypoints.float(), frame.keypoints
            wrist = float((k[9] - k[0]) @ (kt[9] - kt[0])) > 0
            mpjpe = float((k - kt).norm(dim=-1).mean())
            growth = 100.0 * (hand_length(truth_model, result.params) / hand_length(truth_model, frame.params) - 1)
            occl = result.metrics["occluded_fraction"]
            rows.append(dict(border=border, obj=obj is not None, found=found, wrist=wrist, mpjpe=mpjpe, cut=cut,
                             growth=growth, occl=occl))
            cut_s = "-" if cut != cut else f"{cut:.1f}"
            print(f"{name:24s} {str(found):>5s} {cut_s:>6s} {str(wrist):>8s} {mpjpe:6.1f} {growth:+6.1f} "
                  f"{occl:5.2f} {seconds:5.1f}", flush=True)
    print()
    print(f"{'case':16s} {'n':>3s} {'found':>6s} {'wrist ok':>8s} {'cut mm':>7s} {'MPJPE mean':>10s} "
          f"{'median':>7s} {'growth':>7s}")
    cases = [(b, o) for o in (True, False) for b in BORDERS] + [("all", True), ("all", False)]
    for border, obj in cases:
        sel = [r for r in rows if r["obj"] == obj and (border == "all" or r["border"] == border)]
        if not sel:
            continue
        e = [r["mpjpe"] for r in sel if r["mpjpe"] == r["mpjpe"]]
        cuts = [r["cut"] for r in sel if r["cut"] == r["cut"]]
        g = [r["growth"] for r in sel if r["growth"] == r["growth"]]
        label = f"{border}, {'object' if obj else 'no object'}"
        print(f"{label:16s} {len(sel):3d} {sum(r['found'] for r in sel):3d}/{len(sel):<2d} "
              f"{sum(r['wrist'] for r in sel):5d}/{len(sel):<2d} "
              f"{statistics.mean(cuts) if cuts else float('nan'):7.1f} "
              f"{statistics.mean(e) if e else float('nan'):10.1f} {statistics.median(e) if e else float('nan'):7.1f} "
              f"{statistics.mean(g) if g else float('nan'):+7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
