"""Fitting whole datasets: many independent frames, batched, resumable, sharded by rank.

:func:`fit_dataset` fits every frame of a source (see :func:`list_dataset`: a folder of depth
frames, or a file list with optional per-frame camera JSON) in batches of B frames that
:meth:`fitting.Fitter.fit_crops` optimizes together; frames of any size are segmented and
cropped to the working resolution first (on the CPU), so one batch may mix cameras and
resolutions. Each frame's result is written whole (:func:`fitting.writers.write_result`,
into ``OUT/<name>/``) as soon as its batch is done; a frame that cannot be read or has no
hand is recorded in ``OUT/<name>.error.txt`` and the batch goes on without it.

Resuming: a rerun skips every frame whose folder is complete, and the failed frames too
unless ``retry_failed``; so a stop at any point (Ctrl-C, a kill, a lost machine) loses at
most the batches in flight.

Scale-out: under ``torchrun`` (``torch.distributed`` initialized, see
:func:`fitting.distributed.init_from_environment`) the frames still to do are split by rank
(``pending[rank::world_size]``, after a barrier, so every rank sees the same list), each rank
writes its own frames, and rank 0 writes the summary (``OUT/summary.csv``, one row of metrics
per finished frame, and ``OUT/summary.json``, the means and the failures) after a barrier.
A rank that dies takes the run down (torchrun stops the others); its unfinished frames are
the next run's pending ones, and no finished frame is fitted again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from renderers import Camera

from .errors import InputError
from .fitter import Fitter
from .io import camera_from_args, check_camera_matches, read_depth
from .observation import Observation
from .preprocess import prepare
from .sequence import FRAME_SUFFIXES, list_frames
from .writers import RESULT_FILES, check_output_dir

log = logging.getLogger(__name__)

__all__ = ["DatasetItem", "DatasetOptions", "DatasetReport", "list_dataset", "fit_dataset", "write_summary",
           "auto_batch_size", "SUMMARY_CSV", "SUMMARY_JSON", "FOLDER_CAMERA"]

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
#: A folder source's camera file: used for its frames when no intrinsics are given.
FOLDER_CAMERA = "camera.json"
#: The files a dataset run writes per frame by default: the parameters, metrics and keypoints
#: (``params.json``) and the arrays (``result.npz``). The mesh, overlay and energy curve cost
#: about 0.1 s a frame on the CPU (the overlay is a full-resolution render), more than a
#: batched fit on a GPU; ask for them with ``DatasetOptions(files=RESULT_FILES)``.
DEFAULT_FILES = ("params.json", "result.npz")
#: The most lines a file list may have (about 0.2 GB of paths in memory).
MAX_LIST_LINES = 10_000_000
#: Frames per batch on the CPU when none is given (``bench/throughput.py`` measures others).
CPU_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class DatasetItem:
    """One frame of a dataset.

    Attributes:
        path: the depth image.
        name: the frame's name: its output folder ``OUT/<name>/`` (unique in the dataset).
        camera_json: the frame's own camera file (``fx, fy, cx, cy, width, height``), or None
            for the dataset's camera.
    """

    path: Path
    name: str
    camera_json: Path | None = None


@dataclasses.dataclass
class DatasetOptions:
    """Settings of :func:`fit_dataset`.

    Attributes:
        batch_size: frames fitted together; None: :func:`auto_batch_size`.
        depth_scale: millimetres per depth unit; ``encoding`` the depth encoding (see
            :func:`fitting.io.read_depth`).
        encoding: see ``depth_scale``.
        retry_failed: fit again the frames an earlier run recorded as failed.
        max_frames: stop after this many new frames (this rank's; None: all); a rerun resumes.
        workers: processes that read and segment frames ahead of the fit
            (``torch.utils.data.DataLoader`` workers); None: 0 (the fitting process itself)
            when fitting on the CPU, where the fit needs the cores, else up to 4. Segmenting a
            640x480 frame takes about 0.1 s of CPU, so a GPU fitting hundreds of frames a
            second needs several.
        files: the result files written per frame (a subset of
            :data:`fitting.writers.RESULT_FILES`; default :data:`DEFAULT_FILES`).
        progress: show a tqdm progress bar (frames per second).

    Raises:
        ValueError: a value out of range (the message names it).
    """

    batch_size: int | None = None
    depth_scale: float = 1.0
    encoding: str = "uint16"
    retry_failed: bool = False
    max_frames: int | None = None
    workers: int | None = None
    files: tuple[str, ...] = DEFAULT_FILES
    progress: bool = True

    def __post_init__(self):
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be an int >= 1 (or None: from free memory), got {self.batch_size!r}")
        if self.max_frames is not None and self.max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {self.max_frames}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self.files = tuple(self.files)
        bad = set(self.files) - set(RESULT_FILES)
        if bad or "params.json" not in self.files:
            raise ValueError(f"files must include params.json and be among {', '.join(RESULT_FILES)}, got "
                             f"{', '.join(self.files)}")


@dataclasses.dataclass
class DatasetReport:
    """What :func:`fit_dataset` did on this rank.

    Attributes:
        frames: how many frames the dataset has.
        fitted: names of the frames this rank fitted in this run.
        failed: name -> reason, the frames this rank tried and could not fit.
        skipped: how many frames were already finished (or failed) before this run.
        seconds: wall time of this rank's fitting (reading, fitting and writing).
        batch_size: the batch size used.
        summary: the means of :func:`write_summary` (rank 0 only; None on the others).
    """

    frames: int
    fitted: list
    failed: dict
    skipped: int
    seconds: float
    batch_size: int
    summary: dict | None = None

    @property
    def frames_per_second(self) -> float:
        return len(self.fitted) / self.seconds if self.seconds > 0 else float("nan")


# -- sources ---------------------------------------------------------------------------------
def _name_of(relative: Path) -> str:
    """An output folder name for a frame at ``relative`` (its path without suffix, ``/`` -> ``__``)."""
    return "__".join(relative.with_suffix("").parts)


def _inside(path: Path, root: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise InputError(f"{what} {path} lies outside {root}; file lists may only name files under their folder "
                         "(or under --root)")
    return resolved


def list_dataset(source: str | Path, root: str | Path | None = None) -> list[DatasetItem]:
    """The frames of a dataset source, in order.

    Sources:

    - a folder: its depth frames (``.png``, ``.tif``) in natural order, named by stem (see
      :func:`fitting.sequence.list_frames`).
    - a file list (any other file, e.g. ``frames.txt``): one frame a line, ``FRAME`` or
      ``FRAME CAMERA.json`` (whitespace-separated; blank lines and ``#`` comments ignored).
      Relative paths are relative to ``root`` (default: the list's folder), and every path
      must lie under ``root``: a list cannot make the run read elsewhere. Frames are named by
      their path relative to ``root`` (``seq1/0001.png`` -> ``seq1__0001``).

    Args:
        source: the folder or the list file.
        root: the folder a list's paths are taken relative to and confined to.

    Returns:
        the :class:`DatasetItem` list.

    Raises:
        InputError: the source does not exist, holds no frame, a list line is malformed or
            names a path outside ``root`` or a missing file, has more than
            :data:`MAX_LIST_LINES` lines, or two frames would get the same name.
    """
    source = Path(source)
    if source.is_dir():
        return [DatasetItem(p, p.stem) for p in list_frames(source)]
    if not source.is_file():
        raise InputError(f"dataset source {source} does not exist (give a folder of frames or a file list)")
    base = Path(root) if root is not None else source.parent
    if not base.is_dir():
        raise InputError(f"--root {base} is not a folder")
    base = base.resolve()
    items, seen = [], {}
    try:
        with open(source, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if number > MAX_LIST_LINES:
                    raise InputError(f"{source} has more than {MAX_LIST_LINES} lines; split it")
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.split()
                if len(fields) > 2:
                    raise InputError(f"{source}:{number}: expected 'FRAME' or 'FRAME CAMERA.json', got {len(fields)} "
                                     "fields (paths with spaces are not supported)")
                frame = _inside(base / fields[0], base, f"{source}:{number}: frame")
                if not frame.is_file():
                    raise InputError(f"{source}:{number}: no such frame {fields[0]}")
                if frame.suffix.lower() not in FRAME_SUFFIXES:
                    raise InputError(f"{source}:{number}: {fields[0]} is not a depth frame "
                                     f"({', '.join(FRAME_SUFFIXES)})")
                camera = _inside(base / fields[1], base, f"{source}:{number}: camera") if len(fields) == 2 else None
                if camera is not None and not camera.is_file():
                    raise InputError(f"{source}:{number}: no such camera file {fields[1]}")
                name = _name_of(frame.relative_to(base))
                if name in seen:
                    raise InputError(f"{source}:{number}: {fields[0]} has the same output name {name!r} as line "
                                     f"{seen[name]}")
                seen[name] = number
                items.append(DatasetItem(frame, name, camera))
    except UnicodeDecodeError:
        raise InputError(f"{source} is not a text file list (one frame path a line)") from None
    if not items:
        raise InputError(f"{source} lists no frames")
    return items


# -- batch size ------------------------------------------------------------------------------
def auto_batch_size(fitter: Fitter, fraction: float = 0.5, limit: int = 256) -> int:
    """Frames per batch: from free GPU memory on CUDA, :data:`CPU_BATCH_SIZE` on the CPU.

    On CUDA one frame's peak memory is measured on a probe (the search, 4 + K hypotheses
    of it, is the largest batch of a fit: one energy evaluation with gradients of a
    ``4 + len(angles_deg)`` batch at the working size), and the batch takes ``fraction`` of
    the free memory (``torch.cuda.mem_get_info``) at that rate, at most ``limit``.
    """
    if fitter.device.type != "cuda":
        return CPU_BATCH_SIZE
    from .fitter import FitTarget

    S = fitter.config.working_size
    n = max(4, len(fitter.config.angles_deg) or 1)
    dev, dt = fitter.device, fitter.dtype
    camera = Camera(fx=S * 2.0, fy=S * 2.0, cx=(S - 1) / 2, cy=(S - 1) / 2, width=S, height=S).to(dev, dt)
    ones = torch.ones(n, S, S, device=dev, dtype=dt)
    points = torch.zeros(n, 1500, 3, device=dev, dtype=dt)
    points[..., 2] = 400.0
    target = FitTarget(camera, ones * 0.5, ones * 400.0, points,
                       torch.full((n,), 1500, device=dev, dtype=torch.long))
    params = fitter.model.neutral_parameters(n)
    params["transl"] = torch.tensor([0.0, 0.0, 400.0], device=dev, dtype=dt).expand(n, 3).clone()
    for v in params.values():
        v.requires_grad_(True)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    terms, _, _ = fitter.energy_terms(params, target, surface_terms=True)
    fitter.total(terms).sum().backward()
    per_frame = max((torch.cuda.max_memory_allocated(dev) - before) / n, 1.0)
    free, _ = torch.cuda.mem_get_info(dev)
    return int(max(1, min(limit, fraction * free // per_frame)))


# -- the run ---------------------------------------------------------------------------------
def _finished(out: Path, name: str) -> bool:
    return (out / name / "params.json").is_file()


def _error_file(out: Path, name: str) -> Path:
    return out / f"{name}.error.txt"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the initialized process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _Loader:
    """Reads a dataset item into an :class:`Observation` with its camera.

    The camera is the item's own file, else ``camera``, else the ``default_json`` file (a
    folder's ``camera.json``); cameras read from files are cached per file and image size.
    """

    def __init__(self, camera: Camera | None, default_json: Path | None, options: DatasetOptions):
        self.camera, self.default_json, self.options = camera, default_json, options
        self.cameras: dict = {}

    def __call__(self, item: DatasetItem) -> Observation:
        depth = read_depth(item.path, depth_scale=self.options.depth_scale, encoding=self.options.encoding)
        H, W = depth.shape
        camera, json_file = self.camera, item.camera_json
        if json_file is None and camera is None:
            json_file = self.default_json
        if json_file is not None:
            key = (json_file, W, H)
            if key not in self.cameras:
                self.cameras[key] = camera_from_args(width=W, height=H, camera_json=json_file)
            camera = self.cameras[key]
        if camera is None:
            raise InputError(f"{item.path.name}: no camera (give the intrinsics, a {FOLDER_CAMERA} in the folder, "
                             "or a camera file on its list line)")
        check_camera_matches(camera, depth)
        return Observation(depth=depth, camera=camera, name=item.name)


class _Prepared(Dataset):
    """Item ``i``: ``(item, observation, crop, None)``, or ``(item, None, None, reason)`` when the
    frame cannot be read or has no hand (so a worker never raises on a user's frame)."""

    def __init__(self, items: list[DatasetItem], load: _Loader, box_mm: float, working_size: int):
        self.items, self.load, self.box_mm, self.working_size = items, load, box_mm, working_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            obs = self.load(item)
            return item, obs, prepare(obs, self.box_mm, self.working_size), None
        except InputError as err:
            return item, None, None, str(err)


def fit_dataset(source: str | Path | list[DatasetItem], out_dir: str | Path, fitter: Fitter,
                camera: Camera | None = None, options: DatasetOptions | None = None,
                root: str | Path | None = None) -> DatasetReport:
    """Fit every frame of a dataset into ``out_dir`` in batches (see the module docstring).

    Args:
        source: a folder, a file list (:func:`list_dataset`) or a list of :class:`DatasetItem`.
        out_dir: the output folder: ``<name>/`` per finished frame (the files of
            ``options.files``), ``<name>.error.txt`` per failed frame, ``summary.csv`` and
            ``summary.json``.
        fitter: the :class:`~fitting.Fitter` (under torchrun, each rank's own, on its device).
        camera: the frames' camera (batch 1), for frames without their own camera file; a
            frame of another size fails. None: a folder source's ``camera.json``, if any.
        options: :class:`DatasetOptions`.
        root: a file list's root (see :func:`list_dataset`).

    Returns:
        this rank's :class:`DatasetReport`.

    Raises:
        InputError: a bad source (see :func:`list_dataset`) or an output folder that cannot
            be written (checked before any work).
    """
    options = options or DatasetOptions()
    items = source if isinstance(source, list) else list_dataset(source, root)
    out = check_output_dir(out_dir, "out_dir", results=False)
    rank, world = _distributed()
    done_before = {it.name for it in items if _finished(out, it.name)}
    failed_before = {it.name for it in items if it.name not in done_before and _error_file(out, it.name).is_file()}
    pending = [it for it in items if it.name not in done_before
               and (options.retry_failed or it.name not in failed_before)]
    _barrier()  # every rank has listed the same frames before any rank writes one
    mine = pending[rank::world]
    if options.max_frames is not None:
        mine = mine[: options.max_frames]
    batch_size = options.batch_size or auto_batch_size(fitter)
    folder_camera = Path(source) / FOLDER_CAMERA if not isinstance(source, list) and Path(source).is_dir() else None
    load = _Loader(camera, folder_camera if folder_camera is not None and folder_camera.is_file() else None, options)
    cfg = fitter.config
    fitted, failed = [], {}

    def fail(item: DatasetItem, err) -> None:
        failed[item.name] = str(err)
        _atomic_write(_error_file(out, item.name), f"{err}\n".encode())
        log.warning("failed: %s", err)  # the message names the frame

    workers = options.workers if options.workers is not None else (
        0 if fitter.device.type == "cpu" else min(4, max(1, (os.cpu_count() or 1) - 1)))
    # reading and segmenting (CPU) in DataLoader workers while the device fits; writing in a
    # thread while the next batch fits
    loader = DataLoader(_Prepared(mine, load, cfg.box_mm, cfg.working_size), batch_size=batch_size,
                        collate_fn=list, num_workers=workers)
    t0 = time.perf_counter()
    bar = tqdm(total=len(mine), desc=f"fit-dataset rank {rank}" if world > 1 else "fit-dataset", unit="frame",
               position=rank, disable=not options.progress)
    writes: list[Future] = []

    def save(result) -> str:
        result.save(out / result.name, files=options.files)
        _error_file(out, result.name).unlink(missing_ok=True)
        return result.name

    try:
        with ThreadPoolExecutor(max_workers=1) as writer:
            for batch in loader:
                for item, _, _, err in batch:
                    if err is not None:
                        fail(item, err)
                observations = [obs for _, obs, _, err in batch if err is None]
                if observations:
                    results = fitter.fit_crops([crop for _, _, crop, err in batch if err is None],
                                               observations=observations)
                    writes.extend(writer.submit(save, r) for r in results)
                # the previous batches' files are written while this one fitted
                while writes and (writes[0].done() or len(writes) > 2 * batch_size):
                    fitted.append(writes.pop(0).result())
                bar.update(len(batch))
            fitted.extend(w.result() for w in writes)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    _barrier()  # all ranks' frames are on disk
    summary = write_summary(items, out) if rank == 0 else None
    return DatasetReport(frames=len(items), fitted=fitted, failed=failed,
                         skipped=len(done_before) + (0 if options.retry_failed else len(failed_before)),
                         seconds=seconds, batch_size=batch_size, summary=summary)


#: The metrics of ``summary.csv``, in its column order (those a frame lacks are empty).
SUMMARY_METRICS = ("iou", "depth_mean_mm", "depth_median_mm", "mpjpe_mm", "keypoints_2d_error_px",
                   "penetration_max_mm", "iterations", "search_iterations", "nan_events", "seconds")


def write_summary(items: list[DatasetItem], out_dir: str | Path) -> dict:
    """Write ``summary.csv`` (one row per finished frame) and ``summary.json`` (means, failures).

    The frames' metrics are read back from their ``params.json``, so the summary covers
    every finished frame, whichever run or rank fitted it. Both files are replaced
    atomically.

    Returns:
        the ``summary.json`` document: ``frames``, ``finished``, ``failed`` (name -> reason),
        ``pending`` (how many are neither) and ``means`` (metric -> mean over finished frames,
        NaN values left out).
    """
    out = Path(out_dir)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["name", *SUMMARY_METRICS])
    sums = {k: 0.0 for k in SUMMARY_METRICS}
    counts = {k: 0 for k in SUMMARY_METRICS}
    finished, failed = 0, {}
    for item in items:
        if _finished(out, item.name):
            try:
                metrics = json.loads((out / item.name / "params.json").read_text())["metrics"]
            except (OSError, ValueError, KeyError) as err:
                failed[item.name] = f"unreadable params.json ({err})"
                continue
            finished += 1
            row = [item.name]
            for k in SUMMARY_METRICS:
                v = metrics.get(k)
                row.append("" if v is None else f"{v:.6g}")
                if isinstance(v, (int, float)) and math.isfinite(v):
                    sums[k] += v
                    counts[k] += 1
            writer.writerow(row)
        elif _error_file(out, item.name).is_file():
            failed[item.name] = _error_file(out, item.name).read_text(errors="replace").strip()[:500]
    means = {k: sums[k] / counts[k] for k in SUMMARY_METRICS if counts[k]}
    doc = {"frames": len(items), "finished": finished, "failed": failed,
           "pending": len(items) - finished - len(failed), "means": means}
    _atomic_write(out / SUMMARY_CSV, text.getvalue().encode())
    _atomic_write(out / SUMMARY_JSON, json.dumps(doc, indent=1).encode())
    return doc
