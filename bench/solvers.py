"""Adam vs Levenberg-Marquardt on the same frames, in one run: cold fits of synthetic and SR305 frames.

Usage: ``python bench/solvers.py [--synthetic 5] [--sr305 19] [--working-size 96] [--seed 0]
[--optimizers adam,lm,lm+adam,icp,icp-render,network,network-short] [--checkpoint CKPT] [--device auto|cpu|cuda]``

``lm+adam`` is LM with Adam's search (``FitConfig(optimizer="lm", search_optimizer="adam")``);
``lm`` runs the search on LM too (``lm_search_iterations`` = 5 per candidate and hypothesis);
``icp`` is the fast cold path (``FitConfig(cold="icp")``: the in-plane hypotheses fitted by LM on
the articulated-ICP energy and ranked by one render-energy evaluation, the stages shortened;
Adam in the stages; the candidates ranked by an ICP fit, the best two's render fit picking);
``icp-render`` the same with the candidates ranked by the render fit of all four
(``FitConfig(cold="icp", cold_candidates="render")``, the fast path's first setting); ``network`` starts from the initializer network (``--checkpoint``, e.g. one
adapted to the SR305 frames by ``bench/adaptation.py sr305``) with its default stages, and
``network-short`` with the short ones (``FitConfig(**FAST_NETWORK_START)``); ``adam`` is the
default fit (the search), the baseline of the ratios.

Every frame is fitted cold (principal-axis candidates, in-plane hypotheses, then the stages;
:meth:`fitting.Fitter.fit`) by each optimizer in turn, one frame at a time, in the same
process. Synthetic frames are SR305-sized depth frames of random hands with sensor noise
(:func:`fitting.synthetic.render_depth_frame`), whose true keypoints give the keypoint
error (MPJPE, mm; the keypoints are not an energy term here); the SR305 frames are
``../shared/data/sr305``.

Prints per frame and optimizer: stage iterations, search iterations, seconds per frame, the
final stage's best energy, IoU against the (segmented or true) mask and the keypoint error;
then per optimizer and set the means, and the ratio of Adam's seconds per frame to each other
variant's (median over frames, each frame's ratio taken in this run; seconds of the fit after the
segmentation and crop, ``FitResult.metrics["seconds"]``, which every variant shares).

Measured (``--optimizers adam,icp-render,icp --synthetic 5 --sr305 19 --device cpu``, one thread, the
machine shared, load 2-3): SR305 mean IoU 0.955 (search) and 0.954 (both fast variants, -0.0007), 530.8
and 143.9 iterations, median per-frame speed-up 3.53x (``icp``; 3.34x ``icp-render``); synthetic 0.966 /
0.954, keypoint error 3.94 / 4.34 mm, 2.97x (README).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from fitting import Fitter, FitConfig, Observation, read_depth
from fitting.config import FAST_NETWORK_START
from fitting.synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame
from hands import load_hand
from renderers import Camera, HybridRenderer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sr305"


def sr305_frames(n: int) -> list[Observation]:
    paths = sorted(DATA.glob("*/*.png"), key=lambda p: (p.parent.name, int(p.stem)))[:n]
    camera = Camera(**SR305_CAMERA)
    return [Observation(depth=read_depth(p, depth_scale=0.125), camera=camera, name=f"{p.parent.name}/{p.stem}")
            for p in paths]


def synthetic_frames(model, n: int, seed: int) -> list[Observation]:
    camera = Camera(**SR305_CAMERA)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        truth = random_hand_parameters(model, g)
        depth, _ = render_depth_frame(model, HybridRenderer(), truth, camera, g)
        with torch.no_grad():
            kp = model(**truth).keypoints[0]
        out.append(Observation(depth=depth, camera=camera, name=f"synthetic-{i}", keypoints_3d=kp))
    return out


def final_energy(result) -> float:
    """The best total energy of the fit's last stage (each stage has its own energy)."""
    last = result.history[-1]["stage"]
    return min(h["total"] for h in result.history if h["stage"] == last)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=5, help="synthetic frames with truth")
    parser.add_argument("--sr305", type=int, default=19, help="SR305 frames (the first N; 0: none)")
    parser.add_argument("--working-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizers", default="adam,lm,lm+adam,icp")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", default=None,
                        help="the initializer of the network and network-short variants (default: the shipped one)")
    args = parser.parse_args()
    optimizers = args.optimizers.split(",")
    model = load_hand("default")
    sets = {"synthetic": synthetic_frames(model, args.synthetic, args.seed)}
    if args.sr305:
        if not DATA.is_dir():
            print(f"no SR305 data at {DATA}; synthetic frames only", file=sys.stderr)
        else:
            sets["sr305"] = sr305_frames(args.sr305)
    def config(name):
        if name in ("network", "network-short"):  # a network start, its default or short stages
            return FitConfig(working_size=args.working_size, weights={"keypoints_3d": 0.0},
                             **(FAST_NETWORK_START if name == "network-short" else {}))
        if name == "icp":  # the fast cold path, Adam stages
            return FitConfig(cold="icp", working_size=args.working_size, weights={"keypoints_3d": 0.0})
        if name == "icp-render":  # the fast cold path's first setting: the candidates' render fit
            return FitConfig(cold="icp", cold_candidates="render", working_size=args.working_size,
                             weights={"keypoints_3d": 0.0})
        opt, _, search = name.partition("+")
        return FitConfig(optimizer=opt, search_optimizer=search or None, working_size=args.working_size,
                         weights={"keypoints_3d": 0.0})

    fitters = {o: Fitter(load_hand("default"), "soft", config(o), device=args.device,
                         **(dict(init="network", checkpoint=args.checkpoint) if o.startswith("network") else {}))
               for o in optimizers}
    print(f"device {next(iter(fitters.values())).device}, torch threads {torch.get_num_threads()}, "
          f"working size {args.working_size}")
    print(f"{'frame':28s} {'opt':7s} {'iters':>6s} {'search':>7s} {'s/frame':>8s} {'energy':>9s} {'IoU':>6s} {'kp mm':>6s}")
    summary = {}
    observations_of = {name: obs for name, obs in sets.items()}
    for set_name, observations in sets.items():
        rows = {o: [] for o in optimizers}
        for obs in observations:
            for o in optimizers:
                r = fitters[o].fit(obs)
                m = r.metrics
                row = dict(iterations=m["iterations"], search=m["search_iterations"], seconds=m["seconds"],
                           energy=final_energy(r), iou=m["iou"], kp=m.get("mpjpe_mm", float("nan")))
                rows[o].append(row)
                print(f"{obs.name:28s} {o:13s} {row['iterations']:6d} {row['search']:7d} {row['seconds']:8.2f} "
                      f"{row['energy']:9.5f} {row['iou']:6.3f} {row['kp']:6.2f}", flush=True)
        summary[set_name] = rows
    print()
    for set_name, rows in summary.items():
        if not observations_of[set_name]:
            continue
        for o, rs in rows.items():
            mean = {k: statistics.fmean(r[k] for r in rs) for k in rs[0]}
            print(f"{set_name:9s} {o:13s} n={len(rs):2d}  iterations {mean['iterations']:6.1f}  search "
                  f"{mean['search']:6.1f}  s/frame {mean['seconds']:6.2f}  energy {mean['energy']:.5f}  "
                  f"IoU {mean['iou']:.3f}" + (f"  keypoint error {mean['kp']:.2f} mm" if set_name == "synthetic" else ""))
        for o in rows:
            if o != "adam" and "adam" in rows:
                ratios = [a["seconds"] / b["seconds"] for a, b in zip(rows["adam"], rows[o])]
                total = sum(a["seconds"] for a in rows["adam"]) / sum(b["seconds"] for b in rows[o])
                diou = statistics.fmean(b["iou"] - a["iou"] for a, b in zip(rows["adam"], rows[o]))
                print(f"{set_name:9s} speed-up of {o} over adam: median per-frame ratio of s/frame "
                      f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}; "
                      f"total time {total:.2f}x); mean IoU difference {diou:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
