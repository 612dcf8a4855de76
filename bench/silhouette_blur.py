"""How the soft silhouette's blur biases the fit: fit synthetic frames starting at the truth.

Usage: ``python bench/silhouette_blur.py [--seeds 3,4,6] [--blur 0.25,0.5] [--size 96]``

For each blur (``sigma_px``, pixels) the default stages run on noise-free renders of random
hands, starting at their true parameters. An unbiased energy keeps the truth; a biased one
drifts away from it. Prints, per blur, the IoU of the fitted against the true silhouette and
the mean keypoint error (mm), per frame and their mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

import torch

from fitting import FitConfig, Fitter
from fitting.synthetic import random_hand_parameters, render_fit_target
from hands import HandModel, default_hand_data
from renderers import Camera, HybridRenderer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="3,4,6", help="comma-separated seeds of the random hands")
    parser.add_argument("--blur", default="0.25,0.5", help="comma-separated sigma_px values (pixels)")
    parser.add_argument("--size", type=int, default=96, help="image side (px); a 220 mm box at 450 mm")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    model, renderer = HandModel(default_hand_data()), HybridRenderer()
    truths = []
    for seed in seeds:
        p = random_hand_parameters(model, torch.Generator().manual_seed(seed))
        p["transl"] = torch.tensor([[0.0, 0.0, 450.0]])
        truths.append(p)
    truth = {k: torch.cat([p[k] for p in truths]) for k in truths[0]}
    f = args.size * 450.0 / 220.0
    camera = Camera(fx=f, fy=f, cx=args.size / 2 - 0.5, cy=args.size / 2 - 0.5,
                    width=args.size, height=args.size).expand(len(seeds))
    target, render = render_fit_target(model, renderer, truth, camera, torch.Generator().manual_seed(0))
    with torch.no_grad():
        true_keypoints = model(**truth).keypoints
    print(f"{'sigma_px':>8s} " + " ".join(f"{'seed ' + str(s):>16s}" for s in seeds) + f" {'mean':>16s}")
    for blur in (float(b) for b in args.blur.split(",")):
        stages = tuple(dataclasses.replace(s, render_settings={"sigma_px": blur}) for s in FitConfig().stages)
        state = Fitter(model, renderer, FitConfig(stages=stages)).run(target, truth)
        with torch.no_grad():
            fit = model(**state.params)
            mask = renderer(fit.vertices, model.faces, camera).mask
        iou = ((mask & render.mask).flatten(1).sum(1) / (mask | render.mask).flatten(1).sum(1)).tolist()
        error = (fit.keypoints - true_keypoints).norm(dim=-1).mean(1).tolist()
        cells = [f"{i:.3f} / {e:4.1f} mm" for i, e in zip(iou, error)]
        cells.append(f"{statistics.fmean(iou):.3f} / {statistics.fmean(error):4.1f} mm")
        print(f"{blur:8.2f} " + " ".join(f"{c:>16s}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
