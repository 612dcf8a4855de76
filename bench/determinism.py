"""Speed cost of deterministic CPU fits (``FitConfig.deterministic``, :mod:`fitting.determinism`).

Usage: ``python bench/determinism.py [--frame PATH] [--config preview|default] [--batch 1]
[--runs 5] [--threads N]``

Fits the same SR305 frame (16-bit PNG, 0.125 mm units; the SR305's intrinsics) with
``deterministic=True`` and ``False``, interleaved in one process (the machine's load affects
both alike), after one warm-up fit each, and prints the median seconds of ``--runs`` fits,
the ratio, and whether the runs of each setting gave bit-identical parameters. ``--batch``
fits that many copies of the frame as one batch (a sequence's shape frames are one batch).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

import torch

from fitting import FitConfig, Fitter, Observation
from fitting.config import preview_config
from fitting.io import read_depth
from fitting.synthetic import SR305_CAMERA
from hands import load_hand
from renderers import Camera

DEFAULT_FRAME = "../shared/data/sr305/20210326-230536/110.png"


def digest(results) -> str:
    h = hashlib.sha1()
    for r in results:
        for k in sorted(r.params):
            h.update(r.params[k].numpy().tobytes())
    return h.hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frame", default=DEFAULT_FRAME)
    ap.add_argument("--config", choices=("preview", "default"), default="preview")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as it is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    obs = Observation(depth=read_depth(args.frame, 0.125), camera=Camera(**SR305_CAMERA))
    batch = [obs] * args.batch
    model = load_hand("default")
    make = preview_config if args.config == "preview" else FitConfig
    fitters = {flag: Fitter(model, config=make(deterministic=flag)) for flag in (True, False)}
    times = {flag: [] for flag in fitters}
    digests = {flag: set() for flag in fitters}
    for run in range(args.runs + 1):
        for flag, fitter in fitters.items():
            t0 = time.perf_counter()
            results = fitter.fit(batch)
            seconds = time.perf_counter() - t0
            if run:  # the first round warms up
                times[flag].append(seconds)
            digests[flag].add(digest(results))
    med = {flag: statistics.median(t) for flag, t in times.items()}
    print(f"threads={torch.get_num_threads()} config={args.config} batch={args.batch} runs={args.runs}")
    for flag in fitters:
        print(f"deterministic={flag!s:5}  median {med[flag]:.3f} s  (all: {', '.join(f'{t:.2f}' for t in times[flag])})"
              f"  distinct results: {len(digests[flag])}")
    print(f"ratio deterministic / not: {med[True] / med[False]:.3f}")


if __name__ == "__main__":
    main()
