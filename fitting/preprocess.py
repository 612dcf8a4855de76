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
4. The forearm is cut (:func:`cut_forearm_mask`).
5. The first blob whose area lies in ``[min_area_mm2, max_area_mm2]`` and which does not
   run along the frame's border for more than 40 mm (the body entering the frame) is the
   hand; if none qualifies, the nearest blob is returned.

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
    "HandCrop",
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


# ----------------------------------------------------------------------------- segmentation
def segment_hand(depth: torch.Tensor, camera: Camera | None = None, band_mm: float = 150.0,
                 near_mm: float = 150.0, far_mm: float = 1500.0, min_pixels: int = 200,
                 cut_forearm: bool = True, *, jump_mm: float = 25.0, min_area_mm2: float = 3000.0,
                 max_area_mm2: float = 45000.0, hole_mm2: float = 60.0,
                 dropout_mm2: float = 1500.0) -> torch.Tensor:
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

    Returns:
        (H, W) bool tensor on ``depth``'s device: the hand.

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
    first = None
    for k, z_near in sorted(zip(big, near), key=lambda t: t[1]):
        blob = _nearest_part((surfaces == k) & (d <= z_near + band_mm), d, pixel_area,
                             min_pixels, min_area_mm2)
        if blob is None:
            continue
        blob = _give_back_outline(blob, d, valid, surfaces, jump_mm)
        blob = _attach_front_parts(blob, d, valid, surfaces, pixel_area, jump_mm)
        blob = _give_back_outline(blob, d, valid, surfaces, jump_mm)
        blob = _fill_small_holes(blob, measured, float(np.median(d[blob])), fx, fy, hole_mm2,
                                 dropout_mm2)
        hand = cut_forearm_mask(blob, d, camera)  # also judges an uncut blob
        result = hand if cut_forearm else blob
        first = result if first is None else first
        area = float(pixel_area[hand].sum())
        if min_area_mm2 <= area <= max_area_mm2 and _border_contact_mm(hand, d, fx) < 40.0:
            blob = result
            break
    else:
        if first is None:
            raise NoHandFoundError(f"no blob of at least {min_pixels} pixels within {band_mm:.0f} mm "
                                   "of its nearest point")
        blob = first
    device = depth.device if isinstance(depth, torch.Tensor) else "cpu"
    return torch.from_numpy(blob).to(device)


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
    """

    depth: torch.Tensor
    hand_depth: torch.Tensor
    mask: torch.Tensor
    camera: Camera
    centre_mm: torch.Tensor
    window: tuple[float, float, float]
    points_mm: torch.Tensor

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


def crop_hand(depth: torch.Tensor, mask: torch.Tensor, camera: Camera, box_mm: float = 200.0,
              out_size: int = 96, max_points: int = 1500, seed: int = 0,
              depth_range_mm: float = 200.0) -> HandCrop:
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

    # Plain grid_sample, not kornia's warp_affine (crop_by_transform_mat): that samples the
    # same points (bilinear within 1e-4) but takes 1.5-3 times as long, and its float32 grid
    # breaks nearest-neighbour near-ties differently (bench/crop_resample.py).
    def sample(img: torch.Tensor, mode: str, sub: int = 1) -> torch.Tensor:
        grid = _window_grid(x0, y0, size, out_size, W, H, sub)
        out = F.grid_sample(img[None, None].float(), grid, mode=mode, padding_mode="zeros",
                            align_corners=False)
        if sub > 1:
            out = F.avg_pool2d(out, sub)
        return out[0, 0]

    crop_depth = sample(d, "nearest")
    crop_hand_px = sample(hand, "nearest") > 0.5
    sub = max(1, math.ceil(size / out_size))
    crop_mask = sample(silhouette, "bilinear", sub).clamp(0, 1)
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
    )


#: Frames with more pixels than this are segmented on a decimated copy (an integer stride that
#: brings them below it); the mask is then brought back to the full frame (see :func:`prepare`).
MAX_SEGMENT_PIXELS = 1280 * 1024


def segment_large_frame(depth: torch.Tensor, camera: Camera, max_pixels: int = MAX_SEGMENT_PIXELS,
                        margin_mm: float = 25.0) -> torch.Tensor:
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

    Returns:
        (H, W) bool, the hand.

    Raises:
        InputError, NoHandFoundError: as :func:`segment_hand`.
    """
    H, W = depth.shape
    k = math.ceil(math.sqrt(H * W / max_pixels))
    if k <= 1:
        return segment_hand(depth, camera)
    small = depth[::k, ::k]
    cam = Camera(camera.fx / k, camera.fy / k, camera.cx / k, camera.cy / k, small.shape[1], small.shape[0])
    mask = segment_hand(small, cam)
    rows = torch.div(torch.arange(H, device=depth.device) + k // 2, k, rounding_mode="floor").clamp(max=small.shape[0] - 1)
    cols = torch.div(torch.arange(W, device=depth.device) + k // 2, k, rounding_mode="floor").clamp(max=small.shape[1] - 1)
    full = mask[rows][:, cols]
    z = small[mask & (small > 0)]
    lo, hi = float(z.min()) - margin_mm, float(z.max()) + margin_mm
    return full & (depth >= lo) & (depth <= hi)


def prepare(observation, box_mm: float = 220.0, working_size: int = 96) -> HandCrop:
    """Segment the hand of an :class:`~fitting.Observation` (unless it has a mask) and crop it.

    Runs on the CPU (segmentation is connected components on the frame; frames above
    :data:`MAX_SEGMENT_PIXELS` are segmented on a decimated copy, see
    :func:`segment_large_frame`); the fitter moves the crop to its own device.

    Args:
        observation: the frame (depth in mm, camera, optional mask).
        box_mm: side of the cube cropped around the hand (mm); working_size: the crop's side S
            (px).

    Returns:
        the :class:`HandCrop`.

    Raises:
        fitting.errors.InputError: no hand could be found (see :func:`segment_hand`), or bad
            ``box_mm`` / ``working_size``.
    """
    mask = observation.mask
    if mask is None:
        mask = segment_large_frame(observation.depth, observation.camera)
    return crop_hand(observation.depth, mask, observation.camera, box_mm=box_mm, out_size=working_size)
