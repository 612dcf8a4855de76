"""Keypoint accuracy with the field's names: MPJPE, PCK, AUC; datasets' joint orders; readers.

Metrics (plain functions of tensors, millimetres):

- :func:`mpjpe`: mean per-joint position error, per frame (B,);
- :func:`pck_curve`: percentage (fraction) of correct keypoints in 3D at each threshold;
- :func:`auc`: area under the PCK curve, normalised by the threshold range;
- :func:`evaluate`: all of them over frames matched by name, in a dataset's joint order.

Joint orders: our 21 keypoints are :data:`hands.KEYPOINT_NAMES` (the OpenPose / FreiHAND
order); :data:`JOINT_MAPS` turns them into the joints of the ground truth (``"ours"``,
``"fpha"``, ``"nyu14"``), and :func:`load_joint_map` reads other maps from JSON.

Files (:func:`read_keypoint_frames`) are untrusted: their size is bounded before they are read,
``.npy``/``.npz`` are read without pickle and their declared shapes are checked first, nothing
outside the named file or folder is read, and every problem is an
:class:`fitting.errors.InputError` with a one-line message that names the file.

Ground truth and predictions must be in the same coordinate frame and in millimetres (for
example the depth camera's, OpenCV axes); nothing here aligns them (no root or Procrustes
alignment).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import numbers
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from hands import KEYPOINT_NAMES

from .errors import InputError
from .io import _read_json, natural_key

__all__ = [
    "DEFAULT_THRESHOLDS_MM",
    "JOINT_MAPS",
    "JointMap",
    "auc",
    "evaluate",
    "format_report",
    "load_joint_map",
    "map_joints",
    "mpjpe",
    "parse_thresholds",
    "pck_curve",
    "read_keypoint_frames",
    "write_csv",
]

#: PCK thresholds (mm) of :func:`evaluate` and ``handfit eval``: the 10 values 5, 10, ..., 50;
#: the AUC is the trapezoidal area over exactly these points, divided by 45 mm.
DEFAULT_THRESHOLDS_MM: tuple[float, ...] = tuple(float(t) for t in range(5, 51, 5))

#: Bounds on what a file may make us hold in memory.
MAX_TEXT_BYTES = 64 << 20    # .json, .txt, .csv files
MAX_ARRAY_BYTES = 256 << 20  # .npy files, and each array in an .npz
MAX_FRAMES = 200_000         # frames of one folder
MAX_JOINTS = 1000            # joints per frame
MAX_THRESHOLDS = 10_000

#: File types :func:`read_keypoint_frames` reads.
KEYPOINT_SUFFIXES = (".json", ".npy", ".npz", ".txt", ".csv")


# --- metrics ------------------------------------------------------------------------------


def _joint_errors(pred, gt, visible=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-joint errors (B, K) in mm (0 where not evaluated) and weights (B, K) >= 0."""
    pred, gt = torch.as_tensor(pred), torch.as_tensor(gt)
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred must have shape (B, K, 3), got {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt must have the shape of pred {tuple(pred.shape)}, got {tuple(gt.shape)}")
    dtype = torch.promote_types(torch.promote_types(pred.dtype, gt.dtype), torch.float32)
    pred, gt = pred.to(dtype), gt.to(device=pred.device, dtype=dtype)
    present = torch.isfinite(gt).all(-1)
    weight = present.to(dtype)
    if visible is not None:
        v = torch.as_tensor(visible, device=pred.device)
        if v.shape != present.shape:
            raise ValueError(f"visible must have shape (B, K) = {tuple(present.shape)}, got {tuple(v.shape)}")
        v = v.to(dtype)
        if not bool((torch.isfinite(v) & (v >= 0)).all()):
            raise ValueError("visible must hold booleans or finite weights >= 0")
        weight = weight * v
    zero = pred.new_zeros(())
    err = torch.where(present[..., None], pred - gt, zero).norm(dim=-1)
    return torch.where(weight > 0, err, zero), weight


def mpjpe(pred, gt, visible=None) -> torch.Tensor:
    """Mean per-joint position error of each frame, mm.

    ``MPJPE_b = sum_k w_bk ||pred_bk - gt_bk||_2 / sum_k w_bk``: the mean Euclidean distance
    between predicted and true 3D joints (the name of Ionescu et al., Human3.6M, TPAMI 2014;
    the "mean joint error" of hand-pose papers), without any alignment. Joints absent from the
    ground truth (any coordinate NaN) are left out; so are those with ``visible`` False or 0.

    Args:
        pred: (B, K, 3) predicted joints, mm.
        gt: (B, K, 3) true joints, mm; NaN marks a joint the ground truth does not have.
        visible: optional (B, K) bool, or weights >= 0 (a weighted mean).

    Returns:
        (B,) mm; NaN for a frame without any evaluated joint, and where a prediction of an
        evaluated joint is NaN.

    Raises:
        ValueError: shapes other than (B, K, 3) and (B, K), or negative / non-finite weights.

    >>> gt = torch.zeros(2, 21, 3)
    >>> mpjpe(gt + torch.tensor([3.0, 4.0, 0.0]), gt)
    tensor([5., 5.])
    """
    err, weight = _joint_errors(pred, gt, visible)
    return (weight * err).sum(-1) / weight.sum(-1)


def _pck_from_errors(err: torch.Tensor, weight: torch.Tensor, thresholds_mm) -> torch.Tensor:
    t = torch.as_tensor(thresholds_mm, dtype=err.dtype, device=err.device)
    if t.ndim != 1 or t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"thresholds_mm must be a non-empty 1-D list of finite mm values, got {t.tolist()}")
    keep = weight > 0
    e, w = err[keep], weight[keep]
    if w.numel() == 0:
        return torch.full_like(t, math.nan)
    e, order = torch.sort(torch.nan_to_num(e, nan=math.inf))  # a NaN prediction is never correct
    cum = torch.cat([w.new_zeros(1), w[order].cumsum(0)])
    return cum[torch.searchsorted(e, t, right=True)] / cum[-1]


def pck_curve(pred, gt, thresholds_mm, visible=None) -> torch.Tensor:
    """Percentage of correct keypoints in 3D: the fraction of joints within each threshold.

    ``PCK(t) = sum_bk w_bk [||pred_bk - gt_bk||_2 <= t] / sum_bk w_bk`` over all frames and
    joints together (Zimmermann & Brox, "Learning to Estimate 3D Hand Pose from Single RGB
    Images", ICCV 2017, Sec. 6), as a fraction in [0, 1]. Joints absent from the ground truth
    (NaN) or not ``visible`` are left out; a NaN prediction counts as incorrect.

    Args:
        pred, gt: (B, K, 3) mm, as in :func:`mpjpe`.
        thresholds_mm: (T,) thresholds, mm (any order).
        visible: optional (B, K) bool or weights >= 0.

    Returns:
        (T,) fractions; NaN if no joint is evaluated.

    Raises:
        ValueError: wrong shapes, non-finite thresholds, bad weights.

    >>> gt = torch.zeros(1, 2, 3)
    >>> pred = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 12.0]]])
    >>> pck_curve(pred, gt, [4.0, 5.0, 10.0, 20.0])
    tensor([0.0000, 0.5000, 0.5000, 1.0000])
    """
    err, weight = _joint_errors(pred, gt, visible)
    return _pck_from_errors(err, weight, thresholds_mm)


def auc(thresholds_mm, pck) -> float:
    """Area under the PCK curve, normalised by the threshold range: a number in [0, 1].

    ``AUC = integral_{t_0}^{t_{T-1}} PCK(t) dt / (t_{T-1} - t_0)`` by the trapezoidal rule over
    the given points, the way hand-pose papers report "AUC of PCK over 20-50 mm" (Zimmermann
    & Brox, ICCV 2017). The value depends on the points: ``handfit eval`` uses
    :data:`DEFAULT_THRESHOLDS_MM` (5, 10, ..., 50 mm); papers often integrate on a finer grid.

    Args:
        thresholds_mm: (T,) strictly increasing, finite, T >= 2, mm.
        pck: (T,) the PCK at those thresholds (:func:`pck_curve`).

    Returns:
        the normalised area: 1 for a perfect prediction, 0 for one beyond every threshold.

    Raises:
        ValueError: fewer than 2 thresholds, not strictly increasing or not finite, or a PCK of
            another length.

    >>> auc([5.0, 50.0], [1.0, 1.0])
    1.0
    >>> auc([0.0, 10.0, 20.0], [0.0, 0.5, 1.0])
    0.5
    """
    t = torch.as_tensor(thresholds_mm, dtype=torch.float64).cpu()
    p = torch.as_tensor(pck).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 2 or not bool(torch.isfinite(t).all()) or not bool((t.diff() > 0).all()):
        raise ValueError(f"thresholds_mm must be >= 2 finite, strictly increasing mm values, got {t.tolist()}")
    if p.shape != t.shape:
        raise ValueError(f"pck must have one value per threshold ({t.numel()}), got shape {tuple(p.shape)}")
    return float(torch.trapezoid(p, t) / (t[-1] - t[0]))


def parse_thresholds(spec=DEFAULT_THRESHOLDS_MM) -> tuple[float, ...]:
    """PCK thresholds (mm) from ``"START:STOP:STEP"`` (STOP included), ``"20,30,40,50"`` or numbers.

    Returns:
        (T,) strictly increasing thresholds >= 0, T >= 2, mm.

    Raises:
        InputError: text that is neither form, a step <= 0, fewer than 2 or more than
            ``MAX_THRESHOLDS`` values, negative or non-finite values, values not increasing.

    >>> parse_thresholds("20:50:10")
    (20.0, 30.0, 40.0, 50.0)
    """
    usage = "--thresholds must be START:STOP:STEP (mm, STOP included) or a comma list of mm values"
    if isinstance(spec, str):
        try:
            if ":" in spec:
                start, stop, step = (float(v) for v in spec.split(":"))
                if not (step > 0 and math.isfinite(start) and math.isfinite(stop)):
                    raise InputError(f"{usage}; got {spec!r} (the step must be > 0)")
                if stop < start:
                    raise InputError(f"{usage}; got {spec!r} (STOP is below START)")
                count = math.floor((stop - start) / step + 1e-9) + 1
                if count > MAX_THRESHOLDS:
                    raise InputError(f"{usage}; {spec!r} gives {count} thresholds, more than {MAX_THRESHOLDS}")
                values = [round(start + i * step, 9) for i in range(max(count, 0))]
            else:
                values = [float(v) for v in spec.split(",")]
        except ValueError as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{usage}; got {spec!r}") from err
    else:
        try:
            values = [float(v) for v in spec]
        except (TypeError, ValueError) as err:
            raise InputError(f"{usage}; got {spec!r}") from err
    if not 2 <= len(values) <= MAX_THRESHOLDS:
        raise InputError(f"{usage}; got {len(values)} value(s) from {spec!r}: the AUC needs at least 2")
    if not all(math.isfinite(v) and v >= 0 for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise InputError(f"{usage}; the thresholds must be finite, >= 0 and increasing, got {spec!r}")
    return tuple(values)


# --- joint orders -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JointMap:
    """How to build a dataset's joints from our 21 keypoints (:data:`hands.KEYPOINT_NAMES`).

    Attributes:
        name: the map's name (``"fpha"``, or a JSON file's path).
        joint_names: the dataset's D joint names, in its order.
        sources: for each dataset joint, the index of our keypoint (0..20), a tuple of indices
            whose mean it is, or None where our model has no counterpart (the joint is left
            out of every metric).

    Raises:
        ValueError: names and sources of different lengths, no joint, indices out of 0..20.
    """

    name: str
    joint_names: tuple[str, ...]
    sources: tuple[int | tuple[int, ...] | None, ...]

    def __post_init__(self):
        if not self.sources or len(self.joint_names) != len(self.sources):
            raise ValueError(f"joint map {self.name}: needs one source per joint name, got "
                             f"{len(self.joint_names)} names and {len(self.sources)} sources")
        for idx in self.indices:
            if not all(isinstance(i, int) and 0 <= i < len(KEYPOINT_NAMES) for i in idx):
                raise ValueError(f"joint map {self.name}: source indices must be 0..{len(KEYPOINT_NAMES) - 1}, got {idx}")

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def indices(self) -> tuple[tuple[int, ...], ...]:
        """For each dataset joint, the indices of our keypoints averaged into it (() = none)."""
        return tuple(() if s is None else (s,) if isinstance(s, int) else tuple(s) for s in self.sources)


def map_joints(keypoints, joint_map: JointMap | str) -> torch.Tensor:
    """Our keypoints in a dataset's joint order.

    Args:
        keypoints: (..., 21, 3) in :data:`hands.KEYPOINT_NAMES` order, mm.
        joint_map: a :class:`JointMap` or a name in :data:`JOINT_MAPS`.

    Returns:
        (..., D, 3) mm; NaN for joints without a counterpart in our model.

    Raises:
        ValueError: keypoints not of shape (..., 21, 3); InputError: an unknown map name.

    >>> kp = torch.arange(63.0).reshape(21, 3)
    >>> map_joints(kp, "fpha")[:3, 0]    # wrist, thumb and index MCP in FPHA's order
    tensor([ 0.,  3., 15.])
    """
    jm = load_joint_map(joint_map)
    kp = torch.as_tensor(keypoints)
    if kp.ndim < 2 or kp.shape[-2:] != (len(KEYPOINT_NAMES), 3):
        raise ValueError(f"keypoints must have shape (..., {len(KEYPOINT_NAMES)}, 3), got {tuple(kp.shape)}")
    kp = kp.to(torch.promote_types(kp.dtype, torch.float32))
    nan = torch.full_like(kp[..., 0, :], math.nan)
    return torch.stack([kp[..., list(idx), :].mean(-2) if idx else nan for idx in jm.indices], dim=-2)


def _fpha_map() -> JointMap:
    digits = {"T": "thumb", "I": "index", "M": "middle", "R": "ring", "P": "little"}
    # FPHA names the thumb's 4 points like a finger's (MCP, PIP, DIP, TIP): ours by chain position
    ours = {f"{d}{part}": KEYPOINT_NAMES.index(f"{digit}_{mine}")
            for d, digit in digits.items()
            for part, mine in zip(("MCP", "PIP", "DIP", "TIP"),
                                  ("cmc", "mcp", "ip", "tip") if d == "T" else ("mcp", "pip", "dip", "tip"))}
    names = ("Wrist",) + tuple(f"{d}MCP" for d in digits) + tuple(
        f"{d}{p}" for d in digits for p in ("PIP", "DIP", "TIP"))
    return JointMap("fpha", names, tuple(0 if n == "Wrist" else ours[n] for n in names))


def _nyu14_map() -> JointMap:
    k = KEYPOINT_NAMES.index
    names = ("P1", "P2", "R1", "R2", "M1", "M2", "I1", "I2", "T1", "T2", "T3", "W1", "W2", "C")
    sources = (k("little_tip"), k("little_pip"), k("ring_tip"), k("ring_pip"), k("middle_tip"), k("middle_pip"),
               k("index_tip"), k("index_pip"), k("thumb_tip"), k("thumb_ip"), k("thumb_mcp"),
               k("wrist"), k("wrist"), (k("wrist"), k("middle_mcp")))
    return JointMap("nyu14", names, sources)


#: Named joint maps: for each joint of a dataset, in the dataset's published order, the
#: keypoint of ours (:data:`hands.KEYPOINT_NAMES`) it is, or the keypoints it is the mean of.
#:
#: - ``"ours"``: the identity, for ground truth in our order (wrist; thumb CMC, MCP, IP, tip;
#:   then MCP, PIP, DIP, tip of the index, middle, ring and little fingers).
#: - ``"fpha"``: First-Person Hand Action benchmark (Garcia-Hernando et al., CVPR 2018), 21
#:   joints in the order of the dataset's README (github.com/guiggh/hand_pose_action, "Hand
#:   pose data"; also the HANDS 2017 challenge's order): Wrist, TMCP, IMCP, MMCP, RMCP, PMCP, then
#:   PIP, DIP, TIP of each digit in turn (TPIP, TDIP, TTIP, IPIP, IDIP, ITIP, MPIP, ..., PTIP),
#:   T, I, M, R, P = thumb, index, middle, ring, pinky. That is: wrist, the five MCPs, then
#:   each digit's remaining three joints digit by digit (not all PIPs, then all DIPs). FPHA
#:   names the thumb's four points like a finger's; by their position along the chain they are
#:   our thumb CMC (TMCP), MCP (TPIP), IP (TDIP) and tip (TTIP). A permutation of ours.
#: - ``"nyu14"``: the 14 joints of the NYU Hand Pose dataset (Tompson et al., ACM TOG 2014)
#:   that depth papers evaluate on, in the order and with the names of the DeepPrior
#:   evaluation code (Oberweger et al.): P1, P2, R1, R2, M1, M2, I1, I2 (tip and middle joint
#:   of the pinky, ring, middle and index fingers), T1, T2, T3 (thumb tip and two joints),
#:   W1, W2 (two points on the wrist), C (palm centre); NYU's 36 labels 0, 3, 6, 9, 12, 15,
#:   18, 21, 24, 25, 27, 30, 31, 32 (F1_KNU3_A, F1_KNU2_B, ..., TH_KNU3_A, TH_KNU3_B,
#:   TH_KNU2_B, PALM_1, PALM_2, PALM_3; F1 = pinky). The labels are sphere centres of
#:   Tompson's hand model, two per phalanx: KNU3 on the distal, KNU2 on the middle, KNU1 on
#:   the proximal phalanx, A towards the tip (KNU3_A is the tip, KNU1_B the base). We read
#:   KNUn_B as the joint at the phalanx's base: a finger's middle joint (KNU2_B) as our PIP,
#:   T2 (TH_KNU3_B) as the thumb IP, T3 (TH_KNU2_B) as the thumb MCP; the labels sit only
#:   near those joints. Our model has neither NYU's two wrist points nor its palm
#:   centre: W1 and W2 both map to our wrist keypoint (which lies between them, so their
#:   errors include about half the wrist's width) and C to the midpoint of our wrist and
#:   middle-finger MCP. These three are approximations: to leave them out, use a JSON map
#:   with ``null`` for them (see :func:`load_joint_map`).
JOINT_MAPS: dict[str, JointMap] = {
    "ours": JointMap("ours", tuple(KEYPOINT_NAMES), tuple(range(len(KEYPOINT_NAMES)))),
    "fpha": _fpha_map(),
    "nyu14": _nyu14_map(),
}


def _load_json(path: Path):
    """A JSON document of at most ``MAX_TEXT_BYTES``, or InputError naming the file."""
    _check_size(path, MAX_TEXT_BYTES)
    try:
        return _read_json(path, "file")
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from err
    except RecursionError as err:
        raise InputError(f"{path}: invalid JSON (nested too deeply)") from err
    except InputError:
        raise
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise InputError(f"{path}: invalid JSON ({str(err)[:80]})") from err


def load_joint_map(spec: JointMap | str | Path) -> JointMap:
    """A :class:`JointMap`: one of :data:`JOINT_MAPS` by name, or read from a JSON file.

    The file holds a list with one entry per ground-truth joint, in the ground truth's order:
    one of our keypoint names (``"index_tip"``) or indices (0..20), a list of them (the joint
    is their mean), or ``null`` (no counterpart in our model: left out of the metrics). The
    number of entries must equal the ground truth's joints per frame (:func:`evaluate` checks).
    Example, for a 4-joint ground truth: ``["wrist", 4, ["wrist", "middle_mcp"], null]``.

    Raises:
        InputError: an unknown name; a missing, oversized or invalid file; an entry that is an
            unknown keypoint name, an index out of 0..20 or anything else; no entries, or more
            than ``MAX_JOINTS``.

    >>> load_joint_map("nyu14").joint_names[:3]
    ('P1', 'P2', 'R1')
    """
    if isinstance(spec, JointMap):
        return spec
    if str(spec) in JOINT_MAPS:
        return JOINT_MAPS[str(spec)]
    path = Path(spec)
    if path.suffix.lower() != ".json":
        raise InputError(f"unknown joint map {str(spec)!r}; use one of {', '.join(JOINT_MAPS)} or a FILE.json")
    doc = _load_json(path)
    expected = ("a list with one entry per ground-truth joint: a keypoint name of hands.KEYPOINT_NAMES, "
                f"an index 0..{len(KEYPOINT_NAMES) - 1}, a list of them (their mean) or null")
    if not isinstance(doc, list) or not 1 <= len(doc) <= MAX_JOINTS:
        got = f"{len(doc)} entries" if isinstance(doc, list) else f"a JSON {type(doc).__name__}"
        raise InputError(f"{path}: a joint map must be {expected}; got {got}")

    def index(value, d: int) -> int:
        if isinstance(value, str):
            if value not in KEYPOINT_NAMES:
                raise InputError(f"{path}: entry {d}: unknown keypoint name {value!r}; the names are "
                                 f"{', '.join(KEYPOINT_NAMES)}")
            return KEYPOINT_NAMES.index(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(KEYPOINT_NAMES):
                raise InputError(f"{path}: entry {d}: index {value} is out of range 0..{len(KEYPOINT_NAMES) - 1}")
            return value
        raise InputError(f"{path}: entry {d}: expected a keypoint name, an index, a list of them or null, "
                         f"got {json.dumps(value)[:40]}")

    sources, names = [], []
    for d, entry in enumerate(doc):
        if entry is None:
            sources.append(None)
            names.append(f"joint{d}")
        elif isinstance(entry, list):
            if not entry:
                raise InputError(f"{path}: entry {d}: an empty list; give the keypoints to average, or null")
            sources.append(tuple(index(v, d) for v in entry))
            names.append("+".join(KEYPOINT_NAMES[i] for i in sources[-1]))
        else:
            sources.append(index(entry, d))
            names.append(KEYPOINT_NAMES[sources[-1]])
    return JointMap(str(path), tuple(names), tuple(sources))


# --- reading keypoints from files -----------------------------------------------------------


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _check_size(path: Path, limit: int) -> None:
    if not path.is_file():
        raise InputError(f"{path}: {'is not a regular file' if path.exists() else 'no such file'}")
    size = path.stat().st_size
    if size > limit:
        raise InputError(f"{path}: is {_size(size)}, more than the {_size(limit)} a keypoint file may have")


def _npy_header(fp, path: Path, what: str) -> None:
    """Check a .npy header (shape and dtype) before its data is read, so its size is bounded."""
    try:
        major, _ = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fp)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: {what} is not a valid .npy array ({str(err).splitlines()[0][:80]})") from err
    if dtype.hasobject:
        raise InputError(f"{path}: {what} holds Python objects; only numeric arrays are read (no pickle)")
    if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise InputError(f"{path}: {what} has shape {shape}, more than the {_size(MAX_ARRAY_BYTES)} an array may have")


def _load_npy(path: Path) -> np.ndarray:
    with path.open("rb") as fp:
        _npy_header(fp, path, "the array")
        fp.seek(0)
        try:
            return np.lib.format.read_array(fp, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"{path}: cannot read the .npy array ({str(err).splitlines()[0][:80]})") from err


def _load_npz(path: Path) -> tuple[np.ndarray, list | None]:
    """``keypoints`` (and ``names``, if there) of an .npz, each checked before it is read."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = {Path(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
            if "keypoints" not in members:
                raise InputError(f"{path}: has no 'keypoints' array (it has {', '.join(sorted(members)[:5]) or 'none'})")
            arrays = {}
            for key in ("keypoints", "names"):
                if key in members:
                    with zf.open(members[key]) as fp:
                        _npy_header(fp, path, f"the array {key!r}")
                    with zf.open(members[key]) as fp:
                        arrays[key] = np.lib.format.read_array(fp, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: cannot read the .npz file ({str(err).splitlines()[0][:80]})") from err
    names = arrays.get("names")
    if names is not None and (names.dtype.kind not in "US" or names.ndim != 1):
        raise InputError(f"{path}: 'names' must be a 1-D array of strings, got {names.dtype} of shape {names.shape}")
    return arrays["keypoints"], None if names is None else [str(n) for n in names.tolist()]


def _load_text(path: Path) -> np.ndarray:
    """K rows of 3 numbers (comma, semicolon or blank separated; ``#`` comments; one header line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: is not a text file of numbers ({err.reason})") from err
    rows, first = [], True
    for n, line in enumerate(text.splitlines(), 1):
        fields = [f for f in re.split(r"[\s,;]+", line.split("#")[0]) if f]
        if not fields:
            continue
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            if not first:  # only the first line may be a header (x, y, z)
                raise InputError(f"{path}: line {n}: expected 3 numbers x y z (mm), got {line.strip()[:40]!r}") from None
            continue
        finally:
            first = False
        if len(rows[-1]) != 3:
            raise InputError(f"{path}: line {n}: expected 3 numbers x y z (mm), got {len(rows[-1])}")
        if len(rows) > MAX_JOINTS:
            raise InputError(f"{path}: has more than {MAX_JOINTS} keypoint rows")
    if not rows:
        raise InputError(f"{path}: holds no keypoint rows (expected K lines of x y z in mm)")
    return np.array(rows)


def _json_array(doc, path: Path) -> np.ndarray:
    expected = "a list of K [x, y, z] rows in mm (or of N such lists)"
    try:
        obj = np.array(doc, dtype=object)
    except ValueError:
        obj = np.empty(0, dtype=object)
    if obj.ndim not in (2, 3) or obj.shape[-1] != 3 or 0 in obj.shape:
        raise InputError(f"{path}: keypoints must be {expected}; got {type(doc).__name__} of shape {obj.shape} "
                         "(rows of another length, or ragged lists)")
    ok = object()
    bad = next((v for v in obj.flat if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real))), ok)
    if bad is not ok:
        raise InputError(f"{path}: keypoints must be numbers (null for a joint the ground truth lacks); "
                         f"found {json.dumps(bad)[:40]}")
    try:
        return obj.astype(np.float64)
    except OverflowError as err:
        raise InputError(f"{path}: holds a number too large for a keypoint in mm") from err


def _read_file(path: Path, allow_missing: bool) -> dict[str, np.ndarray]:
    """The frames of one keypoint file: ``{name: (K, 3) float64}``."""
    suffix, names = path.suffix.lower(), None
    if suffix not in KEYPOINT_SUFFIXES:
        raise InputError(f"{path}: unknown keypoint file type {suffix or '(none)'!r}; use {', '.join(KEYPOINT_SUFFIXES)}")
    _check_size(path, MAX_ARRAY_BYTES if suffix in (".npy", ".npz") else MAX_TEXT_BYTES)
    if suffix == ".json":
        doc = _load_json(path)
        if isinstance(doc, dict):
            if "keypoints" not in doc:
                raise InputError(f"{path}: expected a list of keypoints or an object with a 'keypoints' list, "
                                 f"got an object with keys {', '.join(sorted(map(str, doc))[:5])}")
            if "keypoint_names" in doc and doc["keypoint_names"] != list(KEYPOINT_NAMES):
                raise InputError(f"{path}: 'keypoint_names' are not hands.KEYPOINT_NAMES in their order; give the "
                                 "keypoints in that order, or without keypoint_names and with --joints for their order")
            names, doc = doc.get("names"), doc["keypoints"]
        arr = _json_array(doc, path)
    elif suffix == ".npy":
        arr = _load_npy(path)
    elif suffix == ".npz":
        arr, names = _load_npz(path)
    else:
        arr = _load_text(path)

    if arr.dtype.kind not in "fiu":
        raise InputError(f"{path}: holds {arr.dtype} values; expected numbers (mm)")
    if arr.ndim not in (2, 3) or arr.shape[-1] != 3 or 0 in arr.shape:
        raise InputError(f"{path}: expected keypoints of shape (K, 3) or (N, K, 3) in mm, got shape {arr.shape}")
    if arr.shape[-2] > MAX_JOINTS or (arr.ndim == 3 and arr.shape[0] > MAX_FRAMES):
        raise InputError(f"{path}: has shape {arr.shape}: more than {MAX_JOINTS} joints or {MAX_FRAMES} frames")
    frames = arr.astype(np.float64).reshape(-1, *arr.shape[-2:])
    finite = np.isfinite(frames).all(-1)
    if np.isinf(frames).any():
        raise InputError(f"{path}: holds infinite values; expected keypoints in mm (NaN or null for a missing joint)")
    if not allow_missing and not finite.all():
        raise InputError(f"{path}: predicted keypoints must all be finite numbers; found NaN or null")
    if not finite.any(-1).all():
        where = f"frame {int(np.argmin(finite.any(-1)))} has" if arr.ndim == 3 else "has"
        raise InputError(f"{path}: {where} no finite keypoint (all NaN or null)")

    if arr.ndim == 2:
        return {path.absolute().parent.name if path.name == "params.json" else path.stem: frames[0]}
    if names is None:
        names = [str(i) for i in range(len(frames))]
    elif (not isinstance(names, list) or len(names) != len(frames) or len(set(map(str, names))) != len(names)
          or not all(isinstance(n, str) for n in names)):
        raise InputError(f"{path}: 'names' must be {len(frames)} distinct frame names, one per keypoint frame")
    return dict(zip(names, frames))


def read_keypoint_frames(path, allow_missing: bool = False) -> dict[str, torch.Tensor]:
    """Keypoints of frames from a file or folder, by frame name.

    What ``path`` may be:

    - a fit output folder (``params.json`` with ``"keypoints"``, 21 x 3 mm, and
      ``"keypoint_names"``): one frame named after the folder;
    - a folder of such folders (the ``fit-sequence`` output): a frame per subfolder with a
      ``params.json``; other files (``sequence.json``, ``shape.npz``, errors) and hidden
      folders (unfinished frames) are ignored;
    - any other folder: a frame per keypoint file, named by its stem (``0042.json`` is ``0042``);
    - a keypoint file: ``.json`` (a list of K [x, y, z] rows, or an object with ``"keypoints"``
      and optionally ``"keypoint_names"``, which must then be :data:`hands.KEYPOINT_NAMES`),
      ``.npy`` (K, 3), ``.npz`` with ``keypoints`` (K, 3), or ``.txt``/``.csv`` with K rows
      ``x y z`` (or ``x,y,z``; ``#`` comments and one header line allowed): one frame named
      by the stem (``params.json``: by its folder); or several frames: ``.npy``/``.npz``
      (N, K, 3), or ``.json`` N lists of K rows, named by ``"names"`` (a JSON list, or an
      ``.npz`` string array ``names``) or else by their index ``"0"`` .. ``"N-1"``.

    Values are millimetres. With ``allow_missing`` (ground truth), NaN (``null`` in JSON,
    ``nan`` in text) marks a joint the frame does not have.

    Args:
        path: the file or folder.
        allow_missing: accept NaN joints (ground truth); predictions must be finite.

    Returns:
        ``{frame name: (K, 3) float64 tensor, mm}`` in natural order of names.

    Raises:
        InputError: naming the file: missing; of an unknown type; larger than
            ``MAX_TEXT_BYTES``/``MAX_ARRAY_BYTES``; not JSON, not numbers, a pickle or object
            array; of the wrong shape; infinite values, NaN in predictions, a frame with no
            finite keypoint; a folder's file holding several frames; two files for one frame;
            an entry that links outside the folder; a folder without any frame or with more
            than ``MAX_FRAMES``.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "0007.txt").write_text("0 0 400\\n10 0 400\\n")
    >>> read_keypoint_frames(folder)["0007"].shape
    torch.Size([2, 3])
    """
    path, frames = Path(path), {}
    try:
        if path.is_dir():
            entries = [path] if (path / "params.json").is_file() else sorted(
                (p for p in path.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))
            fits = [p / "params.json" for p in entries if p.is_dir() and (p / "params.json").is_file()]
            files = fits or [p for p in entries if p.is_file() and p.suffix.lower() in KEYPOINT_SUFFIXES]
            if not files:
                raise InputError(f"{path}: holds neither fit output folders (with params.json) nor keypoint files "
                                 f"({', '.join(KEYPOINT_SUFFIXES)})")
            if len(files) > MAX_FRAMES:
                raise InputError(f"{path}: holds {len(files)} frames, more than {MAX_FRAMES}")
            root = path.resolve()
            for f in files:
                if not f.resolve().is_relative_to(root):
                    raise InputError(f"{f}: links outside {path}; not read (give the files' own folder)")
        elif path.exists():
            files = [path]
        else:
            raise InputError(f"{path}: no such file or folder")
        for f in files:
            got = _read_file(f, allow_missing)
            if len(files) > 1 and len(got) != 1:
                raise InputError(f"{f}: holds {len(got)} frames; each file of a folder must hold one frame (K, 3)")
            for name, kp in got.items():
                if name in frames:
                    raise InputError(f"{f}: frame {name!r} is given twice")
                frames[name] = kp
    except OSError as err:
        raise InputError(f"{getattr(err, 'filename', None) or path}: cannot read ({err.strerror or err})") from err
    return {n: torch.from_numpy(frames[n]) for n in sorted(frames, key=natural_key)}


# --- evaluation -----------------------------------------------------------------------------


def _some(names, limit: int = 3) -> str:
    names = sorted(names, key=natural_key)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "none"


def evaluate(pred_frames: Mapping[str, torch.Tensor], gt_frames: Mapping[str, torch.Tensor],
             joint_map: JointMap | str = "ours", thresholds_mm=DEFAULT_THRESHOLDS_MM) -> dict:
    """MPJPE, PCK and AUC of predicted keypoints against ground truth, frames matched by name.

    The predictions (our 21 keypoints) are put in the ground truth's joint order with
    ``joint_map`` (:func:`map_joints`); joints the ground truth lacks (NaN) or that our model
    has no counterpart of are left out. Frames are matched by name; if each side holds exactly
    one frame they are compared whatever their names. Frames on one side only are listed,
    not scored.

    Args:
        pred_frames: ``{name: (21, 3)}`` :data:`hands.KEYPOINT_NAMES` order, mm.
        gt_frames: ``{name: (D, 3)}`` in the joint map's order, mm, NaN = absent joint.
        joint_map: a :class:`JointMap`, a name in :data:`JOINT_MAPS` or a JSON file.
        thresholds_mm: PCK thresholds (:func:`parse_thresholds`), default 5, 10, ..., 50.

    Returns:
        a dict: ``frames`` (matched names, natural order), ``missing_predictions`` (ground-truth
        frames without a prediction), ``missing_ground_truth`` (the reverse), ``joint_map``,
        ``joint_names`` (D), ``per_frame_mpjpe_mm`` ({frame: mm}), ``per_joint_mpjpe_mm``
        ({joint: mm}), ``mpjpe_mm`` (mean over all evaluated joints of all frames),
        ``median_mpjpe_mm`` (median over frames of the per-frame MPJPE), ``num_joints``
        (evaluated joint positions), ``thresholds_mm``, ``pck`` (fractions), ``auc`` (over the
        thresholds' range) and ``joint_errors_mm`` ((N, D) tensor, NaN where not evaluated).

    Raises:
        InputError: no frame in common; a prediction not (21, 3); a ground-truth frame whose
            joint count differs from the map's; bad thresholds or joint map.

    >>> gt = {"f0": torch.zeros(21, 3), "f1": torch.zeros(21, 3)}
    >>> pred = {"f0": torch.zeros(21, 3) + torch.tensor([3.0, 4.0, 0.0]), "f2": torch.zeros(21, 3)}
    >>> r = evaluate(pred, gt)
    >>> r["frames"], r["missing_predictions"], r["mpjpe_mm"], r["auc"]
    (['f0'], ['f1'], 5.0, 1.0)
    """
    jm = load_joint_map(joint_map)
    thresholds = parse_thresholds(thresholds_mm)
    if len(pred_frames) == 1 and len(gt_frames) == 1:
        (pname, p), (_, g) = next(iter(pred_frames.items())), next(iter(gt_frames.items()))
        pred_frames, gt_frames = {pname: p}, {pname: g}
    names = sorted(set(pred_frames) & set(gt_frames), key=natural_key)
    if not names:
        raise InputError(f"no frame is in both the predictions ({_some(pred_frames)}) and the ground truth "
                         f"({_some(gt_frames)}); frames are matched by name")
    preds, gts = [], []
    for n in names:
        p = torch.as_tensor(pred_frames[n], dtype=torch.float64).cpu()
        g = torch.as_tensor(gt_frames[n], dtype=torch.float64).cpu()
        if p.shape != (len(KEYPOINT_NAMES), 3):
            raise InputError(f"prediction {n!r} has shape {tuple(p.shape)}; expected the {len(KEYPOINT_NAMES)} "
                             "keypoints (21, 3) of hands.KEYPOINT_NAMES in mm (--joints maps them to the ground truth's)")
        if g.ndim != 2 or g.shape != (len(jm), 3):
            raise InputError(f"ground truth {n!r} has shape {tuple(g.shape)} but the joint map {jm.name} has "
                             f"{len(jm)} joints; give the map of the ground truth's joint order with --joints")
        preds.append(p)
        gts.append(g)
    gt = torch.stack(gts)
    available = torch.tensor([bool(idx) for idx in jm.indices]).expand(len(names), -1)
    err, weight = _joint_errors(map_joints(torch.stack(preds), jm), gt, available)
    per_frame = (weight * err).sum(1) / weight.sum(1)
    per_joint = (weight * err).sum(0) / weight.sum(0)
    pck = _pck_from_errors(err, weight, thresholds)
    return {
        "frames": names,
        "missing_predictions": sorted(set(gt_frames) - set(pred_frames), key=natural_key),
        "missing_ground_truth": sorted(set(pred_frames) - set(gt_frames), key=natural_key),
        "joint_map": jm.name,
        "joint_names": list(jm.joint_names),
        "per_frame_mpjpe_mm": dict(zip(names, per_frame.tolist())),
        "per_joint_mpjpe_mm": dict(zip(jm.joint_names, per_joint.tolist())),
        "mpjpe_mm": float((weight * err).sum() / weight.sum()),
        "median_mpjpe_mm": (float(np.nanmedian(per_frame.numpy())) if bool(torch.isfinite(per_frame).any())
                            else math.nan),
        "num_joints": int((weight > 0).sum()),
        "thresholds_mm": list(thresholds),
        "pck": pck.tolist(),
        "auc": auc(thresholds, pck),
        "joint_errors_mm": torch.where(weight > 0, err, math.nan),
    }


def format_report(result: dict) -> str:
    """The text ``handfit eval`` prints for a result of :func:`evaluate`."""
    t, pck = result["thresholds_mm"], result["pck"]
    lines = [f"frames: {len(result['frames'])} evaluated ({result['num_joints']} joint positions, joint map "
             f"{result['joint_map']}: {len(result['joint_names'])} joints); "
             f"{len(result['missing_predictions'])} without a prediction"
             + (f" ({_some(result['missing_predictions'])})" if result["missing_predictions"] else "")
             + f", {len(result['missing_ground_truth'])} without ground truth"
             + (f" ({_some(result['missing_ground_truth'])})" if result["missing_ground_truth"] else ""),
             f"MPJPE: mean {result['mpjpe_mm']:.2f} mm, median over frames {result['median_mpjpe_mm']:.2f} mm"]
    for start in range(0, len(t), 10):
        lines.append(("PCK: " if start == 0 else "     ")
                     + ", ".join(f"{v:g} mm {p:.3f}" for v, p in zip(t[start:start + 10], pck[start:start + 10])))
    lines.append(f"AUC of PCK over {t[0]:g}-{t[-1]:g} mm: {result['auc']:.3f} (trapezoidal, {len(t)} thresholds)")
    return "\n".join(lines)


def write_csv(result: dict, path) -> None:
    """Per-frame errors of a result of :func:`evaluate` as CSV: ``frame, mpjpe_mm, <joint>_mm, ...``.

    Raises:
        InputError: the file cannot be written.
    """
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["frame", "mpjpe_mm", *(f"{j}_mm" for j in result["joint_names"])])
            for name, row in zip(result["frames"], result["joint_errors_mm"].tolist()):
                writer.writerow([name, f"{result['per_frame_mpjpe_mm'][name]:.3f}", *(f"{e:.3f}" for e in row)])
    except OSError as err:
        raise InputError(f"{path}: cannot write the CSV ({err.strerror or err})") from err
