"""Preprocessing time (segmentation + crop) of a frame at several sizes, and what it finds.

Usage: ``python bench/preprocess_large.py [--runs 3] [--direct 4000x3000]``

A synthetic 640x480 hand frame is enlarged by an integer factor (each pixel repeated, the camera
scaled to match), so every size shows the same scene; per size it prints the median time of
:func:`fitting.preprocess.prepare` and the IoU of the crop's mask with the 640x480 crop's.
``--direct WxH`` also renders a frame at that size (SR305 field of view) and times
:func:`fitting.preprocess.segment_hand` on the whole frame against :func:`~fitting.preprocess.prepare`.
"""

import argparse
import statistics
import time

import torch

from fitting import Observation
from fitting.preprocess import prepare, segment_hand
from fitting.synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame
from hands import load_hand
from renderers import Camera, make_renderer


def enlarged(depth: torch.Tensor, camera: Camera, k: int) -> Observation:
    big = depth.repeat_interleave(k, 0).repeat_interleave(k, 1)
    # pixel j of the frame covers pixels k j .. k j + k - 1 of the big one: centre k j + (k - 1) / 2
    cam = Camera(camera.fx * k, camera.fy * k, camera.cx * k + (k - 1) / 2, camera.cy * k + (k - 1) / 2,
                 big.shape[1], big.shape[0])
    return Observation(depth=big, camera=cam, name=f"x{k}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--direct", default="", help="WxH: also a frame rendered at this size")
    args = parser.parse_args()
    model, g = load_hand(), torch.Generator().manual_seed(0)
    camera = Camera(**SR305_CAMERA)
    depth, _ = render_depth_frame(model, make_renderer("soft"), random_hand_parameters(model, g), camera, g)
    reference = prepare(Observation(depth=depth, camera=camera)).mask > 0.5
    print(f"{'size':>11s} {'megapixels':>10s} {'prepare s':>9s} {'mask IoU vs 640x480':>20s}")
    for k in (1, 2, 4, 6):
        obs = enlarged(depth, camera, k)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            crop = prepare(obs)
            times.append(time.perf_counter() - t0)
        m = crop.mask > 0.5
        iou = float((m & reference).sum() / (m | reference).sum())
        H, W = obs.depth.shape
        print(f"{W:>5d}x{H:<5d} {H * W / 1e6:10.1f} {statistics.median(times):9.2f} {iou:20.3f}", flush=True)
    if args.direct:
        W, H = (int(v) for v in args.direct.lower().split("x"))
        k = W / camera.width
        cam = Camera(camera.fx * k, camera.fy * k, (W - 1) / 2, (H - 1) / 2, W, H)
        depth, _ = render_depth_frame(model, make_renderer("soft"), random_hand_parameters(model, g), cam, g)
        for label, fn in (("segment_hand, full frame", lambda: segment_hand(depth, cam)),
                          ("prepare (decimated)", lambda: prepare(Observation(depth=depth, camera=cam)))):
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            print(f"{W}x{H} {label}: {statistics.median(times):.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
