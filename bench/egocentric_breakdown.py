"""Where the keypoint error of egocentric fits comes from: segmentation or fitting, and which parameters.

Usage: ``python bench/egocentric_breakdown.py [--frames 10] [--start 0] [--object none|cylinder|box|auto]
[--working-size 96] [--oracle] [--from-truth] [--pose-prior auto|open|grasp] [--weight TERM=W ...]``

Each scene of :func:`fitting.synthetic.egocentric_frame` (as in ``bench/fit_egocentric.py``:
scene i has seed i and the forearm from the bottom, left, right border in turn) is fitted by
``Fitter.fit`` (our segmentation and forearm cut); with ``--oracle`` also from the TRUE hand mask
with the true wrist as the wrist point (``Fitter.fit_crops`` of :func:`fitting.preprocess.crop_hand`),
which splits the segmentation's share of the error from the fit's; with ``--from-truth`` every
fit starts at the true parameters (no search: the stages after the global one), which splits the
energy's minimum from the search's basin. Per fit it prints:

- ``MPJPE``: the 21 keypoints' mean error (mm);
- ``glob``, ``art``, ``shape``: the MPJPE of the true hand with only the fitted global pose
  (rotation and translation), only the fitted articulation, only the fitted bone scales, shape
  coefficients and offsets put in: each parameter group's share of the error;
- ``wrist``: the wrist keypoint's error (mm); ``PA``: the MPJPE after a rigid Procrustes
  alignment (Kabsch, no scale) of the fitted keypoints to the true ones;
- ``tips``: the fingertips' mean error (mm); ``flex``: the fitted minus the true mean flexion of
  the four fingers' MCP, PIP and DIP DoFs (rad; negative: the fit opened the fingers);
- ``cut``: the forearm cut's 3D distance to the true wrist (mm) and ``remnant``: the share of the
  segmented mask that is not hand (forearm or object).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from fitting import Fitter, FitConfig, Observation
from fitting.config import POSE_PRIORS
from fitting.preprocess import crop_hand, prepare, segment_large_frame
from fitting.synthetic import egocentric_frame
from hands import load_hand
from renderers import HybridRenderer

BORDERS = ("bottom", "left", "right")
OBJECTS = ("cylinder", "box")
TIPS = (4, 8, 12, 16, 20)


def keypoints(model, params: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**params).keypoints[0].float()


def procrustes_mpjpe(k: torch.Tensor, kt: torch.Tensor) -> float:
    a, b = k - k.mean(0), kt - kt.mean(0)
    u, _, vT = torch.linalg.svd(a.T @ b)
    d = torch.sign(torch.det(u @ vT))
    D = torch.diag(torch.tensor([1.0, 1.0, float(d)]))
    R = u @ D @ vT
    return float((a @ R - b).norm(dim=-1).mean())


def breakdown(model, fitted: dict, truth: dict) -> dict:
    fitted = {k: v.reshape(1, *v.shape) if v.ndim == truth[k].ndim - 1 else v for k, v in fitted.items()}
    fitted = {k: v.to(truth[k]) for k, v in fitted.items()}
    kt = keypoints(model, truth)
    k = keypoints(model, fitted)
    groups = {"glob": ("global_orient", "transl"), "art": ("theta",), "shape": ("alpha", "beta", "offsets")}
    out = {"MPJPE": float((k - kt).norm(dim=-1).mean())}
    for name, keys in groups.items():
        p = {**truth, **{key: fitted[key] for key in keys}}
        out[name] = float((keypoints(model, p) - kt).norm(dim=-1).mean())
    out["wrist"] = float((k[0] - kt[0]).norm())
    out["PA"] = procrustes_mpjpe(k, kt)
    out["tips"] = float((k[list(TIPS)] - kt[list(TIPS)]).norm(dim=-1).mean())
    names = model.data.dof_names
    flex = [i for i, n in enumerate(names) if not n.startswith("thumb") and "flex" in n]
    out["flex"] = float((fitted["theta"][0, flex] - truth["theta"][0, flex]).mean())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--object", choices=("none", "cylinder", "box", "auto"), default="none",
                        help="the held object (auto: the bench's, cylinder and box in turn)")
    parser.add_argument("--working-size", type=int, default=96)
    parser.add_argument("--oracle", action="store_true", help="also fit from the true hand mask and wrist")
    parser.add_argument("--from-truth", action="store_true",
                        help="start every fit at the true parameters (no search, the stages after the global one)")
    parser.add_argument("--pose-prior", choices=POSE_PRIORS, default="auto")
    parser.add_argument("--weight", action="append", default=[], metavar="TERM=W",
                        help="an energy weight other than the default's (repeatable)")
    args = parser.parse_args()
    weights = {k: float(v) for k, v in (w.split("=", 1) for w in args.weight)}
    model = load_hand("default")
    fitter = Fitter(model, config=FitConfig(working_size=args.working_size, pose_prior=args.pose_prior,
                                            weights=weights), device="cpu")
    cols = ("MPJPE", "glob", "art", "shape", "wrist", "PA", "tips", "flex")
    print(f"{'frame':22s} {'fit':6s} " + " ".join(f"{c:>6s}" for c in cols) + f" {'cut':>5s} {'remnant':>7s}")
    rows: dict[str, list] = {"seg": [], "oracle": []}
    for i in range(args.start, args.start + args.frames):
        border = BORDERS[i % len(BORDERS)]
        obj = None if args.object == "none" else (OBJECTS[i % 2] if args.object == "auto" else args.object)
        frame = egocentric_frame(model, HybridRenderer(), torch.Generator().manual_seed(i), border=border,
                                 held_object=obj)
        name = f"{i:02d}-{border}-{obj or 'none'}"
        seg = segment_large_frame(frame.depth, frame.camera, return_info=True)
        cut = float((torch.tensor(seg.cut.point_mm) - frame.wrist_mm).norm()) if seg.cut is not None else float("nan")
        remnant = float((seg.mask & ~frame.hand_mask).sum()) / max(float(seg.mask.sum()), 1.0)
        def fit_crop(crop):
            if args.from_truth:
                return fitter.fit_crops([crop], [name], init={k: v.clone() for k, v in frame.params.items()},
                                        stages=fitter.config.stages[1:])[0]
            return fitter.fit_crops([crop], [name])[0]

        obs = Observation(depth=frame.depth, camera=frame.camera, name=name)
        fits = {"seg": lambda: fit_crop(prepare(obs, fitter.config.box_mm, args.working_size))}
        if args.oracle:
            def oracle():
                crop = crop_hand(frame.depth, frame.hand_mask, frame.camera, box_mm=fitter.config.box_mm,
                                 out_size=args.working_size)
                crop.wrist_mm = frame.wrist_mm.clone()
                return fit_crop(crop)
            fits["oracle"] = oracle
        for kind, fit in fits.items():
            r = fit()
            b = breakdown(model, r.params, frame.params)
            rows[kind].append(b)
            print(f"{name:22s} {kind:6s} " + " ".join(f"{b[c]:6.1f}" if c != "flex" else f"{b[c]:+6.2f}" for c in cols)
                  + f" {cut:5.1f} {remnant:7.3f}", flush=True)
    print()
    for kind, rs in rows.items():
        if rs:
            print(f"{'mean':22s} {kind:6s} " + " ".join(
                f"{statistics.mean(r[c] for r in rs):6.1f}" if c != "flex" else
                f"{statistics.mean(r[c] for r in rs):+6.2f}" for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
