"""Hand segmentation in a depth frame and the hand-centred crop the fitter works in.

Segmentation (:func:`segment_hand`)
-----------------------------------
The hand is the nearest sizeable surface, limited to a depth band behind its nearest point,
with the forearm cut at the wrist:

1. Pixels with depth in ``[near_mm, far_mm]`` are *valid*. A pixel whose 3x3 neighbourhood
   spans more than ``jump_mm`` of depth lies on a depth discontinuity and connects nothing,
   so a hand held in front of the body separates from the body; the rest splits into
   *surfaces* (8-connected components).
2. Surfaces with at least ``min_pixels`` pixels and ``min_area_mm2`` of area are tried
   nearest first (by their 1st-percentile depth ``z_near``, which ignores flying pixels).
   Isolated speckle never forms such a surface, so it cannot pull the band forward.
3. The surface is limited to ``[.., z_near + band_mm]`` and its connected part with the
   nearest points is kept. Then: the outline pixels that step 1 removed are given back
   when their depth continues the blob's; smaller surfaces that touch the blob and lie in
   front of it (fingers curled over the palm, a thumb tip) are attached; small holes (and
   holes where the sensor measured nothing) are filled.
4. The forearm is cut. A blob that runs along the frame's border (at least
   :data:`BORDER_ENTRY_MM`) has its forearm enter there, from any border (a head-mounted
   camera sees it from the bottom, a third-person one from the side): it is cut where its
   width profile along the principal axis, from the border end, widens into the palm
   (:func:`cut_forearm_at_border`); that cut is the wrist (:class:`ForearmCut`), which the
   initialization uses. Other blobs are cut by :func:`cut_forearm_mask`.
5. Every candidate (the ``max_candidates`` nearest surfaces) is judged
   (:class:`BlobCandidate`): rejected when its area after the cut lies outside
   ``[min_area_mm2, max_area_mm2]``, when it still runs along the border for 40 mm or more
   (the body, a table's edge: no hand-sized end away from the border), when its palm width
   or depth extent is not a hand's; the others are ranked by a hand-likeness score (area,
   palm width, depth extent), the nearest first among equal scores. If none qualifies, the
   nearest blob is returned. :func:`segment_hand` with ``return_info=True`` gives every
   candidate and why it won or lost (``handfit fit --debug-segmentation`` draws them).
6. Where a forearm was cut, :func:`prepare` separates a held object from the hand
   (:func:`fitting.held_object.separate_held_object`: large smooth planes and cylinders clear
   of the wrist); its pixels become the crop's ``occluder_depth``.

Crop (:func:`crop_hand`)
------------------------
A square around the hand's 3D centroid whose side is the projection of a ``box_mm`` cube at
the centroid's depth (as DeepHPS crops), resampled to ``out_size`` pixels exactly as
:meth:`renderers.Camera.crop` describes, so the crop's camera is the frame's camera with a
scaled focal length and a shifted principal point.

All depths and lengths are in millimetres; images are indexed ``[row, col] = [v, u]``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from renderers import Camera

from .errors import InputError, NoHandFoundError

__all__ = [
    "BlobCandidate",
    "ForearmCut",
    "HandCrop",
    "Segmentation",
    "cut_forearm_at_border",
    "hand_likeness",
    "check_depth_scale",
    "crop_hand",
    "cut_forearm_mask",
    "segment_hand",
]

_EIGHT = np.ones((3, 3), dtype=bool)

#: Without a camera, areas in mm^2 assume this focal length in units of the image width
#: (0.75 W is a horizontal field of view of about 67 degrees, typical of depth sensors).
_NOMINAL_FOCAL_PER_WIDTH = 0.75


# ----------------------------------------------------------------------------- helpers
def _depth_numpy(depth, name: str = "depth") -> np.ndarray:
    """(H, W) tensor or array -> float32 numpy, validated."""
    if isinstance(depth, torch.Tensor):
        arr = depth.detach().cpu().numpy()
    elif isinstance(depth, np.ndarray):
        arr = depth
    else:
        raise InputError(f"{name} must be an (H, W) tensor of millimetres, got {type(depth).__name__}")
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D (H, W) image in mm, got shape {tuple(arr.shape)}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} must be finite (mm, 0 = no measurement); it holds NaN or inf")
    return arr


def _focal_lengths(camera: Camera | None, shape: tuple[int, int]) -> tuple[float, float]:
    """(fx, fy) in px of a batch-1 camera matching ``shape`` = (H, W), or the nominal guess."""
    H, W = shape
    if camera is None:
        f = _NOMINAL_FOCAL_PER_WIDTH * W
        return f, f
    if not isinstance(camera, Camera):
        raise InputError(f"camera must be a renderers.Camera, got {type(camera).__name__}")
    if camera.batch_size != 1:
        raise InputError(f"camera must have batch size 1, got {camera.batch_size}")
    if (camera.height, camera.width) != (H, W):
        raise InputError(f"the camera is for a {camera.width}x{camera.height} image but the depth "
                         f"frame is {W}x{H}")
    return float(camera.fx[0]), float(camera.fy[0])


def _format_mm(mm: float) -> str:
    """A distance in mm written with a readable unit: '612 mm', '5.6 m', '4,200 m'."""
    if mm < 1000:
        return f"{mm:.3g} mm" if mm < 10 else f"{mm:,.0f} mm"
    if mm < 100_000:
        return f"{mm / 1000:.1f} m"
    if mm < 1e9:
        return f"{mm / 1000:,.0f} m"
    return f"{mm / 1e6:,.0f} km"


_SCALE_HINT = ("is --depth-scale right? (it is millimetres per depth unit; "
               "SR305 frames need 0.125)")


def check_depth_scale(depth: torch.Tensor, low_mm: float = 10.0, high_mm: float = 20_000.0) -> None:
    """Raise when the valid depths are not plausibly millimetres (a wrong depth scale).

    Args:
        depth: (H, W) mm, 0 = no measurement.
        low_mm, high_mm: a median valid depth outside this range means the values are not
            millimetres (no depth sensor sees a scene 20 m away, nor one 1 cm away).

    Raises:
        NoHandFoundError: the frame has no valid (non-zero) pixel.
        InputError: the median valid depth is outside ``[low_mm, high_mm]``; the message gives
            the nearest surface's distance and suggests checking ``--depth-scale``.
    """
    d = _depth_numpy(depth)
    valid = d[d > 0]
    if valid.size == 0:
        raise NoHandFoundError("the depth frame has no valid pixel (all zero)")
    median = float(np.median(valid))
    if not low_mm <= median <= high_mm:
        nearest = float(np.percentile(valid, 1.0))
        raise InputError(f"the nearest surface is {_format_mm(nearest)} away (median depth "
                         f"{_format_mm(median)}); {_SCALE_HINT}")


def _depth_spread(d: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Max minus min valid depth in each pixel's 3x3 neighbourhood (mm); 0 where alone."""
    hi = ndimage.maximum_filter(np.where(valid, d, -np.inf), size=3)
    lo = ndimage.minimum_filter(np.where(valid, d, np.inf), size=3)
    return np.where(valid, hi - lo, np.inf)


def _near_depth(z: np.ndarray) -> float:
    """Robust nearest depth of a set of depths: the 1st percentile (ignores flying pixels)."""
    return float(np.percentile(z, 1.0))


def _nearest_part(mask: np.ndarray, depth: np.ndarray, pixel_area: np.ndarray,
                  min_pixels: int, min_area: float) -> np.ndarray | None:
    """The connected part of ``mask`` (at least ``min_pixels`` px and ``min_area`` mm^2)
    whose 1st-percentile depth is nearest; None if no part is that large."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return None
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(mask, labels, index)
    areas = ndimage.sum_labels(pixel_area, labels, index)
    ok = (sizes >= min_pixels) & (areas >= min_area)
    if not ok.any():
        return None
    near = np.full(count, np.inf)
    for k in index[ok]:
        near[k - 1] = _near_depth(depth[labels == k])
    return labels == index[np.argmin(near)]


def _give_back_outline(blob: np.ndarray, d: np.ndarray, valid: np.ndarray, surfaces: np.ndarray,
                       jump_mm: float) -> np.ndarray:
    """Add discontinuity pixels (``surfaces == 0``) next to ``blob`` whose depth is within
    ``jump_mm`` of a neighbouring blob pixel's (the blob's own outline, not the background)."""
    lo = ndimage.minimum_filter(np.where(blob, d, np.inf), size=3)
    hi = ndimage.maximum_filter(np.where(blob, d, -np.inf), size=3)
    ring = valid & (surfaces == 0) & ~blob & (d >= lo - jump_mm) & (d <= hi + jump_mm)
    return blob | ring


def _attach_front_parts(blob: np.ndarray, d: np.ndarray, valid: np.ndarray, surfaces: np.ndarray,
                        pixel_area: np.ndarray, jump_mm: float, rounds: int = 3) -> np.ndarray:
    """Attach surfaces that touch ``blob`` (within 2 px) and lie in front of it.

    A surface is attached when its median depth is at most ``jump_mm`` behind the median depth
    of the blob pixels around it and its area is at most half the blob's: fingers curled in
    front of the palm, separated from it by a depth step. The discontinuity pixels between
    them and the blob (flying or unmeasured pixels, not the background) are attached too, so
    that the blob stays connected.
    """
    for _ in range(rounds):
        near_blob = ndimage.binary_dilation(blob, structure=_EIGHT, iterations=2)
        touching = np.unique(surfaces[near_blob & ~blob & (surfaces > 0)])
        blob_area = float(pixel_area[blob].sum())
        added = False
        for k in touching:
            part = (surfaces == k) & ~blob
            if not part.any() or float(pixel_area[part].sum()) > 0.5 * blob_area:
                continue
            around = blob & ndimage.binary_dilation(part, structure=_EIGHT, iterations=3)
            if not around.any():
                continue
            if float(np.median(d[part])) <= float(np.median(d[around])) + jump_mm:
                lo = min(float(d[part].min()), float(d[around].min())) - jump_mm
                hi = float(np.median(d[around])) + jump_mm
                gap = ((surfaces == 0) & ~(valid & ((d < lo) | (d > hi)))
                       & ndimage.binary_dilation(part, structure=_EIGHT, iterations=2)
                       & near_blob)
                blob = blob | part | gap
                added = True
        if not added:
            break
    return blob


def _fill_small_holes(blob: np.ndarray, valid_any: np.ndarray, z_ref: float, fx: float, fy: float,
                      hole_mm2: float, dropout_mm2: float) -> np.ndarray:
    """Fill holes of ``blob`` smaller than ``hole_mm2``, or (mostly unmeasured, i.e. sensor
    dropouts on the hand) smaller than ``dropout_mm2``; areas at depth ``z_ref`` mm."""
    holes = ndimage.binary_fill_holes(blob) & ~blob
    if not holes.any():
        return blob
    labels, count = ndimage.label(holes, structure=_EIGHT)
    index = np.arange(1, count + 1)
    px_area = (z_ref / fx) * (z_ref / fy)
    area = ndimage.sum_labels(holes, labels, index) * px_area
    measured = ndimage.mean(valid_any, labels, index)
    fill = (area <= hole_mm2) | ((measured <= 0.2) & (area <= dropout_mm2))
    return blob | np.isin(labels, index[fill])


def _border_contact_mm(mask: np.ndarray, depth: np.ndarray, fx: float) -> float:
    """Length (mm) along which a blob touches the frame's border."""
    edge = np.zeros_like(mask)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    return float((depth[mask & edge] / fx).sum())


# ----------------------------------------------------------------------------- forearm
def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else None


def cut_forearm_mask(mask, depth, camera: Camera | None = None, return_info: bool = False):
    """Remove the forearm from a hand(+forearm) blob. Scale-free: lengths are in units of the
    palm radius ``r``, so no camera is needed.

    1. Palm: the palm centre ``c`` is the blob's pixel deepest inside it (maximum of the
       Euclidean distance transform, EDT) and the EDT there, ``r`` (px), the palm's
       half-width.
    2. Fingers and core: the blob's morphological opening by a disc of radius ``0.5 r`` (the
       *core*) keeps the palm and the forearm (about ``0.65 r`` thick) and drops the fingers
       (about ``0.25 r``). The blob minus the core, farther than ``1.2 r`` from ``c``, is the
       fingers (and thumb); their mean direction from ``c`` is the fingers' direction ``f``.
    3. Forearm: the core's parts farther than ``1.3 r`` from ``c`` (8-connected) are forearm
       candidates; the largest one on the side away from the fingers (direction from ``c`` to
       it at more than 90 degrees from ``f``) is the forearm; without fingers, the largest
       one of at least ``0.3 r^2`` pixels. Its mean direction from ``c`` is the forearm
       direction ``a``. Without a forearm candidate nothing is cut.
    4. Wrist: along ``a`` the blob's width (within ``1.6 r`` of the axis) falls from the
       palm's to the forearm's. The heel of the palm is where it first comes within
       ``0.12 r`` of the forearm's width (the median width between ``1.6 r`` and ``2.5 r``,
       ending ``0.3 r`` before the forearm's visible end), searched from ``1.0 r`` to
       ``1.6 r``; the wrist joint, where hand models end, lies ``0.2 r`` further (clipped to
       ``[1.2 r, 1.6 r]``). Without a forearm long enough to measure, the wrist is at
       ``1.3 r``. (On SR305 frames, fits reach a higher silhouette IoU with this cut than
       with one at the heel.) The parts of the blob beyond the wrist along ``a`` that
       overlap the forearm are removed; anything else beyond it (a thumb or a finger
       crossing the line) stays.

    Args:
        mask: (H, W) bool blob (tensor or array).
        depth: (H, W) mm, 0 = no measurement (only validated; the cut works in the image).
        camera: unused (accepted for symmetry with :func:`segment_hand`).
        return_info: also return a dict: ``palm_uv`` (col, row) px, ``palm_radius_px``,
            ``fingers_dir`` and ``forearm_dir`` (unit (du, dv) or None) and ``wrist_px``
            (the cut's distance from the palm centre, px, or None).

    Returns:
        (H, W) bool numpy array, the connected part containing the palm centre (and the
        info dict when ``return_info``).
    """
    mask = np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask, bool)
    _depth_numpy(depth)
    info = {"palm_uv": None, "palm_radius_px": 0.0, "fingers_dir": None, "forearm_dir": None,
            "wrist_px": None}
    if mask.sum() < 10:
        return (mask, info) if return_info else mask
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r0, c0 = np.unravel_index(np.argmax(dist), dist.shape)
    r = float(dist[r0, c0])
    info.update(palm_uv=(int(c0), int(r0)), palm_radius_px=r)
    rows, cols = np.nonzero(mask)
    off = np.stack([cols - c0, rows - r0], 1).astype(np.float64)
    radial = np.hypot(off[:, 0], off[:, 1])
    unit_off = off / np.maximum(radial, 1e-9)[:, None]

    # 2. core (palm + forearm) = opening by a disc of radius 0.5 r; the rest are fingers
    rho = 0.5 * r
    seeds = dist >= rho
    core = mask & (ndimage.distance_transform_edt(~seeds) <= rho) if seeds.any() else mask.copy()
    in_core = core[rows, cols]
    fingers = ~in_core & (radial > 1.2 * r)
    fdir = _unit(unit_off[fingers].sum(0)) if fingers.sum() >= max(10.0, 0.1 * r * r) else None
    if fdir is not None:
        info["fingers_dir"] = (float(fdir[0]), float(fdir[1]))

    # 3. the forearm: the largest core part beyond 1.3 r away from the fingers
    far_core = np.zeros_like(mask)
    sel = in_core & (radial > 1.3 * r)
    far_core[rows[sel], cols[sel]] = True
    labels, count = ndimage.label(far_core, structure=_EIGHT)
    forearm = None
    if count:
        index = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(far_core, labels, index)
        best = 0.0
        for k in index:
            part = labels[rows, cols] == k
            adir = _unit(unit_off[part].sum(0))
            if adir is None:
                continue
            if fdir is not None:
                ok = float(adir @ fdir) < 0.0
            else:
                ok = sizes[k - 1] >= 0.3 * r * r
            if ok and sizes[k - 1] > best:
                best, forearm, direction = sizes[k - 1], k, adir
    if forearm is None:
        return (mask, info) if return_info else mask

    # 4. the wrist: where the width along the axis reaches the forearm's
    along = off @ direction
    across = np.abs(off @ np.array([-direction[1], direction[0]]))
    near_axis = across <= 1.6 * r
    ts = np.arange(1.0, 2.51, 0.05) * r
    widths = np.array([np.count_nonzero(near_axis & (np.abs(along - t) <= 0.5)) for t in ts])
    end = float(along.max()) - 0.3 * r  # the forearm's end tapers where it leaves the band
    plateau = widths[(ts >= 1.6 * r) & (ts <= end)]
    wrist = 1.3 * r
    if plateau.size >= 4 and (plateau > 0).all():
        level = float(np.median(plateau)) + 0.12 * r
        hits = np.nonzero((widths <= level) & (ts <= 1.6 * r))[0]
        if hits.size:
            wrist = float(np.clip(ts[hits[0]] + 0.2 * r, 1.2 * r, 1.6 * r))
    info.update(forearm_dir=(float(direction[0]), float(direction[1])), wrist_px=wrist)

    beyond = np.zeros_like(mask)
    beyond[rows[along > wrist], cols[along > wrist]] = True
    blabels, bcount = ndimage.label(beyond, structure=_EIGHT)
    if bcount:
        hit = np.unique(blabels[(labels == forearm) & beyond])
        out = mask & ~np.isin(blabels, hit[hit > 0])
    else:
        out = mask
    labels, _ = ndimage.label(out, structure=_EIGHT)
    if labels[r0, c0]:
        out = labels == labels[r0, c0]
    return (out, info) if return_info else out


# ----------------------------------------------------------------------------- forearm from a border
#: A blob that runs along the frame's border for at least this long (mm) has its forearm
#: enter there; it is cut by its width profile (:func:`cut_forearm_at_border`).
BORDER_ENTRY_MM = 15.0
#: The palm starts where the blob's width exceeds the forearm's by this factor (and by at
#: least :data:`PALM_WIDENING_MM`): a forearm near the wrist is 50-65 mm wide, a palm 75-95 mm
#: (adults, e.g. ANSUR II wrist breadth and hand breadth), so the ratio is 1.25-1.6; 1.15 is
#: clear of the noise of one row of pixels and of a forearm that tapers towards the wrist.
PALM_WIDENING = 1.15
PALM_WIDENING_MM = 8.0
#: The wrist joint lies this far (mm) before the point where the width profile has widened
#: into the palm, on the forearm's side (the palm widens gradually: seen from the thumb side
#: its width passes the threshold 25-45 mm beyond the joint; measured on synthetic egocentric
#: frames of the default hand, ``bench/fit_egocentric.py``).
WRIST_BEFORE_PALM_MM = 34.0
#: The wrist joint lies about half a wrist's thickness (35-40 mm in adults) behind the
#: visible surface; the cut's 3D point is pushed back along the viewing ray by this (mm).
WRIST_DEPTH_MM = 20.0


@dataclasses.dataclass
class ForearmCut:
    """Where a forearm was cut off a hand blob: the wrist.

    Attributes:
        point_uv: (col, row) px in the frame, the centre of the cut line.
        direction_uv: unit (du, dv), from the cut towards the forearm (the border).
        point_mm: (3,) camera coordinates, mm: the cut line's centre on the surface pushed
            back along the viewing ray by :data:`WRIST_DEPTH_MM` (the wrist joint lies
            inside the wrist, not on its surface).
        forearm_width_mm: the forearm's width measured before the palm (mm).
        palm_width_mm: the width where the palm begins (mm).
        forearm_width_px: the forearm's width in the image at the cut (px).
    """

    point_uv: tuple[float, float]
    direction_uv: tuple[float, float]
    point_mm: tuple[float, float, float]
    forearm_width_mm: float
    palm_width_mm: float
    forearm_width_px: float = 0.0


def _border_pixels(mask: np.ndarray) -> np.ndarray:
    edge = np.zeros_like(mask)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    return mask & edge


def cut_forearm_at_border(mask, depth, camera: Camera | None = None, step_px: float = 2.0):
    """Cut a forearm that enters the frame from its border, where the width profile widens
    into the palm.

    1. The entry point ``e`` is the mean of the blob's pixels on the frame's border; the axis
       ``a`` is the blob's principal axis (largest-variance direction of its pixels), pointed
       from ``e`` into the blob.
    2. Width profile: slices ``step_px`` thick across ``a``; each slice's width in mm is its
       pixel count / ``step_px`` times its median depth / ``fx`` (so a forearm that comes
       towards the camera, and looks wider in the image, keeps its metric width), smoothed
       with a running median over 5 slices.
    3. The forearm's width ``w_f`` is the median width of the slices from 10 to 45 mm from
       the border (lengths along the 3D path through the slices' centres, so a forearm
       coming towards the camera is measured at its length, not its image's). The palm begins at
       the first slice from which the width stays above ``max(PALM_WIDENING w_f,
       w_f + PALM_WIDENING_MM)`` for 10 mm; the wrist is :data:`WRIST_BEFORE_PALM_MM` before
       it. Blob pixels before the wrist (on the border's side) connected to the border are
       removed, and the part containing the palm is kept.

    Args:
        mask: (H, W) bool blob that touches the border (tensor or array).
        depth: (H, W) mm, 0 = no measurement.
        camera: the frame's camera (batch 1); without it, a focal length of 0.75 W and the
            principal point at the image centre.
        step_px: slice thickness (px).

    Returns:
        ``(hand, cut)``: the (H, W) bool hand and the :class:`ForearmCut`; ``(mask, None)``
        when the blob does not touch the border, or does not widen into a palm (no hand end:
        the body, a table's edge).

    Raises:
        InputError: ``depth`` is not a finite 2-D image or the camera does not match it.
    """
    mask = np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask, bool)
    d = _depth_numpy(depth)
    H, W = d.shape
    fx, fy = _focal_lengths(camera, (H, W))
    if camera is None:
        cx, cy = (W - 1) / 2, (H - 1) / 2
    else:
        cx, cy = float(camera.cx[0]), float(camera.cy[0])
    edge = _border_pixels(mask)
    if edge.sum() < 3 or mask.sum() < 50:
        return mask, None
    rows, cols = np.nonzero(mask)
    pts = np.stack([cols, rows], 1).astype(np.float64)
    er, ec = np.nonzero(edge)
    entry = np.array([ec.mean(), er.mean()])
    centre = pts.mean(0)
    cov = np.cov((pts - centre).T)
    _, vecs = np.linalg.eigh(cov)
    axis = vecs[:, -1]
    if float((centre - entry) @ axis) < 0:
        axis = -axis
    perp = np.array([-axis[1], axis[0]])
    along = (pts - entry) @ axis
    across = (pts - entry) @ perp
    z = d[rows, cols]
    measured = z > 0
    if measured.sum() < 50:
        return mask, None
    k = np.floor((along - along.min()) / step_px).astype(int)
    n = int(k.max()) + 1
    counts = np.bincount(k, minlength=n).astype(np.float64)
    zmed = np.zeros(n)
    for i in range(n):
        zi = z[(k == i) & measured]
        zmed[i] = np.median(zi) if zi.size else np.nan
    # fill slices without depth from their neighbours
    good = np.isfinite(zmed)
    if good.sum() < 5:
        return mask, None
    zmed = np.interp(np.arange(n), np.nonzero(good)[0], zmed[good])
    widths = ndimage.median_filter(counts / step_px * zmed / fx, size=5, mode="nearest")
    # mm along the blob: the 3D path through the slices' centres (a forearm coming towards
    # the camera is longer than its image)
    mid_across = np.zeros(n)
    for i in range(n):
        ai = across[k == i]
        mid_across[i] = np.median(ai) if ai.size else np.nan
    ok = np.isfinite(mid_across)
    mid_across = np.interp(np.arange(n), np.nonzero(ok)[0], mid_across[ok])
    mid_across = ndimage.median_filter(mid_across, size=5, mode="nearest")
    t_slice = along.min() + (np.arange(n) + 0.5) * step_px
    cu = entry[0] + axis[0] * t_slice + perp[0] * mid_across
    cv = entry[1] + axis[1] * t_slice + perp[1] * mid_across
    zs = ndimage.median_filter(zmed, size=5, mode="nearest")
    centres = np.stack([(cu - cx) / fx * zs, (cv - cy) / fy * zs, zs], 1)
    length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centres, axis=0), axis=1))])
    start = (length >= 10.0) & (length <= 45.0)
    if start.sum() < 3:
        return mask, None
    w_f = float(np.median(widths[start]))
    level = max(PALM_WIDENING * w_f, w_f + PALM_WIDENING_MM)
    above = widths > level
    palm = None
    for i in np.nonzero(above & (length > 25.0))[0]:
        span = (length >= length[i]) & (length <= length[i] + 10.0)
        if above[span].all() and length[-1] >= length[i] + 10.0:
            palm = int(i)
            break
    if palm is None:
        return mask, None
    cut_len = max(length[palm] - WRIST_BEFORE_PALM_MM, 0.0)
    cut_slice = int(np.searchsorted(length, cut_len))
    t_cut = along.min() + cut_slice * step_px
    before = np.zeros_like(mask)
    sel = along < t_cut
    before[rows[sel], cols[sel]] = True
    labels, count = ndimage.label(before, structure=_EIGHT)
    touching = np.unique(labels[edge & before])
    hand = mask & ~np.isin(labels, touching[touching > 0])
    labels, count = ndimage.label(hand, structure=_EIGHT)
    if count == 0:
        return mask, None
    if count > 1:
        dist = ndimage.distance_transform_edt(np.pad(hand, 1))[1:-1, 1:-1]
        r0, c0 = np.unravel_index(np.argmax(dist), dist.shape)
        hand = labels == labels[r0, c0]
    line = np.abs(along - t_cut) <= step_px
    mid = float(np.median(across[line])) if line.any() else 0.0
    uv = entry + axis * t_cut + perp * mid
    zl = z[line & measured]
    zc = float(np.median(zl)) if zl.size else float(zmed[min(cut_slice, n - 1)])
    ray = np.array([(uv[0] - cx) / fx, (uv[1] - cy) / fy, 1.0])
    point = ray * zc + WRIST_DEPTH_MM * ray / np.linalg.norm(ray)
    cut = ForearmCut(point_uv=(float(uv[0]), float(uv[1])), direction_uv=(float(-axis[0]), float(-axis[1])),
                     point_mm=tuple(float(x) for x in point), forearm_width_mm=w_f,
                     palm_width_mm=float(widths[palm]), forearm_width_px=w_f * fx / zc)
    return hand, cut


@dataclasses.dataclass
class BlobCandidate:
    """One candidate blob of :func:`segment_hand` and how it was judged.

    Attributes:
        mask: (H, W) bool numpy array, the blob after the forearm cut.
        z_near_mm: its 1st-percentile depth (mm).
        area_mm2: its area after the cut (mm^2).
        border_mm: how long it runs along the frame's border after the cut (mm).
        palm_width_mm: twice the largest inscribed radius (Euclidean distance transform) at
            the blob's median depth (mm).
        depth_extent_mm: the spread of its depths, 95th minus 5th percentile (mm).
        score: hand-likeness in [0, 1] (see :func:`hand_likeness`).
        cut: the :class:`ForearmCut` when a forearm from the border was cut, else None.
        reason: why it was rejected or lost ('' for the winner and for qualifying blobs
            before the ranking).
        chosen: whether it is the hand.
    """

    mask: np.ndarray
    z_near_mm: float
    area_mm2: float
    border_mm: float
    palm_width_mm: float
    depth_extent_mm: float
    score: float
    cut: "ForearmCut | None"
    reason: str = ""
    chosen: bool = False


@dataclasses.dataclass
class Segmentation:
    """What :func:`segment_hand` found (``return_info=True``).

    Attributes:
        mask: (H, W) bool tensor, the hand.
        candidates: every :class:`BlobCandidate`, nearest first.
        cut: the winner's :class:`ForearmCut` (None without a forearm from the border).
    """

    mask: torch.Tensor
    candidates: list
    cut: "ForearmCut | None"


def _ramp(x: float, lo0: float, lo1: float, hi1: float, hi0: float) -> float:
    """1 on [lo1, hi1], falling linearly to 0 at lo0 and hi0."""
    if x < lo1:
        return float(np.clip((x - lo0) / (lo1 - lo0), 0.0, 1.0))
    if x > hi1:
        return float(np.clip((hi0 - x) / (hi0 - hi1), 0.0, 1.0))
    return 1.0


def hand_likeness(area_mm2: float, palm_width_mm: float, depth_extent_mm: float) -> float:
    """How hand-like a blob is, in [0, 1]: the product of three memberships, each 1 over the
    range of a visible adult hand (with its wrist) and falling linearly to 0 outside.

    - area: 1 on [5,000, 25,000] mm^2 (a hand seen flat is about 150 cm^2, edge-on or
      fisted about 60 cm^2), 0 below 1,500 and above 50,000;
    - palm width (twice the largest inscribed radius): 1 on [35, 110] mm, 0 below 15 and
      above 180 (a palm is 75-95 mm wide flat, 30-50 mm edge-on);
    - depth extent (95th - 5th percentile): 1 up to 160 mm, 0 beyond 300 mm (a hand is
      about 190 mm long).
    """
    return (_ramp(area_mm2, 1500.0, 5000.0, 25000.0, 50000.0)
            * _ramp(palm_width_mm, 15.0, 35.0, 110.0, 180.0)
            * _ramp(depth_extent_mm, -1.0, 0.0, 160.0, 300.0))


def _judge_candidate(blob: np.ndarray, d: np.ndarray, camera, fx: float, pixel_area: np.ndarray,
                     z_near: float, cut_forearm: bool, min_area: float, max_area: float) -> BlobCandidate:
    """Cut a candidate's forearm, measure it and say whether (and why not) it is a hand.

    A blob entering from the border is cut by its width profile first; when that finds no
    palm, or leaves a part that still fails, the direction cut (:func:`cut_forearm_mask`)
    is tried too and the first that passes is kept."""
    options = []
    if _border_contact_mm(blob, d, fx) >= BORDER_ENTRY_MM:
        hand, cut = cut_forearm_at_border(blob, d, camera)
        if cut is not None:
            options.append((hand, cut))
    options.append((cut_forearm_mask(blob, d, camera), None))
    for hand, cut in options:
        area = float(pixel_area[hand].sum())
        border = _border_contact_mm(hand, d, fx)
        z = d[hand & (d > 0)]
        z_mid = float(np.median(z)) if z.size else z_near
        edt = ndimage.distance_transform_edt(np.pad(hand, 1))[1:-1, 1:-1]
        palm_width = 2.0 * float(edt.max()) * z_mid / fx
        extent = float(np.percentile(z, 95) - np.percentile(z, 5)) if z.size else 0.0
        score = hand_likeness(area, palm_width, extent)
        reason = ""
        if not min_area <= area <= max_area:
            reason = f"area {area:,.0f} mm^2 outside [{min_area:,.0f}, {max_area:,.0f}]"
        elif border >= 40.0:
            reason = (f"runs along the border for {border:.0f} mm and does not narrow into a hand-sized "
                      "end away from it (the body or a surface entering the frame)")
        elif score <= 0.0:
            reason = f"not hand-like (palm width {palm_width:.0f} mm, depth extent {extent:.0f} mm)"
        if not reason:
            break
    result = hand if cut_forearm else blob
    return BlobCandidate(mask=result, z_near_mm=z_near, area_mm2=area, border_mm=border,
                         palm_width_mm=palm_width, depth_extent_mm=extent, score=score,
                         cut=cut if cut_forearm else None, reason=reason)


# ----------------------------------------------------------------------------- segmentation
def segment_hand(depth: torch.Tensor, camera: Camera | None = None, band_mm: float = 150.0,
                 near_mm: float = 150.0, far_mm: float = 1500.0, min_pixels: int = 200,
                 cut_forearm: bool = True, *, jump_mm: float = 25.0, min_area_mm2: float = 3000.0,
                 max_area_mm2: float = 45000.0, hole_mm2: float = 60.0,
                 dropout_mm2: float = 1500.0, max_candidates: int = 4, return_info: bool = False):
    """Segment the hand: the nearest sizeable blob within a depth band, forearm cut.

    See the module docstring for the method. The depth band and the hand's expected size
    are metric, so the result does not depend on the hand's distance or the resolution.

    Args:
        depth: (H, W) mm, 0 = no measurement.
        camera: the frame's camera (batch 1, size W x H); used for areas in mm^2. Without
            it a focal length of 0.75 W px is assumed.
        band_mm: depth band behind the blob's nearest point that may belong to the hand.
        near_mm, far_mm: depths outside this range are ignored.
        min_pixels: the fewest pixels of a blob (smaller ones are speckle).
        cut_forearm: remove the part beyond the wrist (see :func:`cut_forearm_mask`).
        jump_mm: neighbouring depths differing by more belong to different surfaces.
        min_area_mm2, max_area_mm2: the plausible visible area of a hand with its wrist.
        hole_mm2: holes in the blob up to this area are filled (noise); larger holes (the
            ring of an OK sign) are kept.
        dropout_mm2: holes where the sensor measured (almost) nothing are filled up to this
            area.
        max_candidates: the most surfaces (nearest first) judged as hand candidates.
        return_info: return a :class:`Segmentation` (the mask, every candidate with its
            score and the reason it lost, the forearm cut) instead of the mask.

    Returns:
        (H, W) bool tensor on ``depth``'s device: the hand (or a :class:`Segmentation`).

    Raises:
        InputError: ``depth`` is not a finite 2-D image, the camera does not match it, or the
            depths are implausible as millimetres (see :func:`check_depth_scale`).
        NoHandFoundError: no valid depth at all, none in ``[near_mm, far_mm]``, or no blob of
            at least ``min_pixels`` pixels and ``min_area_mm2``.

    Example:
        >>> depth = torch.full((120, 160), 900.0)
        >>> depth[40:80, 60:100] = 450.0
        >>> int(segment_hand(depth, min_pixels=100).sum())
        1600
    """
    d = _depth_numpy(depth)
    if (d < 0).any():
        raise InputError("depth must be non-negative (mm, 0 = no measurement); it holds negative values")
    fx, fy = _focal_lengths(camera, d.shape)
    check_depth_scale(d)
    measured = d > 0
    valid = measured & (d >= near_mm) & (d <= far_mm)
    if not valid.any():
        lo, hi = np.percentile(d[measured], [1.0, 99.0])
        raise NoHandFoundError(f"no valid depth between {near_mm:,.0f} and {far_mm:,.0f} mm (the "
                               f"measured depths span {_format_mm(lo)} to {_format_mm(hi)}); "
                               f"{_SCALE_HINT}")
    pixel_area = (d / fx) * (d / fy)  # mm^2 that each pixel sees
    surfaces, count = ndimage.label(valid & (_depth_spread(d, valid) <= jump_mm), structure=_EIGHT)
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(valid, surfaces, index)
    areas = ndimage.sum_labels(pixel_area, surfaces, index)
    big = index[(sizes >= min_pixels) & (areas >= min_area_mm2)]
    if big.size == 0:
        raise NoHandFoundError(f"no blob of at least {min_pixels} pixels and {min_area_mm2:,.0f} mm^2 "
                               f"between {near_mm:,.0f} and {far_mm:,.0f} mm (only speckle)")
    near = np.array([_near_depth(d[surfaces == k]) for k in big])
    candidates: list[BlobCandidate] = []
    for k, z_near in sorted(zip(big, near), key=lambda t: t[1])[:max_candidates]:
        blob = _nearest_part((surfaces == k) & (d <= z_near + band_mm), d, pixel_area,
                             min_pixels, min_area_mm2)
        if blob is None:
            continue
        blob = _give_back_outline(blob, d, valid, surfaces, jump_mm)
        blob = _attach_front_parts(blob, d, valid, surfaces, pixel_area, jump_mm)
        blob = _give_back_outline(blob, d, valid, surfaces, jump_mm)
        blob = _fill_small_holes(blob, measured, float(np.median(d[blob])), fx, fy, hole_mm2,
                                 dropout_mm2)
        candidates.append(_judge_candidate(blob, d, camera, fx, pixel_area, float(z_near), cut_forearm,
                                           min_area_mm2, max_area_mm2))
    if not candidates:
        raise NoHandFoundError(f"no blob of at least {min_pixels} pixels within {band_mm:.0f} mm "
                               "of its nearest point")
    accepted = [c for c in candidates if not c.reason]
    if accepted:
        winner = min(accepted, key=lambda c: (-round(c.score, 1), c.z_near_mm))
        for c in accepted:
            if c is not winner:
                c.reason = (f"less hand-like (score {c.score:.2f} vs {winner.score:.2f})"
                            if round(c.score, 1) < round(winner.score, 1) else
                            f"farther ({c.z_near_mm:.0f} mm vs {winner.z_near_mm:.0f} mm)")
    else:
        winner = candidates[0]  # none qualifies: the nearest blob
    winner.chosen = True
    blob = winner.mask
    device = depth.device if isinstance(depth, torch.Tensor) else "cpu"
    hand = torch.from_numpy(blob).to(device)
    if return_info:
        return Segmentation(mask=hand, candidates=candidates, cut=winner.cut)
    return hand


# ----------------------------------------------------------------------------- crop
@dataclasses.dataclass
class HandCrop:
    """A hand-centred square crop of a frame, the space the fitter works in.

    Attributes:
        depth: (S, S) mm, the whole scene's depth in the crop (0 = no measurement or
            outside the frame), resampled with nearest neighbours.
        hand_depth: (S, S) mm, ``depth`` where the (nearest-resampled) hand mask is set and 0
            elsewhere: the depth the fitter compares renders with.
        mask: (S, S) float in [0, 1], the hand silhouette's coverage of each crop pixel
            (area-averaged; unmeasured pixels inside the hand mask count as hand).
        camera: the crop's camera (batch 1, S x S): the frame's camera with scaled focal
            lengths and a shifted principal point (see :meth:`renderers.Camera.crop`).
        centre_mm: (3,) the hand pixels' 3D centroid, camera coordinates, mm.
        window: ``(x0, y0, size)`` of the crop in the frame's pixel-edge coordinates (pixel
            ``j`` spans ``[j, j + 1)``), px.
        points_mm: (N, 3) the segmented hand's 3D points (camera coordinates, mm; at most
            ``max_points``, a fixed-seed random subset) for initialisation.
        wrist_mm: (3,) the wrist where a forearm from the border was cut (camera
            coordinates, mm; :attr:`ForearmCut.point_mm`), or None when no forearm was cut:
            the initial candidates then keep only those with their wrist at that end.
        occluder_depth: (S, S) mm, the scene's depth on the pixels of a held object separated
            from the hand (:func:`separate_held_object`), 0 elsewhere; None when none was
            separated. The fitter does not push the model out of these pixels where the
            object hides it (:func:`fitting.fitter.occluder_weight`).
    """

    depth: torch.Tensor
    hand_depth: torch.Tensor
    mask: torch.Tensor
    camera: Camera
    centre_mm: torch.Tensor
    window: tuple[float, float, float]
    points_mm: torch.Tensor
    wrist_mm: torch.Tensor | None = None
    occluder_depth: torch.Tensor | None = None

    def to_crop_pixels(self, uv: torch.Tensor) -> torch.Tensor:
        """Frame pixel coordinates (..., 2) -> this crop's pixel coordinates (..., 2).

        Both in OpenCV's convention (pixel centres at integers); the inverse of the rule in
        :meth:`renderers.Camera.crop`: ``u' = (u + 0.5 - x0) / s - 0.5`` with ``s = size / S``.
        """
        x0, y0, size = self.window
        s = size / self.mask.shape[-1]
        origin = uv.new_tensor([x0, y0])
        return (uv + 0.5 - origin) / s - 0.5


def _window_grid(x0: float, y0: float, size: float, out_size: int, width: int, height: int,
                 sub: int = 1) -> torch.Tensor:
    """grid_sample grid (1, S*sub, S*sub, 2) sampling the window at the centres of an
    ``S*sub``-square lattice (``align_corners=False``: [-1, 1] spans the image edges)."""
    n = out_size * sub
    s = size / n
    e = (torch.arange(n, dtype=torch.float64) + 0.5) * s
    gx = (2 * (x0 + e) / width - 1).float()
    gy = (2 * (y0 + e) / height - 1).float()
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    return torch.stack([xx, yy], -1)[None]


def resample_window(img: torch.Tensor, window: tuple[float, float, float], out_size: int, mode: str,
                    sub: int = 1) -> torch.Tensor:
    """An (H, W) image's square window ``(x0, y0, size)`` (edge coordinates, px) resampled to
    (out_size, out_size) float32 at the crop pixels' centres (the crop rule of
    :meth:`renderers.Camera.crop`); ``sub > 1`` averages a ``sub``-times finer lattice per
    crop pixel. Pixels outside the image read 0.

    Plain grid_sample, not kornia's warp_affine (crop_by_transform_mat): that samples the
    same points (bilinear within 1e-4) but takes 1.5-3 times as long, and its float32 grid
    breaks nearest-neighbour near-ties differently (bench/crop_resample.py).
    """
    H, W = img.shape
    x0, y0, size = window
    grid = _window_grid(x0, y0, size, out_size, W, H, sub)
    out = F.grid_sample(img[None, None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    if sub > 1:
        out = F.avg_pool2d(out, sub)
    return out[0, 0]


def resample_mask(mask: torch.Tensor, window: tuple[float, float, float], out_size: int) -> torch.Tensor:
    """(out_size, out_size) float in [0, 1]: an (H, W) bool mask's coverage of each crop pixel of the
    window (bilinear samples on a ``ceil(size / out_size)``-times finer lattice, box-filtered)."""
    sub = max(1, math.ceil(window[2] / out_size))
    return resample_window(mask, window, out_size, "bilinear", sub).clamp(0, 1)


def crop_hand(depth: torch.Tensor, mask: torch.Tensor, camera: Camera, box_mm: float = 200.0,
              out_size: int = 96, max_points: int = 1500, seed: int = 0,
              depth_range_mm: float = 200.0, occluder: torch.Tensor | None = None) -> HandCrop:
    """Crop the projection of a ``box_mm`` cube around the hand and resample it to ``out_size``.

    The window is centred on the projection of the hand's 3D centroid ``c`` and has side
    ``size = fx * box_mm / c_z`` px (DeepHPS). Resampling is ``grid_sample`` with
    ``align_corners=False`` at the crop pixels' centres ``x0 + (j + 0.5) size / out_size``
    (edge coordinates), which is exactly the camera :meth:`renderers.Camera.crop` returns;
    pixels outside the frame read 0. Depth is sampled with nearest neighbours (hand and
    background depths never blend); the mask is averaged over each crop pixel's footprint
    (bilinear samples on a ``ceil(size / out_size)``-times finer lattice, box-filtered).

    Args:
        depth: (H, W) mm, 0 = no measurement.
        mask: (H, W) bool hand mask (nonzero = hand).
        camera: the frame's camera (batch 1, W x H).
        box_mm: side of the cube (mm); out_size: crop resolution S (px).
        max_points: the most hand points kept in ``points_mm``; seed: the subset's seed.
        depth_range_mm: hand pixels whose depth differs from the hand's median depth by
            more than this (speckle inside filled holes of the mask) count as unmeasured:
            they stay in ``mask`` but not in ``hand_depth``, ``points_mm`` or ``centre_mm``.
        occluder: optional (H, W) bool, a held object's pixels (not hand): resampled with
            nearest neighbours into the crop's ``occluder_depth``.

    Returns:
        HandCrop (tensors on CPU, float32).

    Raises:
        InputError: shapes or the camera do not match, or bad ``box_mm`` / ``out_size``.
        NoHandFoundError: the mask has fewer than 10 pixels with depth.
    """
    if not isinstance(depth, torch.Tensor) or depth.ndim != 2:
        raise InputError(f"depth must be an (H, W) tensor in mm, got "
                         f"{tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__}")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(depth.shape):
        raise InputError(f"mask must be a tensor of the depth's shape {tuple(depth.shape)}, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    H, W = depth.shape
    _focal_lengths(camera, (H, W))
    if not (box_mm > 0 and math.isfinite(box_mm)):
        raise InputError(f"box_mm must be a positive number of mm, got {box_mm}")
    if isinstance(out_size, bool) or not isinstance(out_size, int) or out_size <= 0:
        raise InputError(f"out_size must be a positive int, got {out_size!r}")
    d = depth.detach().cpu().float()
    cam = camera.to("cpu", torch.float32)
    silhouette = mask.detach().cpu() != 0
    hand = silhouette & (d > 0)
    if bool(hand.any()):
        z_med = d[hand].median()
        hand &= (d - z_med).abs() <= depth_range_mm
    rows, cols = torch.nonzero(hand, as_tuple=True)
    if rows.numel() < 10:
        raise NoHandFoundError(f"the hand mask has {rows.numel()} pixels with depth; need at least 10")
    uv = torch.stack([cols, rows], -1).float()[None]
    pts = cam.unproject(uv, d[rows, cols][None])[0]
    centre = pts.double().mean(0).float()
    uc, vc = cam.project(centre[None, None])[0, 0].double().tolist()
    size = float(cam.fx[0]) * box_mm / float(centre[2])
    x0, y0 = uc + 0.5 - size / 2, vc + 0.5 - size / 2

    window = (x0, y0, size)
    crop_depth = resample_window(d, window, out_size, "nearest")
    crop_hand_px = resample_window(hand, window, out_size, "nearest") > 0.5
    crop_mask = resample_mask(silhouette, window, out_size)
    occluder_depth = None
    if occluder is not None and bool(occluder.any()):
        occ = resample_window((occluder.detach().cpu() != 0).float(), window, out_size, "nearest") > 0.5
        occluder_depth = torch.where(occ & ~crop_hand_px, crop_depth, torch.zeros_like(crop_depth))
    if pts.shape[0] > max_points:
        g = torch.Generator().manual_seed(seed)
        pts = pts[torch.randperm(pts.shape[0], generator=g)[:max_points]]
    return HandCrop(
        depth=crop_depth,
        hand_depth=torch.where(crop_hand_px, crop_depth, torch.zeros_like(crop_depth)),
        mask=crop_mask,
        camera=cam.crop(x0, y0, size, out_size),
        centre_mm=centre,
        window=(x0, y0, size),
        points_mm=pts,
        occluder_depth=occluder_depth,
    )


#: Frames with more pixels than this are segmented on a decimated copy (an integer stride that
#: brings them below it); the mask is then brought back to the full frame (see :func:`prepare`).
MAX_SEGMENT_PIXELS = 1280 * 1024


def segment_large_frame(depth: torch.Tensor, camera: Camera, max_pixels: int = MAX_SEGMENT_PIXELS,
                        margin_mm: float = 25.0, return_info: bool = False):
    """:func:`segment_hand` of a frame of any size, in about the time of a ``max_pixels`` frame.

    A frame above ``max_pixels`` is segmented on every k-th pixel of every k-th row (the
    smallest integer k that brings it below; its camera is ``fx / k``, ``cx / k``: pixel
    ``j'`` of the copy is pixel ``k j'`` of the frame). The mask comes back by nearest
    neighbour (each frame pixel takes the copy's pixel nearest to it) and is then trimmed to
    the pixels whose depth lies within ``margin_mm`` of the hand's depth range, so the blocky
    outline does not take in the background behind the hand's edge.

    Args:
        depth: (H, W) mm; camera: its camera (batch 1).
        max_pixels: the most pixels segmented at full resolution.
        margin_mm: how far outside the hand's depth range an outline pixel may be.
        return_info: return the :class:`Segmentation` instead of the mask (its cut in the
            frame's pixels; its candidates' masks at the decimated copy's resolution).

    Returns:
        (H, W) bool, the hand (or a :class:`Segmentation` whose ``mask`` is the full frame's).

    Raises:
        InputError, NoHandFoundError: as :func:`segment_hand`.
    """
    H, W = depth.shape
    k = math.ceil(math.sqrt(H * W / max_pixels))
    if k <= 1:
        return segment_hand(depth, camera, return_info=return_info)
    small = depth[::k, ::k]
    cam = Camera(camera.fx / k, camera.fy / k, camera.cx / k, camera.cy / k, small.shape[1], small.shape[0])
    info = segment_hand(small, cam, return_info=True)
    mask = info.mask
    rows = torch.div(torch.arange(H, device=depth.device) + k // 2, k, rounding_mode="floor").clamp(max=small.shape[0] - 1)
    cols = torch.div(torch.arange(W, device=depth.device) + k // 2, k, rounding_mode="floor").clamp(max=small.shape[1] - 1)
    full = mask[rows][:, cols]
    z = small[mask & (small > 0)]
    lo, hi = float(z.min()) - margin_mm, float(z.max()) + margin_mm
    full = full & (depth >= lo) & (depth <= hi)
    if not return_info:
        return full
    cut = info.cut
    if cut is not None:
        cut = dataclasses.replace(cut, point_uv=(cut.point_uv[0] * k, cut.point_uv[1] * k),
                                  forearm_width_px=cut.forearm_width_px * k)
    return Segmentation(mask=full, candidates=info.candidates, cut=cut)


def prepare(observation, box_mm: float = 220.0, working_size: int = 96, separate_object: bool = True) -> HandCrop:
    """Segment the hand of an :class:`~fitting.Observation` (unless it has a mask) and crop it.

    Where a forearm entering from the border was cut (by the segmentation, or off a given
    mask that runs along the border, :func:`cut_forearm_at_border`), the crop's
    ``wrist_mm`` is the cut. Where a forearm was cut, a held object is then separated from
    the hand mask (``separate_object``, :func:`fitting.held_object.separate_held_object`):
    its pixels leave the mask and become the crop's ``occluder_depth``.

    Runs on the CPU (segmentation is connected components on the frame; frames above
    :data:`MAX_SEGMENT_PIXELS` are segmented on a decimated copy, see
    :func:`segment_large_frame`); the fitter moves the crop to its own device.

    Args:
        observation: the frame (depth in mm, camera, optional mask).
        box_mm: side of the cube cropped around the hand (mm); working_size: the crop's side S
            (px).
        separate_object: separate a held object after a forearm cut (see above).

    Returns:
        the :class:`HandCrop`.

    Raises:
        fitting.errors.InputError: no hand could be found (see :func:`segment_hand`), or bad
            ``box_mm`` / ``working_size``.
    """
    if getattr(observation, "depth", None) is None:  # a colour view, or a MultiViewObservation
        raise InputError(f"{getattr(observation, 'name', 'frame')}: has no depth frame; views without depth and "
                         "calibrated rigs are fitted by Fitter.fit (fitting.multiview), not by the depth pipeline "
                         "(tracking, sequences, datasets)")
    mask, cut = observation.mask, None
    if mask is None:
        info = segment_large_frame(observation.depth, observation.camera, return_info=True)
        mask, cut = info.mask, info.cut
    else:
        m = mask.detach().cpu().numpy() != 0
        d = observation.depth.detach().cpu().float().numpy()
        if _border_contact_mm(m, d, float(observation.camera.fx[0])) >= BORDER_ENTRY_MM:
            # a given mask with the forearm entering from the border: cut it like a blob
            hand, cut = cut_forearm_at_border(m, d, observation.camera)
            if cut is not None:
                mask = torch.from_numpy(hand)
    held = None
    if cut is not None and separate_object:
        from .held_object import separate_held_object

        hand, held = separate_held_object(mask, observation.depth, observation.camera, cut.point_mm)
        if bool(held.any()):
            mask = hand
    crop = crop_hand(observation.depth, mask, observation.camera, box_mm=box_mm, out_size=working_size,
                     occluder=held)
    if cut is not None:
        crop.wrist_mm = torch.tensor(cut.point_mm, dtype=crop.points_mm.dtype)
    return crop


#: How far from the predicted hand a tracked frame's hand pixels may lie (mm): the motion that
#: the constant-velocity prediction misses between two frames (a 30 fps hand moving 1 m/s moves
#: 33 mm), plus the sensor's noise.
TRACK_MARGIN_MM = 40.0


def track_mask(depth: torch.Tensor, camera: Camera, vertices: torch.Tensor, margin_mm: float = TRACK_MARGIN_MM,
               stride: int = 16) -> torch.Tensor:
    """The hand pixels of a frame near a predicted hand (the segmentation of :func:`track_crop`).

    The pixels inside the predicted vertices' projected bounding box (grown by ``margin_mm``
    at the hand's nearest depth), with depth within ``margin_mm`` of the vertices' depth
    range, whose 3D point lies within ``margin_mm`` of a predicted vertex (every
    ``stride``-th vertex is searched, :func:`losses.nearest_vertex`: the default hand's 1609
    vertices lie a few mm apart, so a hundred of them still place the surface far more finely
    than the margin). Holes without depth stay out (the fit's mask is the measured hand).

    Args:
        depth: (H, W) mm, 0 = no measurement; camera: its camera (batch 1);
        vertices: (V, 3) mm, the predicted hand in the camera's coordinates;
        margin_mm: see above (mm, > 0); stride: vertex subsampling (>= 1).

    Returns:
        (H, W) bool on the CPU.

    Raises:
        fitting.errors.InputError: bad ``margin_mm`` or ``stride``; :class:`NoHandFoundError`:
            fewer than 10 depth pixels near the prediction (the track is lost).
    """
    from losses import nearest_vertex

    if not (margin_mm > 0 and math.isfinite(margin_mm)):
        raise InputError(f"margin_mm must be a positive number of mm, got {margin_mm}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InputError(f"stride must be an int >= 1, got {stride!r}")
    H, W = depth.shape
    cam = camera.to("cpu", torch.float32)
    verts = vertices.detach().to("cpu", torch.float32).reshape(-1, 3)
    z = verts[:, 2]
    if not bool((z > 0).all()):
        raise NoHandFoundError("the predicted hand is not in front of the camera")
    uv = cam.project(verts[None])[0]
    grow = float(cam.fx[0]) * margin_mm / float(z.min())
    x0 = max(0, int(math.floor(float(uv[:, 0].min()) - grow)))
    x1 = min(W, int(math.ceil(float(uv[:, 0].max()) + grow)) + 1)
    y0 = max(0, int(math.floor(float(uv[:, 1].min()) - grow)))
    y1 = min(H, int(math.ceil(float(uv[:, 1].max()) + grow)) + 1)
    if x1 <= x0 or y1 <= y0:
        raise NoHandFoundError("the predicted hand projects outside the frame")
    d = depth.detach()[y0:y1, x0:x1].to("cpu", torch.float32)
    near = (d >= float(z.min()) - margin_mm) & (d <= float(z.max()) + margin_mm)
    rows, cols = torch.nonzero(near, as_tuple=True)
    if rows.numel() > 0:
        pix = torch.stack([cols + x0, rows + y0], -1).float()[None]
        pts = cam.unproject(pix, d[rows, cols][None])
        ref = verts[::stride][None]
        idx = nearest_vertex(pts, ref)
        close = ((pts - ref[0, idx[0]][None]) ** 2).sum(-1)[0] <= margin_mm ** 2
        rows, cols = rows[close], cols[close]
    if rows.numel() < 10:
        raise NoHandFoundError(f"{rows.numel()} depth pixels within {margin_mm:g} mm of the predicted hand; "
                               "need at least 10 (the track is lost)")
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[rows + y0, cols + x0] = True
    return mask


def track_crop(observation, vertices: torch.Tensor, box_mm: float = 220.0, working_size: int = 96,
               margin_mm: float = TRACK_MARGIN_MM, stride: int = 16) -> HandCrop:
    """Crop the hand where a tracker predicts it, without segmenting the whole frame.

    The hand of a contiguous recording is where the previous fit (or its constant-velocity
    prediction) put it, give or take the motion between frames, so the full segmentation
    (:func:`segment_large_frame`, connected components and the forearm cut over the frame)
    runs only on a sequence's first frame and after a lost track. Here the hand is
    :func:`track_mask`: the pixels near the predicted hand in the image and in depth, whose
    3D points lie within ``margin_mm`` of it (a forearm or an object beyond that distance
    from the hand stays out). Then :func:`crop_hand` as :func:`prepare` does (no forearm cut:
    the crop's ``wrist_mm`` stays None). An observation with its own mask goes to
    :func:`prepare`.

    Args:
        observation: the frame (depth (H, W) mm, camera).
        vertices: (V, 3) mm, the predicted hand in the frame's camera coordinates.
        box_mm, working_size: as :func:`prepare`; margin_mm, stride: as :func:`track_mask`.

    Returns:
        the :class:`HandCrop` (CPU float32, as :func:`crop_hand`).

    Raises:
        fitting.errors.InputError: no depth, bad ``margin_mm`` or ``stride``, or (as
            :class:`NoHandFoundError`) fewer than 10 depth pixels near the prediction.
    """
    if getattr(observation, "mask", None) is not None or getattr(observation, "depth", None) is None:
        return prepare(observation, box_mm, working_size)  # its own mask (or prepare's error)
    mask = track_mask(observation.depth, observation.camera, vertices, margin_mm, stride)
    return crop_hand(observation.depth, mask, observation.camera, box_mm=box_mm, out_size=working_size)
