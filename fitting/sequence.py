"""Fitting whole recordings: a folder of depth frames in, one fitted hand per frame out.

:func:`fit_sequence` is the file side of :class:`fitting.tracking.Tracker` (the sequence logic:
frozen shape, warm starts, recovery, temporal term; see that module). It fits the frames of a
folder in natural order (``2.png`` before ``10.png``); the shape of the first ``shape_frames``
readable frames is saved as ``shape.npz``.

Each frame's outputs (see :meth:`fitting.FitResult.save`) are written into a temporary folder
that is renamed to ``OUT/<frame>/`` once complete, so a frame folder exists only when it is
finished. A restarted run skips finished frames and reads their parameters back for the warm
start, so stopping at any point (a frame limit, Ctrl-C, a kill) loses nothing. A frame that
cannot be read or has no hand is reported (``OUT/<frame>.error.txt`` and the summary) and
skipped. ``OUT/sequence.json`` summarises the run: per-frame metrics, failures and the jitter
(mean frame-to-frame keypoint acceleration, mm/frame^2).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from renderers import Camera

from .config import PARAMETER_NAMES, SHAPE_PARAMETERS
from .errors import InputError
from .fitter import Fitter
from .io import check_camera_matches, natural_key, read_depth, read_mask
from .observation import Observation
from .tracking import Tracker, TrackOptions, keypoint_jitter
from .writers import check_output_dir

log = logging.getLogger(__name__)

#: File name patterns of frames in a sequence folder.
FRAME_SUFFIXES = (".png", ".tif", ".tiff")
SHAPE_FILE = "shape.npz"
SUMMARY_FILE = "sequence.json"


@dataclasses.dataclass
class SequenceOptions(TrackOptions):
    """Settings of :func:`fit_sequence`: those of :class:`~fitting.tracking.TrackOptions`
    (``shape_frames``, ``warm_start``, ``recover_iou``, ``frame_iterations``,
    ``recover_from_last_pose``) and the folder's.

    Attributes:
        max_frames: stop after fitting this many new frames (None: all); a later run
            resumes.
        depth_scale: millimetres per depth unit; ``encoding`` the depth encoding
            (see :func:`fitting.io.read_depth`).
        encoding: see ``depth_scale``.
        progress: show a tqdm progress bar.
        mask_dir: optional folder of hand masks (nonzero = hand, read by
            :func:`fitting.io.read_mask`), one per frame, matched by name: frame ``17.png``
            takes ``17.png`` (or ``17.tif``, ``17.tiff``) from it. Without it every frame is
            segmented.

    Raises:
        ValueError: a value out of range (the message names it).
    """

    max_frames: int | None = None
    depth_scale: float = 1.0
    encoding: str = "uint16"
    progress: bool = True
    mask_dir: str | Path | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.max_frames is not None and self.max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {self.max_frames}")


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


def match_masks(frames: list[Path], mask_dir: str | Path) -> dict[str, Path]:
    """The mask file of each frame, matched by name (``17.png`` -> ``mask_dir/17.png``, or
    ``.tif``/``.tiff``).

    Returns:
        frame name (stem) -> mask path.

    Raises:
        InputError: ``mask_dir`` is not a folder, or a frame has no mask in it (the message
            names the first such frame and how many lack one).
    """
    folder = Path(mask_dir)
    if not folder.is_dir():
        raise InputError(f"--mask {mask_dir}: not a folder of masks")
    found, missing = {}, []
    for path in frames:
        for suffix in FRAME_SUFFIXES:
            candidate = folder / f"{path.stem}{suffix}"
            if candidate.is_file():
                found[path.stem] = candidate
                break
        else:
            missing.append(path.stem)
    if missing:
        raise InputError(f"--mask {mask_dir}: no mask for frame {missing[0]} (looked for "
                         f"{', '.join(missing[0] + s for s in FRAME_SUFFIXES)}); {len(missing)} of "
                         f"{len(frames)} frames have none")
    return found


def list_frames(folder: str | Path) -> list[Path]:
    """The depth frames of a folder (``.png``, ``.tif``), sorted naturally.

    Raises:
        InputError: the folder does not exist, holds no frame, or two frames share a stem
            (``30.png`` and ``30.tif``: their outputs would collide).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"sequence folder {folder} does not exist or is not a folder")
    frames = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                    key=lambda p: natural_key(p.name))
    if not frames:
        raise InputError(f"no frames ({', '.join(FRAME_SUFFIXES)}) in {folder}")
    seen: dict[str, Path] = {}
    for p in frames:  # each frame's outputs are named by its stem: two frames must not share one
        if p.stem in seen:
            raise InputError(f"frames {seen[p.stem].name} and {p.name} in {folder} would write the same output "
                             f"folder {p.stem}/; rename or remove one")
        seen[p.stem] = p
    return frames


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _load_frame_fit(frame_dir: Path) -> tuple[dict, torch.Tensor, dict]:
    """Parameters (dict of (1, ...)), keypoints (21, 3) and metrics of a finished frame."""
    with np.load(frame_dir / "result.npz") as z:
        params = {k: torch.from_numpy(z[k])[None] for k in PARAMETER_NAMES}
        keypoints = torch.from_numpy(z["keypoints"])
    metrics = json.loads((frame_dir / "params.json").read_text())["metrics"]
    return params, keypoints, metrics


def fit_sequence(folder: str | Path, out_dir: str | Path, fitter: Fitter, camera: Camera,
                 options: SequenceOptions | None = None) -> SequenceReport:
    """Fit every frame of ``folder`` into ``out_dir`` (resumable; see the module docstring).

    Args:
        folder: the frames (16-bit depth images), sorted naturally.
        out_dir: the output folder: ``<frame>/`` per finished frame, ``shape.npz``,
            ``sequence.json``, ``<frame>.error.txt`` for skipped frames.
        fitter: the :class:`~fitting.Fitter` (model, renderer, config, device).
        camera: the frames' camera (batch 1); a frame of another size is skipped.
        options: :class:`SequenceOptions`.

    Returns:
        a :class:`SequenceReport`.

    Raises:
        InputError: the folder is missing or holds no frame, or no frame can be fitted.
    """
    options = options or SequenceOptions()
    paths = list_frames(folder)
    out = check_output_dir(out_dir, "out_dir", results=False)
    track = TrackOptions(**{f.name: getattr(options, f.name) for f in dataclasses.fields(TrackOptions)})

    masks = match_masks(paths, options.mask_dir) if options.mask_dir is not None else {}

    def load(path: Path) -> Observation:
        depth = read_depth(path, depth_scale=options.depth_scale, encoding=options.encoding)
        check_camera_matches(camera, depth)
        mask = None
        if masks:
            mask = read_mask(masks[path.stem])
            if tuple(mask.shape) != tuple(depth.shape):
                raise InputError(f"{masks[path.stem]}: the mask is {mask.shape[1]}x{mask.shape[0]} but the frame "
                                 f"{path.name} is {depth.shape[1]}x{depth.shape[0]}")
        return Observation(depth=depth, camera=camera, mask=mask, name=path.stem)

    names = [p.stem for p in paths]
    failures: dict[str, str] = {}
    shape_path = out / SHAPE_FILE
    if shape_path.exists():
        with np.load(shape_path) as z:
            shape = {k: torch.from_numpy(z[k]) for k in sorted(SHAPE_PARAMETERS)}
        tracker = Tracker(fitter, track, shape)
    else:
        tracker = Tracker(fitter, track)
        calibration = []
        for path in paths:
            if len(calibration) == options.shape_frames:
                break
            try:
                calibration.append(load(path))
            except InputError as err:
                failures[path.stem] = str(err)
        if not calibration:
            raise InputError(f"none of the {len(paths)} frames could be read "
                             f"(first problem: {next(iter(failures.values()))})")
        shape, used, more = tracker.calibrate(calibration)
        failures.update(more)
        buf = io.BytesIO()
        np.savez(buf, frames=np.array(used), **{k: v.numpy() for k, v in shape.items()})
        _atomic_bytes(shape_path, buf.getvalue())

    metrics, fitted, skipped = {}, [], []
    bar = tqdm(total=len(paths), desc="fit-sequence", unit="frame", disable=not options.progress)
    try:
        for path in paths:
            name = path.stem
            frame_dir = out / name
            if frame_dir.is_dir() and (frame_dir / "params.json").exists():
                params, keypoints, metrics[name] = _load_frame_fit(frame_dir)
                tracker.resume(params, keypoints)
                skipped.append(name)
                bar.update(1)
                continue
            if options.max_frames is not None and len(fitted) >= options.max_frames:
                break
            try:
                try:
                    obs = load(path)
                except InputError:
                    tracker.skip()  # a frame that cannot be read breaks the warm-start chain
                    raise
                result = tracker.step(obs)  # records its own failure (no hand) as a skip
            except InputError as err:
                failures[name] = str(err)
                _atomic_bytes(out / f"{name}.error.txt", f"{err}\n".encode())
                log.warning("skipped %s: %s", name, err)
                bar.update(1)
                continue
            failures.pop(name, None)
            result.save(frame_dir)  # written whole into .<name>.tmp, then renamed
            (out / f"{name}.error.txt").unlink(missing_ok=True)
            metrics[name] = json.loads((frame_dir / "params.json").read_text())["metrics"]
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
        "shape": {k: v[0].tolist() for k, v in tracker.shape.items() if k != "offsets"},
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
