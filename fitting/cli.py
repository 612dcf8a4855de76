"""The ``handfit`` command line: ``handfit fit``, ``handfit demo``.

Bad input (a missing file, an 8-bit image where 16-bit depth is expected, no hand in the
depth band, intrinsics that do not match the image, an absurd depth scale) ends with a
one-line ``handfit: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from renderers import RENDERERS

from .errors import InputError
from .fitter import DEFAULT_RENDERER

log = logging.getLogger("handfit")


def _model_and_renderer(side: str, renderer: str):
    from hands import HandModel, default_hand_data
    from renderers import make_renderer

    return HandModel(default_hand_data(side)), make_renderer(renderer)


def _print_metrics(result) -> None:
    m = result.metrics
    line = (f"{result.name}: IoU {m['iou']:.3f}  depth residual mean {m['depth_mean_mm']:.1f} mm, "
            f"median {m['depth_median_mm']:.1f} mm  iterations {m['iterations']}  {m['seconds']:.1f} s")
    if "keypoint_error_mm" in m:
        line += f"  keypoint error {m['keypoint_error_mm']:.1f} mm"
    print(line)


def cmd_fit(args: argparse.Namespace) -> int:
    from .io import camera_from_args, check_camera_matches, read_depth, read_mask
    from .observation import Observation
    from .pipeline import fit_observations
    from .writers import write_result

    depth = read_depth(args.frame, depth_scale=args.depth_scale, encoding=args.encoding)
    H, W = depth.shape
    camera = camera_from_args(args.fx, args.fy, args.cx, args.cy, W, H, camera_json=args.camera)
    check_camera_matches(camera, depth)
    mask = read_mask(args.mask) if args.mask else None
    obs = Observation(depth=depth, camera=camera, mask=mask, name=Path(args.frame).stem)
    model, renderer = _model_and_renderer(args.side, args.renderer)
    result = fit_observations([obs], model, renderer, box_mm=args.box_mm, working_size=args.working_size)[0]
    write_result(result, args.out, depth, camera, renderer)
    _print_metrics(result)
    print(f"wrote {args.out}/params.json, result.npz, mesh.obj, overlay.png, energy.csv")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from renderers import Camera

    from .observation import Observation
    from .pipeline import fit_observations
    from .synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame
    from .writers import write_result

    model, renderer = _model_and_renderer("right", args.renderer)
    camera = Camera(**SR305_CAMERA)
    g = torch.Generator().manual_seed(args.seed)
    truth = random_hand_parameters(model, g)
    depth, _ = render_depth_frame(model, renderer, truth, camera, g)
    print(f"demo: rendered a {camera.width}x{camera.height} depth frame of the default hand "
          f"(seed {args.seed}, 1.5 mm noise) and fit it from the neutral pose")
    obs = Observation(depth=depth, camera=camera, name=f"synthetic-{args.seed}")
    result = fit_observations([obs], model, renderer, box_mm=args.box_mm, working_size=args.working_size)[0]
    with torch.no_grad():
        true_kp = model(**truth).keypoints[0]
    errors = (result.keypoints - true_kp).norm(dim=-1)
    result.metrics["keypoint_error_mm"] = float(errors.mean())
    write_result(result, args.out, depth, camera, renderer)
    _print_metrics(result)
    print(f"keypoint error against the known truth: mean {errors.mean():.1f} mm, "
          f"median {errors.median():.1f} mm, max {errors.max():.1f} mm (21 keypoints)")
    print(f"wrote {args.out}/ (overlay.png shows the fit over the depth frame)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handfit", description="Fit 3D hands to depth frames by differentiable rendering.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--working-size", type=int, default=96, help="crop resolution in pixels (default 96)")
    common.add_argument("--box-mm", type=float, default=220.0, help="side of the 3D crop box in mm (default 220)")
    common.add_argument("--renderer", choices=sorted(RENDERERS), default=DEFAULT_RENDERER,
                        help=f"differentiable renderer (default {DEFAULT_RENDERER}; see README)")

    fit = sub.add_parser("fit", parents=[common], help="fit the hand to one depth frame")
    fit.add_argument("frame", help="depth image (16-bit PNG, or NYU RGB-packed with --encoding nyu)")
    fit.add_argument("--fx", type=float)
    fit.add_argument("--fy", type=float)
    fit.add_argument("--cx", type=float)
    fit.add_argument("--cy", type=float)
    fit.add_argument("--camera", help="JSON file with fx, fy, cx, cy, width, height")
    fit.add_argument("--depth-scale", type=float, default=1.0,
                     help="millimetres per depth unit (SR305 frames: 0.125)")
    fit.add_argument("--encoding", choices=("uint16", "nyu"), default="uint16")
    fit.add_argument("--mask", help="optional hand mask image (nonzero = hand); default: segment")
    fit.add_argument("--side", choices=("right", "left"), default="right")
    fit.add_argument("--out", required=True, help="output folder")
    fit.set_defaults(func=cmd_fit)

    demo = sub.add_parser("demo", parents=[common], help="fit a synthetic frame with known truth")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    t0 = time.perf_counter()
    try:
        status = args.func(args)
    except InputError as err:
        print(f"handfit: error: {err}", file=sys.stderr)
        return 2
    log.info("done in %.1f s", time.perf_counter() - t0)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
