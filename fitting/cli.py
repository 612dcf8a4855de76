"""The ``handfit`` command line: ``handfit fit``, ``handfit fit-sequence``, ``handfit demo``.

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

from .errors import InputError

log = logging.getLogger("handfit")


def _model_and_renderer(side: str):
    from hands import HandModel, default_hand_data
    from renderers import PyTorch3DRenderer

    return HandModel(default_hand_data(side)), PyTorch3DRenderer()


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
    model, renderer = _model_and_renderer(args.side)
    result = fit_observations([obs], model, renderer, box_mm=args.box_mm, working_size=args.working_size)[0]
    write_result(result, args.out, depth, camera, renderer)
    _print_metrics(result)
    print(f"wrote {args.out}/params.json, result.npz, mesh.obj, overlay.png, energy.csv")
    return 0


def cmd_fit_sequence(args: argparse.Namespace) -> int:
    import json

    from .fitter import PLAUSIBILITY_WEIGHTS, TEMPORAL_WEIGHT, FitConfig
    from .io import camera_from_args, read_depth
    from .sequence import SequenceOptions, fit_sequence, list_frames

    frames = list_frames(args.folder)
    size = None  # the image size (when --camera does not give it) is the first readable frame's
    for path in frames:
        try:
            size = read_depth(path, depth_scale=args.depth_scale, encoding=args.encoding).shape
            break
        except InputError:
            continue
    if size is None:
        raise InputError(f"none of the {len(frames)} frames in {args.folder} can be read as depth")
    camera = camera_from_args(args.fx, args.fy, args.cx, args.cy, size[1], size[0], camera_json=args.camera)
    weights = {}
    if not args.no_penetration:
        weights.update(PLAUSIBILITY_WEIGHTS)
        if args.collision == "cylinders":
            weights.update(penetration=0.0, collision=PLAUSIBILITY_WEIGHTS["penetration"])
    config = FitConfig(weights=weights, clamp_limits=not args.no_clamp)
    model, renderer = _model_and_renderer(args.side)
    if args.limits:
        try:
            table = json.loads(Path(args.limits).read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read the joint-limit table {args.limits}: {err}") from err
        try:
            model.set_limits(table)
        except ValueError as err:
            raise InputError(f"--limits {args.limits}: {err}") from err
    options = SequenceOptions(shape_frames=args.shape_frames, warm_start=not args.cold_start,
                              temporal_weight=TEMPORAL_WEIGHT if args.temporal_weight is None else args.temporal_weight,
                              max_frames=args.max_frames,
                              depth_scale=args.depth_scale, encoding=args.encoding, box_mm=args.box_mm,
                              working_size=args.working_size)
    try:
        report = fit_sequence(args.folder, args.out, model, renderer, camera, config, options)
    except KeyboardInterrupt:
        print(f"handfit: interrupted; the finished frames are in {args.out}: run the same command again to "
              "resume", file=sys.stderr)
        return 130
    for name in report.fitted:
        m = report.metrics[name]
        print(f"{name}: IoU {m['iou']:.3f}  depth residual median {m['depth_median_mm']:.1f} mm  "
              f"penetration {m['penetration_max_mm']:.1f} mm  {m['seconds']:.1f} s")
    for name, reason in report.failures.items():
        print(f"{name}: skipped: {reason}")
    state = "complete" if report.complete else "incomplete (run again to resume)"
    print(f"{len(report.fitted)} frames fitted, {len(report.skipped)} already done, {len(report.failures)} "
          f"skipped; jitter {report.jitter_mm:.2f} mm/frame^2; {state}; wrote {args.out}/sequence.json")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from renderers import Camera

    from .observation import Observation
    from .pipeline import fit_observations
    from .synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame
    from .writers import write_result

    model, renderer = _model_and_renderer("right")
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

    seq = sub.add_parser("fit-sequence", parents=[common],
                         help="fit every frame of a folder (resumable: a rerun skips finished frames)")
    seq.add_argument("folder", help="folder of depth frames (16-bit PNG), fitted in natural order")
    seq.add_argument("--fx", type=float)
    seq.add_argument("--fy", type=float)
    seq.add_argument("--cx", type=float)
    seq.add_argument("--cy", type=float)
    seq.add_argument("--camera", help="JSON file with fx, fy, cx, cy, width, height")
    seq.add_argument("--depth-scale", type=float, default=1.0,
                     help="millimetres per depth unit (SR305 frames: 0.125)")
    seq.add_argument("--encoding", choices=("uint16", "nyu"), default="uint16")
    seq.add_argument("--side", choices=("right", "left"), default="right")
    seq.add_argument("--out", required=True, help="output folder (one subfolder per frame)")
    seq.add_argument("--shape-frames", type=int, default=3,
                     help="frames whose average shape is frozen for the sequence (default 3)")
    seq.add_argument("--temporal-weight", type=float, default=None,
                     help="weight of the temporal smoothness energy (default fitting.fitter.TEMPORAL_WEIGHT; 0: off)")
    seq.add_argument("--cold-start", action="store_true", help="search every frame from scratch (no warm start)")
    seq.add_argument("--no-penetration", action="store_true", help="turn the penetration energy off")
    seq.add_argument("--collision", choices=("spheres", "cylinders"), default="spheres",
                     help="penetration proxy: DeepHandMesh spheres + fingertip-palm (default) or seed 001 cylinders")
    seq.add_argument("--limits", help="JSON file {dof_name: [lower, upper]} (radians) overriding joint limits")
    seq.add_argument("--no-clamp", action="store_true", help="joint limits as a soft energy only (no hard clamp)")
    seq.add_argument("--max-frames", type=int, default=None, help="stop after fitting this many new frames")
    seq.set_defaults(func=cmd_fit_sequence)

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
