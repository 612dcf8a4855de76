"""The hand crop's resampling: ``grid_sample`` on our grid vs kornia's ``warp_affine``.

Usage: ``python bench/crop_resample.py [--runs 300] [--windows 200]``
(kornia comes with the ``test`` extra: ``pip install -e '.[test]'``).

:func:`fitting.preprocess.crop_hand` resamples a 640 x 480 frame into a square window with
``grid_sample(..., align_corners=False)`` at the crop pixels' centres (the crop rule of
:mod:`renderers.camera`): depth with nearest neighbours, the mask bilinearly on a
``ceil(size / S)``-times finer lattice, box-filtered. The same window as kornia's
source-to-destination pixel affine ``u' = (u + 0.5 - x0) / s - 0.5`` goes through
``kornia.geometry.transform.warp_affine``. Printed: the largest bilinear difference and
the nearest-neighbour pixels that differ over random windows and over windows of an
integer origin and an integer scale (where samples fall on pixel edges), then the median
times of both ways, interleaved.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

from fitting.preprocess import _window_grid


def ours(img, x0, y0, size, S, mode, sub=1):
    H, W = img.shape
    out = F.grid_sample(img[None, None].float(), _window_grid(x0, y0, size, S, W, H, sub), mode=mode,
                        padding_mode="zeros", align_corners=False)
    return (F.avg_pool2d(out, sub) if sub > 1 else out)[0, 0]


def kornia_way(img, x0, y0, size, S, mode, sub=1):
    n = S * sub
    s = size / n
    M = torch.tensor([[[1 / s, 0, (0.5 - x0) / s - 0.5], [0, 1 / s, (0.5 - y0) / s - 0.5]]])
    out = warp_affine(img[None, None].float(), M, (n, n), mode=mode, padding_mode="zeros", align_corners=False)
    return (F.avg_pool2d(out, sub) if sub > 1 else out)[0, 0]


def scene(H=480, W=640):
    v, u = np.mgrid[0:H, 0:W]
    hand = (u - 320.0) ** 2 + (v - 240.0) ** 2 <= 60.0 ** 2
    depth = np.where(hand, 450.0 + 0.05 * u, 1000.0 + 0.3 * v).astype(np.float32)
    return torch.from_numpy(depth), torch.from_numpy(hand)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--windows", type=int, default=200)
    args = ap.parse_args()
    depth, mask = scene()
    g = np.random.default_rng(0)
    for label, ties in (("random windows", False), ("integer windows", True)):
        worst, differ, total = 0.0, 0, 0
        for _ in range(args.windows):
            S = int(g.choice([32, 64, 96, 128]))
            x0, y0, size = float(g.uniform(-100, 500)), float(g.uniform(-100, 400)), float(g.uniform(50, 400))
            if ties:
                x0, y0, size = float(round(x0)), float(round(y0)), float(S * int(g.integers(1, 4)))
            a, b = ours(depth, x0, y0, size, S, "nearest"), kornia_way(depth, x0, y0, size, S, "nearest")
            differ, total = differ + int((a != b).sum()), total + a.numel()
            sub = max(1, math.ceil(size / S))
            a, b = ours(mask, x0, y0, size, S, "bilinear", sub), kornia_way(mask, x0, y0, size, S, "bilinear", sub)
            worst = max(worst, float((a - b).abs().max()))
        print(f"{label:16s} bilinear max |diff| {worst:.2e}; nearest pixels differing {differ} of {total}")

    x0, y0, size, S = 203.37, 101.81, 211.6, 96  # a hand at about 450 mm, box 200 mm
    sub = math.ceil(size / S)
    ways = {"grid_sample": ours, "kornia": kornia_way}
    times = {(w, k): [] for w in ways for k in ("depth", "mask")}
    for run in range(args.runs + 10):
        for w, f in ways.items():
            for k in ("depth", "mask"):
                t0 = time.perf_counter()
                f(depth, x0, y0, size, S, "nearest") if k == "depth" else f(mask, x0, y0, size, S, "bilinear", sub)
                if run >= 10:
                    times[w, k].append(time.perf_counter() - t0)
    print(f"640x480 -> {S}x{S} (mask x{sub} supersampled), median of {args.runs} runs, "
          f"{torch.get_num_threads()} threads:")
    for w in ways:
        print(f"  {w:12s} depth (nearest) {statistics.median(times[w, 'depth']) * 1e6:8.1f} us   "
              f"mask (bilinear) {statistics.median(times[w, 'mask']) * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
