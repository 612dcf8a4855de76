"""Unsupervised adaptation (``handfit adapt``): the network before and after, and the fitter from it.

Usage::

    python bench/adaptation.py shifted SHIFTED_DS CHECKPOINT --work WORK [--epochs 4] [--synthetic DS]
        [--synthetic-weight 1] [--synthetic-crop mask|fitter] [--mixed-only] [--fit-frames 4]
        [--seed 0] [--weights '{"wrist": 1e-4}']
    python bench/adaptation.py sr305 CHECKPOINT --work WORK [--epochs 4] [--synthetic DS] [--fit]
        [--fit-every K] [--fit-frames N] [--fit-variants search,adapted,adapted_check] [--network-config JSON]

``shifted``: ``SHIFTED_DS`` is a ``handfit synth --shifted`` set the network was not trained on
(shapes and bone scales beyond the training range, the heavy noise model, wider rolls (side views),
a farther hand). Its depth PNGs are copied into ``WORK/frames`` (with the camera, without any
label) and the network is adapted on them (``WORK/adapted``, and ``WORK/adapted_mixed`` with the
labelled ``--synthetic`` batches mixed in); the labels are read only to score. Prints the
network's MPJPE (mm) on all frames before and after each adaptation (keypoints of its direct
prediction against the truth, the crops cut as the fitter's network start cuts them: its own
segmentation), then the fitter from the search and from the network (before and after) on the
first ``--fit-frames`` frames: MPJPE, total (search + stage) iterations and seconds per frame.

``sr305``: the 19 real frames of ``../shared/data/sr305`` (unlabeled), adapted on themselves
(``WORK/sr305_adapted``): IoU against the segmented hand and mean / median depth residual (mm)
of the network's direct prediction before and after; with ``--fit``, the fitter's total
iterations, seconds per frame and IoU with the search and with the network (before and after),
frames fitted in batches of 4 as ``bench/fit_sr305.py`` does (``--fit-every 2 --fit-frames 8``: 8 of
the 19, four of each sequence).

The fitter's starts (``--fit-variants`` picks some; all by default): ``search``; each network
(``network``, ``adapted``, ...) with the default network start (the raw-energy flip rule,
:data:`fitting.config.FLIP_SKIP_RATIO`; the network start's stage lengths,
:data:`fitting.config.NETWORK_POSE_SCALE` and ``NETWORK_SHAPE_SCALE``; the template shape; or
the ``--network-config`` fields); and ``NAME_check``, the same network with the start as it
was before those (:data:`CHECK_START`: both hypotheses' short fits always, the stages' own
iterations, the network's shape).

``--synthetic-crop``, ``--seed`` and ``--weights`` are :class:`fitting.adaptation.AdaptOptions`
``synthetic_crop``, ``seed`` and ``weights`` (over :data:`fitting.adaptation.ADAPT_WEIGHTS`);
``--mixed-only`` skips the unlabelled-only adaptation. The figures of README "Adapting to a
camera" were made with ``--epochs 16`` (and 24, 32: the same command again, resuming) and
``--synthetic DS`` (the network's 2000 training samples).

Adaptations are resumable (rerunning continues from ``WORK/*/last.pt``); each figure is printed
with the settings that produced it. Everything runs in this process, one thread per process
recommended (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from fitting import Fitter, Observation
from fitting.adaptation import AdaptOptions, FrameCrops, adapt, prediction_metrics
from fitting.config import FitConfig
from fitting.initializer import load_initializer
from fitting.io import camera_from_args, read_depth
from fitting.synth_dataset import read_chunk
from fitting.synthetic import SR305_CAMERA
from hands import load_hand
from renderers import Camera

ROOT = Path(__file__).resolve().parents[1]
SR305 = ROOT.parent / "shared" / "data" / "sr305"


def _copy_frames(paths: list[Path], names: list[str], folder: Path, camera: dict) -> Path:
    """Copy the frames into the work folder once; a work folder filled from another set is
    refused (its frames, adapted checkpoints and resumed runs would be scored against this
    set's labels)."""
    source = [str(Path(p).resolve()) for p in paths]
    record = folder / "source.json"
    if record.exists() and json.loads(record.read_text()) != source:
        sys.exit(f"{folder} holds frames copied from another set: use another --work")
    if not record.exists() and any(folder.glob("*.png")):
        sys.exit(f"{folder} holds frames of unknown origin: use another --work")
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(source))
    for p, n in zip(paths, names):
        if not (folder / f"{n}.png").exists():
            shutil.copy(p, folder / f"{n}.png")
    (folder / "camera.json").write_text(json.dumps(camera))
    return folder


def _adapt(frames: Path, checkpoint: str, out: Path, args, synthetic=None, depth_scale=1.0) -> tuple[Path, float]:
    t0 = time.perf_counter()
    options = AdaptOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, renderer=args.renderer,
                           synthetic_weight=args.synthetic_weight, synthetic_crop=args.synthetic_crop,
                           depth_scale=depth_scale, device="cpu", seed=args.seed, weights=args.weights or {})
    history = adapt(frames, checkpoint, out, load_hand("default"), options, synthetic=synthetic, progress=True)
    first, last = history[0], history[-1]
    print(f"adapted {out.name}: {len(history)} epochs ({args.epochs} asked), energy {first['energy']:.4f} (epoch 1) -> "
          f"{last['energy']:.4f} (epoch {last['epoch']}), {sum(h['seconds'] for h in history):.0f} s in all "
          f"({time.perf_counter() - t0:.0f} s this run); lr {args.lr:g}, batch {args.batch_size}, {args.renderer}"
          + (f", synthetic {synthetic} x{args.synthetic_weight:g} ({args.synthetic_crop} crops)" if synthetic else "")
          + f", seed {args.seed}" + (f", weights {args.weights}" if args.weights else ""), flush=True)
    return out / "last.pt", sum(h["seconds"] for h in history)


def _network_figures(checkpoint, crops, truth=None) -> dict:
    model = load_hand("default")
    net = load_initializer(checkpoint, model)
    fitter = Fitter(model, "soft", FitConfig(), device="cpu")
    m = {"iou": [], "depth_mean_mm": [], "depth_median_mm": [], "mpjpe_mm": []}
    for k in range(0, len(crops), 8):
        chunk = crops[k:k + 8]
        r = prediction_metrics(net, fitter, chunk)
        for key in ("iou", "depth_mean_mm", "depth_median_mm"):
            m[key] += r[key].tolist()
        if truth is not None:
            m["mpjpe_mm"] += (r["keypoints"] - truth[k:k + 8]).norm(dim=-1).mean(-1).tolist()
    return {k: statistics.mean(v) for k, v in m.items() if v} | (
        {"mpjpe_median_mm": statistics.median(m["mpjpe_mm"])} if truth is not None else {})


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if k == "iou" else f"{k} {v:.1f}" for k, v in d.items())


#: The network start as it was before the raw-energy flip rule, the network start's stage
#: lengths and the template shape (the ``*_check`` variants): both hypotheses' short fits
#: always, the stages' own iterations, the network's shape guess.
CHECK_START = dict(flip_skip_ratio=math.inf, network_pose_scale=1.0, network_shape_scale=1.0, network_shape=True)


def _fit_rows(variants: dict, observations: list, truth=None, batch: int = 1, only=None,
              network_config: dict | None = None) -> dict:
    rows = {}
    for name, checkpoint in (variants | {f"{k}_check": v for k, v in variants.items() if v is not None}).items():
        if only and name not in only:
            continue
        kw = {} if checkpoint is None else {"init": "network", "checkpoint": checkpoint}
        config = FitConfig(**CHECK_START) if name.endswith("_check") else \
            FitConfig(**(network_config or {})) if checkpoint is not None else FitConfig()
        fitter = Fitter(load_hand("default"), "soft", config, device="cpu", **kw)
        rs = []
        for k in range(0, len(observations), batch):
            out = fitter.fit(observations[k:k + batch])
            for j, r in enumerate(out):
                m = r.metrics
                row = {"iterations": m["search_iterations"] + m["iterations"], "search": m["search_iterations"],
                       "seconds": m["seconds"], "iou": m["iou"]}
                if truth is not None:
                    row["mpjpe_mm"] = float((r.keypoints - truth[k + j]).norm(dim=-1).mean())
                rs.append(row)
                print(f"  {name:16s} {r.name}: " + ", ".join(f"{a} {b:.4f}" if a == "iou" else f"{a} {b:.1f}"
                                                             for a, b in row.items()), flush=True)
        rows[name] = rs
        print(f"fitter from {name:16s} means over {len(rs)} frames: "
              + ", ".join(f"{k} {statistics.mean(r[k] for r in rs):.4f}" if k == "iou"
                          else f"{k} {statistics.mean(r[k] for r in rs):.1f}" for k in rs[0]), flush=True)
    base = rows.get("search")
    if base:
        for name, rs in rows.items():
            if name != "search":
                its = statistics.mean(r["iterations"] for r in base) / statistics.mean(r["iterations"] for r in rs)
                secs = statistics.mean(r["seconds"] for r in base) / statistics.mean(r["seconds"] for r in rs)
                iou = statistics.mean(r["iou"] for r in rs) - statistics.mean(r["iou"] for r in base)
                print(f"search / {name}: total iterations x{its:.2f}, seconds x{secs:.2f}; mean IoU {iou:+.4f} "
                      f"against the search's")
    return rows


def shifted(args) -> None:
    ds = Path(args.dataset)
    samples = [s for c in sorted(ds.glob("chunk_*")) for s in read_chunk(c, load_hand("default"))]
    names = [f"{i:06d}" for i in range(len(samples))]
    cam = json.loads((ds / "camera.json").read_text())
    cam = {k: cam[k] for k in ("fx", "fy", "cx", "cy", "width", "height")}
    frames = _copy_frames([s["depth"] for s in samples], names, Path(args.work) / "frames", cam)
    data = FrameCrops(frames, None)
    crops, kept = [], []
    for i in range(len(data)):
        if data[i] is not None:
            crops.append(data[i])
            kept.append(i)
    truth = torch.stack([samples[i]["keypoints"] for i in kept])  # scoring only
    print(f"{len(crops)} of {len(samples)} shifted frames have a findable hand; sampling "
          f"{json.loads((ds / 'camera.json').read_text()).get('sampling')}")
    variants = {"network": args.checkpoint}
    if not (args.mixed_only and args.synthetic):
        variants["adapted"], _ = _adapt(frames, args.checkpoint, Path(args.work) / "adapted", args)
    if args.synthetic:
        variants["adapted_mixed"], _ = _adapt(frames, args.checkpoint, Path(args.work) / "adapted_mixed", args,
                                              synthetic=args.synthetic)
    before = None
    for name, ckpt in variants.items():
        f = _network_figures(ckpt, crops, truth)
        before = before or f
        change = 100 * (f["mpjpe_mm"] / before["mpjpe_mm"] - 1)
        print(f"network alone, {name:14s}: {_fmt(f)} (MPJPE {change:+.0f}% against the unadapted)", flush=True)
    if args.fit_frames:
        camera = camera_from_args(camera_json=frames / "camera.json")
        obs = [Observation(depth=read_depth(frames / f"{names[i]}.png"), camera=camera, name=names[i])
               for i in kept[:args.fit_frames]]
        _fit_rows({"search": None, **variants}, obs, truth[:args.fit_frames], only=args.fit_variants,
                  network_config=args.network_config)


def sr305(args) -> None:
    paths = sorted(SR305.glob("*/*.png"), key=lambda p: (p.parent.name, int(p.stem)))
    if not paths:
        sys.exit(f"no SR305 frames at {SR305}")
    names = [f"{p.parent.name}_{p.stem}" for p in paths]
    cam = Camera(**SR305_CAMERA)
    camd = {"fx": float(cam.fx[0]), "fy": float(cam.fy[0]), "cx": float(cam.cx[0]), "cy": float(cam.cy[0]),
            "width": cam.width, "height": cam.height}
    frames = _copy_frames(paths, names, Path(args.work) / "sr305_frames", camd)
    data = FrameCrops(frames, None, depth_scale=0.125)
    crops = [c for c in (data[i] for i in range(len(data))) if c is not None]
    variants = {"network": args.checkpoint}
    variants["adapted"], _ = _adapt(frames, args.checkpoint, Path(args.work) / "sr305_adapted", args,
                                    synthetic=args.synthetic, depth_scale=0.125)
    for name, ckpt in variants.items():
        print(f"network alone on {len(crops)} SR305 frames, {name:8s}: {_fmt(_network_figures(ckpt, crops))}",
              flush=True)
    if args.fit:
        chosen = names[::args.fit_every][:args.fit_frames or None]
        obs = [Observation(depth=read_depth(frames / f"{n}.png", depth_scale=0.125), camera=cam, name=n)
               for n in chosen]
        _fit_rows({"search": None, **variants}, obs, batch=4, only=args.fit_variants,
                  network_config=args.network_config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("shifted", "sr305"):
        p = sub.add_parser(name)
        if name == "shifted":
            p.add_argument("dataset")
        p.add_argument("checkpoint")
        p.add_argument("--work", required=True, help="working folder (frames, adapted checkpoints)")
        p.add_argument("--epochs", type=int, default=4)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--lr", type=float, default=AdaptOptions.lr)
        p.add_argument("--renderer", default="soft")
        p.add_argument("--synthetic", help="a 'handfit synth' training set to mix in")
        p.add_argument("--synthetic-weight", type=float, default=AdaptOptions.synthetic_weight)
        p.add_argument("--synthetic-crop", choices=("fitter", "mask"), default=AdaptOptions.synthetic_crop,
                       help="AdaptOptions.synthetic_crop: the synthetic samples cut as the frames are, or by their mask")
        p.add_argument("--seed", type=int, default=AdaptOptions.seed, help="the adaptations' shuffling and batches")
        p.add_argument("--weights", type=json.loads, default=None,
                       help='AdaptOptions.weights: energy weights of the adaptations as JSON, e.g. \'{"wrist": 0}\'')
        if name == "shifted":
            p.add_argument("--mixed-only", action="store_true",
                           help="with --synthetic: only the mixed adaptation (not the unlabelled-only one)")
            p.add_argument("--fit-frames", type=int, default=0, help="fit the first N frames with each start")
        else:
            p.add_argument("--fit", action="store_true", help="also fit the frames with each start")
            p.add_argument("--fit-every", type=int, default=1, help="fit every K-th frame (default 1: all)")
            p.add_argument("--fit-frames", type=int, default=0, help="fit at most N frames (0: all)")
        p.add_argument("--network-config", type=json.loads, default=None,
                       help='FitConfig fields for the network starts (not the *_check ones), as JSON, e.g. '
                            '\'{"network_pose_scale": 0.5}\'')
        p.add_argument("--fit-variants", type=lambda v: v.split(","), default=None,
                       help="fit only these starts (comma-separated among search, network, adapted, ..., and "
                            "NAME_check: that network with the always-run flip check and the stages' own lengths)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    shifted(args) if args.what == "shifted" else sr305(args)


if __name__ == "__main__":
    main()
