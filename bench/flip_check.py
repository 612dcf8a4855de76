"""The network start's flip check (``fitting.initialize.network_parameters``): is the raw-energy skip rule safe?

Usage::

    python bench/flip_check.py FRAMES CHECKPOINT [--dataset DS] [--depth-scale 0.125]

``FRAMES``: a folder of depth frames with its ``camera.json`` (e.g. the ``WORK/frames`` or
``WORK/sr305_frames`` copies ``bench/adaptation.py`` makes); ``--dataset``: the ``handfit synth``
set the frames came from (same order), whose keypoints are read only to score. For every frame
the network's guess (its pose and shape) and the palm-flipped alternative are scored as they
are (the raw energy, no step) and after the check's short global fits (25 Adam iterations
each); prints the raw ratio (alternative over guess), how many frames each skip threshold
would exempt from the fits and how many of those the fits would have flipped, and with labels
how often the flip was truly closer (MPJPE after the global fit). One process, one thread.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from fitting import Fitter
from fitting.adaptation import FrameCrops
from fitting.config import PARAMETER_NAMES, FitConfig, Stage
from fitting.determinism import deterministic
from fitting.fitter import stack_targets
from fitting.initialize import FLIP_MARGIN, flip_palm, network_input
from fitting.initializer import load_initializer
from fitting.synth_dataset import read_chunk
from hands import load_hand


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("frames")
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", help="the synth set the frames came from (labels to score)")
    ap.add_argument("--depth-scale", type=float, default=1.0)
    ap.add_argument("--thresholds", default="1.0,1.1,1.25,1.5")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_hand("default")
    samples = [s for c in sorted(Path(args.dataset).glob("chunk_*")) for s in read_chunk(c, model)] \
        if args.dataset else None
    data = FrameCrops(args.frames, None, depth_scale=args.depth_scale)
    net = load_initializer(args.checkpoint, model).eval()
    fitter = Fitter(model, "soft", FitConfig(), device="cpu")
    rows = []
    for i in range(0, len(data), 8):
        idx = [j for j in range(i, min(len(data), i + 8)) if data[j] is not None]
        crops = [data[j] for j in idx]
        B = len(crops)
        with deterministic(fitter.device, True):
            target = stack_targets(crops, None, fitter.device, fitter.dtype)
            x, centre = network_input(crops, net.box_mm, net.size, None, fitter.dtype)
            with torch.no_grad():
                guess = net(x).parameters(centre)
            neutral = model.neutral_parameters(B)
            guess = {k: (neutral[k] if k == "offsets" else guess[k]) for k in PARAMETER_NAMES}
            both = {k: torch.stack([v, flip_palm(guess)[k]], 1).flatten(0, 1) for k, v in guess.items()}
            with torch.no_grad():
                terms, _, _ = fitter.energy_terms(both, target.repeat_interleave(2), surface_terms=False)
                raw = fitter.total(terms).view(B, 2)
            state = fitter.run(target.repeat_interleave(2), both,
                               stages=(Stage("candidates", ("global_orient", "transl"), 25),))
            fit = state.energy.view(B, 2)
            with torch.no_grad():
                kp = model(**state.params).keypoints.view(B, 2, 21, 3)
        for b, j in enumerate(idx):
            r = {"raw": float(raw[b, 1] / raw[b, 0]), "flips": bool(fit[b, 1] < FLIP_MARGIN * fit[b, 0])}
            if samples is not None:
                t = samples[j]["keypoints"]
                r["flip_closer"] = bool((kp[b, 1] - t).norm(dim=-1).mean() < (kp[b, 0] - t).norm(dim=-1).mean())
            rows.append(r)
    raw = sorted(r["raw"] for r in rows)
    print(f"{len(rows)} frames; raw ratio (flipped / guess) min {raw[0]:.3f}, median {statistics.median(raw):.3f}, "
          f"max {raw[-1]:.3f}; the short fits flip {sum(r['flips'] for r in rows)}"
          + (f" ({sum(r['flips'] and r['flip_closer'] for r in rows)} of them rightly; the flip is truly closer "
             f"in {sum(r['flip_closer'] for r in rows)})" if samples is not None else ""))
    for th in map(float, args.thresholds.split(",")):
        skipped = [r for r in rows if r["raw"] >= th]
        print(f"skip ratio {th:g}: {len(skipped)} frames without the fits; the fits would have flipped "
              f"{sum(r['flips'] for r in skipped)} of them"
              + (f"; the flip truly closer in {sum(r['flip_closer'] for r in skipped)}" if samples is not None else ""))


if __name__ == "__main__":
    main()
