"""Hand segmentation in a depth frame and the hand-centred crop the fitter works in.

Segmentation (:func:`segment_hand`): the hand is the nearest sizeable blob within a depth band
behind its nearest point; pixels across a depth jump are not connected (so a hand held in front
of the body separates from it); the forearm is then cut at the wrist. Crop (:func:`crop_hand`):
a square around the hand's 3D centroid whose side is the projection of a ``box_mm`` cube there
(as DeepHPS crops), resampled to ``out_size`` pixels with a camera that is the frame's camera
with a shifted and scaled principal point and focal length.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from renderers import Camera

from .errors import InputError, NoHandFoundError

_EIGHT = np.ones((3, 3), dtype=bool)


def _unproject_pixels(depth: np.ndarray, rows: np.ndarray, cols: np.ndarray, camera: Camera) -> np.ndarray:
    z = depth[rows, cols]
    fx, fy, cx, cy = (float(getattr(camera, k)[0]) for k in ("fx", "fy", "cx", "cy"))
    return np.stack([(cols - cx) * z / fx, (rows - cy) * z / fy, z], axis=1)


def check_depth_scale(depth: torch.Tensor) -> None:
    """Raise InputError when the valid depths are not plausibly millimetres.

    A median valid depth above 20 m or below 10 mm almost always means a wrong depth scale.
    """
    valid = depth[depth > 0]
    if valid.numel() == 0:
        raise NoHandFoundError("the depth frame has no valid pixel (all zero)")
    median = float(valid.median())
    if median > 20_000.0 or median < 10.0:
        where = f"{median / 1e6:,.1f} km" if median > 1e6 else f"{median / 1000:,.2f} m"
        raise InputError(f"the median depth is {where}, not plausibly a hand scene; is --depth-scale "
                         "right? (it is millimetres per depth unit; SR305 frames need 0.125)")


def segment_hand(depth: torch.Tensor, camera: Camera, band_mm: float = 150.0,
                 near_mm: float = 150.0, far_mm: float = 1500.0, min_area_mm2: float = 3000.0,
                 max_area_mm2: float = 45000.0, jump_mm: float = 25.0, cut_forearm: bool = True) -> torch.Tensor:
    """Segment the hand as the nearest hand-sized blob within a depth band; cut the forearm.

    Surfaces are split at depth jumps (a pixel whose 3x3 neighbourhood spans more than
    ``jump_mm`` connects nothing). Blobs are tried nearest first (by their 1st-percentile
    depth); each is restricted to ``band_mm`` behind that depth, split into connected parts,
    and its nearest part is kept, with the forearm cut. The first whose area (in mm^2 on the
    surface, so independent of distance) lies in ``[min_area_mm2, max_area_mm2]`` is the hand:
    smaller ones are speckle, larger ones a body or a wall nearer than the hand; a blob that
    still runs along the frame's border for more than 40 mm after the forearm cut is the body
    entering the frame, not a hand.

    Args:
        depth: (H, W) mm, 0 = no measurement.
        camera: the frame's camera (areas and the forearm cut are measured in mm).
        band_mm: depth band behind the blob's nearest point that belongs to the hand.
        near_mm, far_mm: depths outside this range are ignored.
        min_area_mm2, max_area_mm2: the plausible area of a hand (+ wrist).
        jump_mm: neighbouring pixels whose depths differ by more are not connected.
        cut_forearm: remove the part beyond the wrist (see :func:`cut_forearm_mask`).

    Returns:
        (H, W) bool mask.

    Raises:
        InputError: implausible depth scale (see :func:`check_depth_scale`).
        NoHandFoundError: no valid depth in [near_mm, far_mm] or no hand-sized blob.
    """
    check_depth_scale(depth)
    d = depth.detach().cpu().numpy().astype(np.float32)
    valid = (d > near_mm) & (d < far_mm)
    if not valid.any():
        raise NoHandFoundError(f"no valid depth between {near_mm:.0f} and {far_mm:.0f} mm")
    pixel_area = (d / float(camera.fx[0])) * (d / float(camera.fy[0]))  # mm^2 per pixel
    big, small = np.where(valid, d, -np.inf), np.where(valid, d, np.inf)
    spread = ndimage.maximum_filter(big, size=3) - ndimage.minimum_filter(small, size=3)
    labels, count = ndimage.label(valid & (spread < jump_mm), structure=_EIGHT)
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(pixel_area, labels, index=index)
    candidates = [k for k in index[np.argsort(ndimage.minimum(d, labels, index=index))]
                  if areas[k - 1] >= min_area_mm2]
    if not candidates:
        raise NoHandFoundError(f"no surface of at least {min_area_mm2:.0f} mm^2 between "
                               f"{near_mm:.0f} and {far_mm:.0f} mm")
    first = None
    for k in candidates:
        blob = labels == k
        z0 = float(np.percentile(d[blob], 1.0))
        blob = _nearest_part(blob & (d <= z0 + band_mm), d, pixel_area, min_area_mm2)
        if blob is None:
            continue
        # give back the outline pixels that the depth-jump test removed
        blob = ndimage.binary_dilation(blob, structure=_EIGHT) & valid & (np.abs(d - np.median(d[blob])) <= band_mm)
        if cut_forearm:
            blob = cut_forearm_mask(blob, d, camera)
        first = blob if first is None else first
        if min_area_mm2 <= pixel_area[blob].sum() <= max_area_mm2 and _border_contact_mm(blob, d, camera) < 40.0:
            break
    else:
        if first is None:
            raise NoHandFoundError("no hand-sized blob found in the depth band")
        blob = first
    return torch.from_numpy(blob)


def _border_contact_mm(mask: np.ndarray, depth: np.ndarray, camera: Camera) -> float:
    """Length (mm) along which a blob touches the frame's border."""
    edge = np.zeros_like(mask)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    touching = mask & edge
    return float((depth[touching] / float(camera.fx[0])).sum())


def _nearest_part(mask: np.ndarray, depth: np.ndarray, pixel_area: np.ndarray, min_area: float):
    """The connected part of ``mask`` (of at least ``min_area`` mm^2) with the nearest points."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return None
    index = np.arange(1, count + 1)
    ok = ndimage.sum_labels(pixel_area, labels, index=index) >= min_area
    if not ok.any():
        return None
    near = ndimage.labeled_comprehension(depth, labels, index, lambda z: np.percentile(z, 1.0), float, np.inf)
    near[~ok] = np.inf
    return labels == index[np.argmin(near)]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count <= 1:
        return mask
    sizes = ndimage.sum_labels(np.ones(mask.shape), labels, index=np.arange(1, count + 1))
    return labels == (np.argmax(sizes) + 1)


def cut_forearm_mask(mask: np.ndarray, depth: np.ndarray, camera: Camera, reach_mm: float = 125.0) -> np.ndarray:
    """Remove the forearm from a hand(+forearm) blob.

    The palm centre is the blob's point deepest inside it (the maximum of the distance
    transform); its inscribed radius ``r`` (mm) is the palm's half-width. Blob points farther
    than ``reach_mm`` from the palm centre (beyond the fingertips' reach) can only be forearm;
    if there are any, their mean direction from the palm centre is the forearm direction and
    everything beyond ``clip(1.3 r, 45, 75)`` mm along it (the wrist) is cut.

    Args:
        mask: (H, W) bool blob; depth: (H, W) mm; camera: the frame's camera.

    Returns:
        (H, W) bool, the largest connected part left.
    """
    dist = ndimage.distance_transform_edt(mask)
    r0, c0 = np.unravel_index(np.argmax(dist), dist.shape)
    rows, cols = np.nonzero(mask)
    pts = _unproject_pixels(depth, rows, cols, camera)
    z_palm = float(np.median(depth[max(r0 - 2, 0):r0 + 3, max(c0 - 2, 0):c0 + 3][mask[max(r0 - 2, 0):r0 + 3, max(c0 - 2, 0):c0 + 3]]))
    centre = _unproject_pixels(np.full_like(depth, z_palm), np.array([r0]), np.array([c0]), camera)[0]
    radius_mm = float(dist[r0, c0]) * z_palm / float(camera.fx[0])
    offset = pts - centre
    far = np.linalg.norm(offset, axis=1) > reach_mm
    if far.sum() < 20:
        return mask
    direction = offset[far].mean(0)
    direction /= np.linalg.norm(direction)
    wrist = float(np.clip(1.3 * radius_mm, 45.0, 75.0))
    keep = offset @ direction <= wrist
    out = np.zeros_like(mask)
    out[rows[keep], cols[keep]] = True
    return _largest_component(out)


@dataclasses.dataclass
class HandCrop:
    """A hand-centred square crop of a frame, the space the fitter works in.

    Attributes:
        depth: (S, S) mm, the whole scene's depth in the crop (0 = no measurement).
        hand_depth: (S, S) mm, the depth of the hand pixels only (0 elsewhere).
        mask: (S, S) float in [0, 1], the hand (area-weighted where resampled).
        camera: the crop's camera (batch 1): the frame's camera with scaled focal lengths
            and shifted principal point (see :meth:`renderers.Camera.crop`).
        centre_mm: (3,) the hand pixels' 3D centroid, camera coordinates, mm.
        window: (x0, y0, size) of the crop in the frame's pixel-edge coordinates.
        points_mm: (N, 3) the segmented hand's 3D points (at most ``max_points``), mm.
    """

    depth: torch.Tensor
    hand_depth: torch.Tensor
    mask: torch.Tensor
    camera: Camera
    centre_mm: torch.Tensor
    window: tuple[float, float, float]
    points_mm: torch.Tensor


def crop_hand(depth: torch.Tensor, mask: torch.Tensor, camera: Camera, box_mm: float = 220.0,
              out_size: int = 96, max_points: int = 1500, seed: int = 0) -> HandCrop:
    """Crop a ``box_mm`` cube's projection around the hand and resample it to ``out_size``.

    Depth is resampled with nearest neighbours (hand and background depths never blend), the
    mask bilinearly; pixels outside the frame read 0. The sampling is ``grid_sample`` with
    ``align_corners=False`` over the window, which is exactly what ``Camera.crop`` assumes.

    Args:
        depth: (H, W) mm; mask: (H, W) bool hand mask; camera: the frame's camera (batch 1).
        box_mm: side of the cube; out_size: crop resolution (px).
        max_points: the most hand points kept in ``points_mm`` (a fixed-seed random subset).

    Raises:
        NoHandFoundError: the mask has fewer than 10 pixels with depth.
    """
    d = depth.float()
    hand = mask.bool() & (d > 0)
    rows, cols = torch.nonzero(hand, as_tuple=True)
    if rows.numel() < 10:
        raise NoHandFoundError("the hand mask has fewer than 10 pixels with depth")
    uv = torch.stack([cols, rows], -1).float()[None]
    pts = camera.unproject(uv, d[rows, cols][None])[0]
    centre = pts.mean(0)
    uc, vc = camera.project(centre[None, None])[0, 0].tolist()
    size = float(camera.fx[0]) * box_mm / float(centre[2])
    x0, y0 = uc + 0.5 - size / 2, vc + 0.5 - size / 2
    H, W = d.shape
    s = size / out_size
    edges = (torch.arange(out_size, dtype=torch.float32) + 0.5) * s
    gx = 2 * (x0 + edges) / W - 1
    gy = 2 * (y0 + edges) / H - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]
    sample = lambda img, mode: F.grid_sample(img[None, None].float(), grid, mode=mode,  # noqa: E731
                                             padding_mode="zeros", align_corners=False)[0, 0]
    crop_depth = sample(d, "nearest")
    crop_hand_mask = sample(hand, "nearest") > 0.5
    crop_mask = sample(hand, "bilinear").clamp(0, 1)
    if pts.shape[0] > max_points:
        g = torch.Generator().manual_seed(seed)
        pts = pts[torch.randperm(pts.shape[0], generator=g)[:max_points]]
    return HandCrop(
        depth=crop_depth,
        hand_depth=torch.where(crop_hand_mask, crop_depth, torch.zeros_like(crop_depth)),
        mask=crop_mask,
        camera=camera.crop(x0, y0, size, out_size),
        centre_mm=centre,
        window=(x0, y0, size),
        points_mm=pts,
    )
