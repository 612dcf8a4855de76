"""Fitting whole recordings: a folder of depth frames in, one fitted hand per frame out.

:func:`fit_sequence` fits the frames of a folder in natural order (``2.png`` before
``10.png``):

1. **shape**: the first ``shape_frames`` readable frames are fitted as one batch with every
   stage (search, pose, shape); their bone scales, shape coefficients and offsets are
   averaged into one hand shape, saved as ``shape.npz`` and frozen for the whole sequence;
2. **pose**, frame by frame with the frozen shape: the first frame (and any frame after a
   failed one, when ``warm_start`` is off, or with no fitted predecessor) starts from the
   initial search; the others start from a constant-velocity prediction of the two previous
   fits (rotation ``R_t = R_{t-1} R_{t-2}^T R_{t-1}``, translation and angles linearly) and
   run only the pose stages that free the articulation; a warm fit that ends with a poor
   silhouette IoU (``recover_iou``) is fitted again from the initial search. A ``temporal`` energy
   (:func:`losses.temporal_smoothness_loss` on the keypoints, mm^2) ties each frame to its
   predecessors.

Each frame's outputs (see :func:`fitting.writers.write_result`) are written into a
temporary folder that is renamed to ``OUT/<frame>/`` once complete, so a frame folder
exists only when it is finished. A restarted run skips finished frames and reads their
parameters back (also in an uninterrupted run, so both give the same numbers), so stopping
at any point (a frame limit, Ctrl-C, a kill) loses nothing. A frame that cannot be read or
has no hand is reported (``OUT/<frame>.error.txt`` and the summary) and skipped.
``OUT/sequence.json`` summarises the run: per-frame metrics, failures and the jitter
(mean frame-to-frame keypoint acceleration, mm/frame^2).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle
from tqdm import tqdm

from hands import HandModel
from renderers import Camera

from .errors import InputError
from .fitter import TEMPORAL_WEIGHT, Fitter, FitConfig
from .io import check_camera_matches, read_depth
from .observation import Observation
from .pipeline import (DEFAULT_BOX_MM, DEFAULT_WORKING_SIZE, GLOBAL_PARAMETERS, IN_PLANE_ANGLES_DEG,
                       SHAPE_PARAMETERS, fit_crops, prepare)
from .writers import write_result

log = logging.getLogger(__name__)

#: File name patterns of frames in a sequence folder.
FRAME_SUFFIXES = (".png", ".tif", ".tiff")
SHAPE_FILE = "shape.npz"
SUMMARY_FILE = "sequence.json"


@dataclasses.dataclass
class SequenceOptions:
    """Settings of :func:`fit_sequence`.

    Attributes:
        shape_frames: N, the frames whose average shape is frozen for the sequence.
        warm_start: start each frame from the constant-velocity prediction of the previous
            fits (False: every frame runs the initial search, a "cold start").
        temporal_weight: weight of the ``temporal`` energy (0 turns it off).
        max_frames: stop after fitting this many new frames (None: all); a later run
            resumes.
        depth_scale: millimetres per depth unit; ``encoding`` the depth encoding
            (see :func:`fitting.io.read_depth`).
        box_mm, working_size, angles_deg: as in :func:`fitting.pipeline.fit_observations`.
        progress: show a tqdm progress bar.
        recover_iou: a warm-started frame whose silhouette IoU ends below this is fitted again
            from the initial search without the temporal term, and the better of the two (by
            IoU) is kept (the metric
            ``recovered`` says which; the warm fit's iterations count as search iterations).
            Large motions between frames (a hand turning fast, dropped frames) break the
            constant-velocity prediction; 0 turns recovery off.
    """

    shape_frames: int = 3
    warm_start: bool = True
    temporal_weight: float = TEMPORAL_WEIGHT
    max_frames: int | None = None
    depth_scale: float = 1.0
    encoding: str = "uint16"
    box_mm: float = DEFAULT_BOX_MM
    working_size: int = DEFAULT_WORKING_SIZE
    angles_deg: tuple[float, ...] = IN_PLANE_ANGLES_DEG
    progress: bool = True
    recover_iou: float = 0.8

    def __post_init__(self):
        if self.shape_frames < 1:
            raise ValueError(f"SequenceOptions: shape_frames must be >= 1, got {self.shape_frames}")
        if self.max_frames is not None and self.max_frames < 0:
            raise ValueError(f"SequenceOptions: max_frames must be >= 0, got {self.max_frames}")
        if self.temporal_weight < 0:
            raise ValueError(f"SequenceOptions: temporal_weight must be >= 0, got {self.temporal_weight}")


@dataclasses.dataclass
class SequenceReport:
    """What :func:`fit_sequence` did.

    Attributes:
        frames: the frame names in order.
        metrics: frame name -> metrics of every finished frame (this run's and earlier ones').
        failures: frame name -> the reason it was skipped.
        fitted: the frames fitted by this run; ``skipped`` those already finished.
        skipped: see ``fitted``.
        jitter_mm: mean frame-to-frame keypoint acceleration (mm/frame^2) over runs of
            consecutive finished frames, NaN with fewer than 3.
        complete: every frame is finished or failed.
    """

    frames: list
    metrics: dict
    failures: dict
    fitted: list
    skipped: list
    jitter_mm: float
    complete: bool


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``frame2`` before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frames(folder: str | Path) -> list[Path]:
    """The depth frames of a folder (``.png``, ``.tif``), sorted naturally.

    Raises:
        InputError: the folder does not exist or holds no frame.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"sequence folder {folder} does not exist or is not a folder")
    frames = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                    key=lambda p: natural_key(p.name))
    if not frames:
        raise InputError(f"no frames ({', '.join(FRAME_SUFFIXES)}) in {folder}")
    return frames


def keypoint_jitter(keypoints: torch.Tensor | np.ndarray) -> float:
    """Mean frame-to-frame keypoint acceleration ``|k_t - 2 k_{t-1} + k_{t-2}|``, mm/frame^2.

    Args:
        keypoints: (T, K, 3) mm, consecutive frames.

    Returns:
        the mean over frames t = 2..T-1 and keypoints; NaN when T < 3.
    """
    k = torch.as_tensor(np.asarray(keypoints), dtype=torch.float64)
    if k.ndim != 3 or k.shape[-1] != 3:
        raise ValueError(f"keypoints must have shape (T, K, 3), got {tuple(k.shape)}")
    if k.shape[0] < 3:
        return float("nan")
    acc = k[2:] - 2 * k[1:-1] + k[:-2]
    return float(acc.norm(dim=-1).mean())


def predict_parameters(previous: list[dict]) -> dict:
    """Constant-velocity prediction from the last one or two fits (dicts of (1, ...) tensors).

    Translation, angles and other parameters extrapolate linearly; the global rotation
    extrapolates on SO(3): ``R_t = (R_{t-1} R_{t-2}^T) R_{t-1}``. With one fit, its copy.
    """
    last = {k: v.clone() for k, v in previous[-1].items()}
    if len(previous) < 2:
        return last
    before = previous[-2]
    out = dict(last)
    for k in ("transl", "theta"):
        out[k] = 2 * last[k] - before[k]
    R1, R0 = axis_angle_to_matrix(last["global_orient"]), axis_angle_to_matrix(before["global_orient"])
    out["global_orient"] = matrix_to_axis_angle(R1 @ R0.transpose(-1, -2) @ R1)
    return out


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _load_frame_fit(frame_dir: Path) -> tuple[dict, torch.Tensor, dict]:
    """Parameters (dict of (1, ...)), keypoints (21, 3) and metrics of a finished frame."""
    with np.load(frame_dir / "result.npz") as z:
        params = {k: torch.from_numpy(z[k])[None] for k in ("global_orient", "transl", "theta", "alpha", "beta",
                                                            "offsets")}
        keypoints = torch.from_numpy(z["keypoints"])
    metrics = json.loads((frame_dir / "params.json").read_text())["metrics"]
    return params, keypoints, metrics


class _Frames:
    """Reads and prepares frames, remembering the failures."""

    def __init__(self, camera: Camera, options: SequenceOptions):
        self.camera, self.options = camera, options

    def load(self, path: Path):
        o = self.options
        depth = read_depth(path, depth_scale=o.depth_scale, encoding=o.encoding)
        check_camera_matches(self.camera, depth)
        obs = Observation(depth=depth, camera=self.camera, name=path.stem)
        return obs, prepare(obs, o.box_mm, o.working_size)


def estimate_shape(fitter: Fitter, paths: list[Path], frames: _Frames, n: int) -> tuple[dict, list[str], dict]:
    """Average shape (dict of (1, ...) tensors: alpha, beta, offsets) of the first n good frames.

    Returns:
        the shape, the names of the frames used, and failures (name -> reason) met on the way.

    Raises:
        InputError: no frame of the folder could be fitted.
    """
    crops, names, failures = [], [], {}
    for path in paths:
        if len(crops) == n:
            break
        try:
            _, crop = frames.load(path)
        except InputError as err:
            failures[path.stem] = str(err)
            continue
        crops.append(crop)
        names.append(path.stem)
    if not crops:
        raise InputError(f"none of the {len(paths)} frames could be read and segmented "
                         f"(first problem: {next(iter(failures.values()))})")
    results = fit_crops(fitter, crops, names, angles_deg=frames.options.angles_deg)
    shape = {k: torch.stack([r.params[k] for r in results]).mean(0, keepdim=True) for k in sorted(SHAPE_PARAMETERS)}
    return shape, names, failures


def fit_sequence(folder: str | Path, out_dir: str | Path, model: HandModel, renderer, camera: Camera,
                 config: FitConfig | None = None, options: SequenceOptions | None = None) -> SequenceReport:
    """Fit every frame of ``folder`` into ``out_dir`` (resumable; see the module docstring).

    Args:
        folder: the frames (16-bit depth images), sorted naturally.
        out_dir: the output folder: ``<frame>/`` per finished frame, ``shape.npz``,
            ``sequence.json``, ``<frame>.error.txt`` for skipped frames.
        model, renderer: the hand model and renderer.
        camera: the frames' camera (batch 1); a frame of another size is skipped.
        config: the fit's configuration (its stages: the shape frames run all of them, the
            other frames the pose stages); its ``temporal`` weight is replaced by
            ``options.temporal_weight``.
        options: :class:`SequenceOptions`.

    Returns:
        a :class:`SequenceReport`.

    Raises:
        InputError: the folder is missing or holds no frame, or no frame can be fitted.
    """
    options = options or SequenceOptions()
    config = config or FitConfig()
    paths = list_frames(folder)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = _Frames(camera, options)
    config = dataclasses.replace(config, weights={**config.weights, "temporal": options.temporal_weight})
    full = Fitter(model, renderer, config)
    pose_stages = tuple(s for s in config.stages if not set(s.free) & SHAPE_PARAMETERS)
    warm_stages = tuple(s for s in pose_stages if not set(s.free) <= GLOBAL_PARAMETERS) or pose_stages
    pose_fitter = Fitter(model, renderer, dataclasses.replace(config, stages=pose_stages))
    warm_fitter = Fitter(model, renderer, dataclasses.replace(config, stages=warm_stages))

    names = [p.stem for p in paths]
    failures: dict[str, str] = {}
    shape_path = out / SHAPE_FILE
    if shape_path.exists():
        with np.load(shape_path) as z:
            shape = {k: torch.from_numpy(z[k]) for k in sorted(SHAPE_PARAMETERS)}
    else:
        shape, used, failures = estimate_shape(full, paths, frames, options.shape_frames)
        buf = io.BytesIO()
        np.savez(buf, frames=np.array(used), **{k: v.numpy() for k, v in shape.items()})
        _atomic_bytes(shape_path, buf.getvalue())

    metrics, fitted, skipped = {}, [], []
    history: list[tuple[dict, torch.Tensor] | None] = []  # per frame: (params, keypoints) or None
    bar = tqdm(total=len(paths), desc="fit-sequence", unit="frame", disable=not options.progress)
    try:
        for path in paths:
            name = path.stem
            frame_dir = out / name
            if frame_dir.is_dir() and (frame_dir / "params.json").exists():
                params, keypoints, metrics[name] = _load_frame_fit(frame_dir)
                history.append((params, keypoints))
                skipped.append(name)
                bar.update(1)
                continue
            if options.max_frames is not None and len(fitted) >= options.max_frames:
                break
            try:
                obs, crop = frames.load(path)
            except InputError as err:
                failures[name] = str(err)
                _atomic_bytes(out / f"{name}.error.txt", f"{err}\n".encode())
                log.warning("skipped %s: %s", name, err)
                history.append(None)
                bar.update(1)
                continue
            # the last two frames, if fitted, for the prediction and the temporal term
            recent = [h for h in history[-2:] if h is not None] if history and history[-1] is not None else []
            prev_kp = torch.stack([k for _, k in recent])[None] if recent else None
            if options.warm_start and recent:
                init = predict_parameters([p for p, _ in recent])
                init.update(shape)
                result = fit_crops(warm_fitter, [crop], [name], init=init, previous_keypoints=prev_kp)[0]
                result.metrics["recovered"] = 0
                if result.metrics["iou"] < options.recover_iou:
                    warm = result
                    # re-acquire without the temporal term: it is what held the hand back
                    result = fit_crops(pose_fitter, [crop], [name], angles_deg=options.angles_deg, shape=shape)[0]
                    result.metrics["recovered"] = int(result.metrics["iou"] > warm.metrics["iou"])
                    if not result.metrics["recovered"]:
                        warm.metrics["search_iterations"] += result.metrics["iterations"] + \
                            result.metrics["search_iterations"]
                        warm.metrics["seconds"] += result.metrics["seconds"]
                        result = warm
                    else:
                        result.metrics["search_iterations"] += warm.metrics["iterations"]
                        result.metrics["seconds"] += warm.metrics["seconds"]
            else:
                result = fit_crops(pose_fitter, [crop], [name], angles_deg=options.angles_deg, shape=shape,
                                   previous_keypoints=prev_kp)[0]
            tmp = out / f".{name}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            write_result(result, tmp, obs.depth, camera, renderer)
            os.replace(tmp, frame_dir)
            (out / f"{name}.error.txt").unlink(missing_ok=True)
            # read the written fit back, so that a resumed run continues from the same numbers
            params, keypoints, metrics[name] = _load_frame_fit(frame_dir)
            history.append((params, keypoints))
            fitted.append(name)
            bar.update(1)
            bar.set_postfix(iou=f"{result.metrics['iou']:.3f}")
    finally:
        bar.close()

    complete = all(n in metrics or n in failures for n in names)
    jitter = _sequence_jitter(names, out, metrics)
    summary = {
        "frames": names,
        "complete": complete,
        "jitter_mm_per_frame2": jitter,
        "metrics": metrics,
        "failures": failures,
        "shape": {k: v[0].tolist() for k, v in shape.items() if k != "offsets"},
    }
    _atomic_bytes(out / SUMMARY_FILE, json.dumps(summary, indent=1).encode())
    return SequenceReport(frames=names, metrics=metrics, failures=failures, fitted=fitted, skipped=skipped,
                          jitter_mm=jitter, complete=complete)


def _sequence_jitter(names: list[str], out: Path, metrics: dict) -> float:
    """Jitter over the runs of consecutive finished frames (weighted by their accelerations)."""
    total, count, run = 0.0, 0, []
    for name in names + [None]:
        if name is not None and name in metrics:
            with np.load(out / name / "result.npz") as z:
                run.append(z["keypoints"])
            continue
        if len(run) >= 3:
            total += keypoint_jitter(np.stack(run)) * (len(run) - 2)
            count += len(run) - 2
        run = []
    return total / count if count else float("nan")
