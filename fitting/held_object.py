"""Separating a held object from the hand mask of a depth frame.

A hand that holds something (a cup, a box, a bottle) is segmented together with it: the
object touches the fingers, at the hand's depth, so no depth discontinuity parts them
(:func:`fitting.preprocess.segment_hand`). Fitted to such a mask, the model spreads over the
object. The object differs from the hand in its geometry: its visible surface is a few large
smooth primitives (the faces of a box, the barrel of a cylinder), while the hand's is many
small curved ones (fingers 15-20 mm across) joined to the forearm at the wrist.

:func:`separate_held_object` finds such primitives by RANSAC (Fischler and Bolles 1981) on
the blob's 3D points and their normals, as in Schnabel, Wahl and Klein, "Efficient RANSAC
for point-cloud shape detection" (2007): a plane from one point and its normal, a cylinder
from two points and their normals (its axis along the normals' cross product). A primitive's
inliers (within :data:`OBJECT_INLIER_MM` of it, their normals within
:data:`OBJECT_NORMAL_DEG` of its) are split into connected parts, and a part is the held
object when it is large (:data:`OBJECT_MIN_AREA_MM2`), wider than the strip of a finger
that fits it (:data:`OBJECT_MIN_WIDTH_MM`) and lies clear of the wrist (:data:`OBJECT_WRIST_CLEARANCE_MM`):
the back of the hand is smooth too, but it begins at the wrist. Up to
:data:`OBJECT_MAX_PRIMITIVES` primitives are taken (the three visible faces of a box and
one more).

The wrist comes from the forearm cut (:class:`fitting.preprocess.ForearmCut`): without it
nothing is separated (a hand seen from the side, without a forearm from the border, keeps
its mask as it is).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from renderers import Camera

__all__ = ["separate_held_object", "OBJECT_INLIER_MM", "OBJECT_NORMAL_DEG", "OBJECT_MIN_AREA_MM2",
           "OBJECT_MIN_WIDTH_MM", "OBJECT_WRIST_CLEARANCE_MM", "OBJECT_RADII_MM", "OBJECT_MAX_PRIMITIVES"]

#: A point is on a primitive when it lies within this distance of it (mm): twice the depth
#: noise of a structured-light sensor at 300-400 mm (about 1.5 mm, the noise of
#: :func:`fitting.synthetic.egocentric_frame`), after the smoothing of the normals.
OBJECT_INLIER_MM = 3.0
#: ... and its normal within this angle of the primitive's (degrees): a finger (radius 8-10 mm)
#: keeps its normal within it only on a strip 2 r sin 20 deg = 5.5-7 mm wide along its
#: ridge, narrower than :data:`OBJECT_MIN_WIDTH_MM`.
OBJECT_NORMAL_DEG = 20.0
#: A connected part of a primitive's inliers is an object face only when this large (mm^2):
#: about a 30 x 30 mm patch, more than a finger segment's back (about 18 x 25 mm); a part
#: next to a face already taken (a cylinder's cap, a box's other sides) needs a third of it.
OBJECT_MIN_AREA_MM2 = 900.0
#: ... and wider than a finger's strip: it holds a disc of this diameter (mm), twice a finger
#: strip's width (a box face seen at a grazing angle is 15-25 mm wide in the image).
OBJECT_MIN_WIDTH_MM = 14.0
#: ... and no point of it lies this close (mm) to the wrist: the back of the hand, smooth
#: too, reaches the wrist, while a held object lies in the grip, beyond the palm (the palm
#: is 90-110 mm long, the wrist point lies about 20 mm inside the wrist).
OBJECT_WRIST_CLEARANCE_MM = 55.0
#: Radii (mm) of the cylinders tried: from a small bottle to a large jar; fingers (radius
#: below 11 mm) are not cylinders here.
OBJECT_RADII_MM = (15.0, 90.0)
#: The most primitives taken off the mask.
OBJECT_MAX_PRIMITIVES = 5
#: The normals come from the depth smoothed by a Gaussian of this width (mm on the surface).
_SMOOTH_MM = 2.0
_HYPOTHESES = 250
_MAX_SCORED = 6000


def _points_and_normals(depth: np.ndarray, valid: np.ndarray, camera: Camera):
    """(H, W, 3) points (mm, from the smoothed depth) and unit normals facing the camera."""
    fx, fy = float(camera.fx[0]), float(camera.fy[0])
    cx, cy = float(camera.cx[0]), float(camera.cy[0])
    z_ref = float(np.median(depth[valid]))
    sigma = _SMOOTH_MM * fx / z_ref
    w = ndimage.gaussian_filter(valid.astype(np.float64), sigma)
    zs = ndimage.gaussian_filter(np.where(valid, depth, 0.0).astype(np.float64), sigma)
    # normalised convolution: dropouts inside the mask are filled from their neighbours
    z = np.where(w > 0.2, zs / np.maximum(w, 1e-9), 0.0)
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    P = np.stack([(u + 0.5 - cx) / fx * z, (v + 0.5 - cy) / fy * z, z], -1)
    du = np.gradient(P, axis=1)
    dv = np.gradient(P, axis=0)
    n = np.cross(du, dv)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    flip = (n * P).sum(-1) > 0
    n[flip] *= -1
    return P, n, z > 0


def _plane_fit(P, N, p, n, tol, cos_tol):
    dist = np.abs((P - p) @ n)
    return (dist < tol) & (N @ n > cos_tol)


def _cylinder(p1, n1, p2, n2, radii):
    """A cylinder (centre on the axis, unit axis, radius) through two oriented points, or None."""
    a = np.cross(n1, n2)
    s = np.linalg.norm(a)
    if s < math.sin(math.radians(15.0)):
        return None
    a /= s
    proj = lambda x: x - (x @ a) * a  # noqa: E731
    q1, q2, m1, m2 = proj(p1), proj(p2), proj(n1), proj(n2)
    # p1 - t1 m1 = p2 - t2 m2 (the axis behind both points, along the inward normals)
    A = np.stack([-m1, m2], 1)
    t, *_ = np.linalg.lstsq(A, q2 - q1, rcond=None)
    t1, t2 = float(t[0]), float(t[1])
    if t1 <= 0 or t2 <= 0 or abs(t1 - t2) > 0.2 * max(t1, t2):
        return None
    r = 0.5 * (t1 + t2)
    if not radii[0] <= r <= radii[1]:
        return None
    c = p1 - t1 * n1
    return c, a, r


def _cylinder_fit(P, N, c, a, r, tol, cos_tol):
    x = P - c
    radial = x - (x @ a)[..., None] * a
    rho = np.linalg.norm(radial, axis=-1)
    out = radial / np.maximum(rho, 1e-9)[..., None]
    return (np.abs(rho - r) < tol) & ((N * out).sum(-1) > cos_tol)


def separate_held_object(mask, depth, camera: Camera, wrist_mm, seed: int = 0):
    """Split a hand mask into the hand and a held object (see the module docstring).

    Args:
        mask: (H, W) bool (tensor or array), the segmented hand with what it holds.
        depth: (H, W) mm, the frame's depth (0 = no measurement).
        camera: the frame's camera (batch 1, W x H).
        wrist_mm: (3,) mm, the wrist (camera coordinates; :attr:`ForearmCut.point_mm`), or
            None: then nothing is separated.
        seed: the RANSAC samples' seed (the result is deterministic for a seed).

    Returns:
        ``(hand, held)``: two (H, W) bool tensors on ``mask``'s device (CPU for an array):
        the mask without the object, and the object's pixels (all False when none was found).
    """
    device = mask.device if isinstance(mask, torch.Tensor) else "cpu"
    m = (mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)) != 0
    d = (depth.detach().cpu().double().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth, float))
    held = np.zeros_like(m)
    valid = m & (d > 0)
    if wrist_mm is None or valid.sum() < 50:
        return torch.from_numpy(m).to(device), torch.from_numpy(held).to(device)
    P, N, filled = _points_and_normals(d, valid, camera)
    valid = m & filled  # dropouts inside the mask count, with their neighbours' depth
    fx, fy = float(camera.fx[0]), float(camera.fy[0])
    area = (P[..., 2] / fx) * (P[..., 2] / fy)
    wrist = np.asarray([float(x) for x in wrist_mm])
    far = valid & (np.linalg.norm(P - wrist, axis=-1) > OBJECT_WRIST_CLEARANCE_MM)
    near = valid & ~far
    z_ref = float(np.median(d[valid]))
    width_px = OBJECT_MIN_WIDTH_MM / 2 * fx / z_ref
    rng = np.random.default_rng(seed)
    tol, cos_tol = OBJECT_INLIER_MM, math.cos(math.radians(OBJECT_NORMAL_DEG))
    remaining = far.copy()
    for _ in range(OBJECT_MAX_PRIMITIVES):
        idx = np.flatnonzero(remaining)
        if idx.size < 50:
            break
        scored = idx if idx.size <= _MAX_SCORED else rng.choice(idx, _MAX_SCORED, replace=False)
        Ps, Ns, As = P.reshape(-1, 3)[scored], N.reshape(-1, 3)[scored], area.reshape(-1)[scored]
        best, best_score = None, 0.0
        for h in range(_HYPOTHESES):
            i = int(rng.integers(scored.size))
            p1, n1 = Ps[i], Ns[i]
            if h % 2 == 0:
                model = ("plane", p1, n1)
                inl = _plane_fit(Ps, Ns, p1, n1, tol, cos_tol)
            else:
                # the second point within 10-60 mm of the first
                close = np.flatnonzero((np.linalg.norm(Ps - p1, axis=-1) > 10.0)
                                       & (np.linalg.norm(Ps - p1, axis=-1) < 60.0))
                if close.size == 0:
                    continue
                j = int(close[rng.integers(close.size)])
                cyl = _cylinder(p1, n1, Ps[j], Ns[j], OBJECT_RADII_MM)
                if cyl is None:
                    continue
                model = ("cylinder",) + cyl
                inl = _cylinder_fit(Ps, Ns, *cyl, tol, cos_tol)
            score = float(As[inl].sum())
            if score > best_score:
                best, best_score = model, score
        if best is None or best_score * idx.size / scored.size < OBJECT_MIN_AREA_MM2 / (3 if held.any() else 1):
            break
        flatP, flatN = P.reshape(-1, 3), N.reshape(-1, 3)
        if best[0] == "plane":
            inl = _plane_fit(flatP, flatN, best[1], best[2], tol, cos_tol).reshape(m.shape)
        else:
            inl = _cylinder_fit(flatP, flatN, *best[1:], tol, cos_tol).reshape(m.shape)
        inl &= valid & ~held
        inl = ndimage.binary_opening(inl, iterations=1)
        labels, count = ndimage.label(inl, structure=np.ones((3, 3), bool))
        for k in range(1, count + 1):
            part = labels == k
            # a face next to one already taken (a cylinder's cap, a box's side) may be smaller
            beside = held.any() and bool((ndimage.binary_dilation(held, iterations=3) & part).any())
            if (part & near).any() or float(area[part].sum()) < OBJECT_MIN_AREA_MM2 / (3 if beside else 1):
                continue
            if float(ndimage.distance_transform_edt(part).max()) < width_px:
                continue
            held |= part
        remaining &= ~inl
    if held.any():
        # the object's outline (normals blurred across its rim): the mask pixels within a
        # few pixels of it that are no closer to the wrist than the object is
        ring = ndimage.binary_dilation(held, iterations=max(2, int(round(2 * _SMOOTH_MM * fx / z_ref)))) & m & far
        held |= ring
        hand = m & ~held
        # slivers the removal leaves (narrower than a finger's half) go to the object
        opened = ndimage.binary_opening(hand, iterations=2)
        labels, count = ndimage.label(opened, structure=np.ones((3, 3), bool))
        if count:
            sizes = ndimage.sum_labels(area, labels, np.arange(1, count + 1))
            keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 100.0))
            hand = m & ~held & ndimage.binary_dilation(keep, iterations=2)
        held = m & ~hand & far
    hand = m & ~held
    return torch.from_numpy(hand).to(device), torch.from_numpy(held).to(device)
