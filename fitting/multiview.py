"""Fitting from views without depth and from several calibrated views (a :class:`~fitting.Rig`).

The hand is fitted in the rig's world frame: its parameters (``global_orient``, ``transl``,
...) place it there, and each view renders it through its own camera after the rigid map
``x = R X + t`` (world-to-camera, mm), with the renderers as they are. The data energies are
averaged over the views that carry their data (per frame ``b``, with ``m_bv`` = 1 when view
``v`` has it):

.. math::

    E_{sil}(b) = \\frac{\\sum_v m_{bv} \\lVert S_{bv} - M_{bv} \\rVert^2 / (H W)}{\\max(1, \\sum_v m_{bv})}

the silhouette term over the views with a mask (RealisticHands, Seeber et al., Sec. 3.3,
Eq. 8: the stereo silhouette loss, "the average over the two views", to V views), likewise
the depth term (DeepHandMesh's masked smooth-L1) over the views with depth and the 2D
keypoint term over the views with 2D keypoints; the data-to-model term takes the points of
all depth views together, in the world frame. With one view this is the single-view energy,
so the weights of :data:`fitting.config.DEFAULT_WEIGHTS` hold for any V.

Initialization (:func:`hand_centre`, :func:`view_candidates`), chosen so that it needs no
depth:

- *Position*: with depth in some views, the mean of their hand centroids (as the depth path
  starts); otherwise the least-squares intersection of the rays through the views' silhouette
  centroids (through their confidence-weighted 2D keypoint centroids when more views have
  keypoints than masks): the point nearest all rays, which each candidate's translation puts
  where that centroid lies on the template (:data:`SILHOUETTE_CENTROID_MM`,
  :data:`KEYPOINT_CENTROID_MM`); with a single ray (one view, or parallel rays), the point on it at the
  depth a hand-size prior gives: ``z = f sqrt(A_hand / A_px)`` for a mask of ``A_px`` pixels
  (:data:`HAND_AREA_MM2`, the template's palm-on silhouette) or ``z = f s_hand / s_px`` for 2D
  keypoints of RMS spread ``s_px`` about their centroid (:data:`HAND_KEYPOINT_SPREAD_MM`).
- *Orientation*: the principal-axis candidates of :func:`fitting.initialize.global_candidates`
  (fingers up or down the long axis, palm towards or away): of a depth view's hand points where
  one has depth, else of the most informative view's mask pixels (or keypoints) lifted to the
  centre's depth, a flat cloud whose thinnest axis is that view's optical axis (the hand is
  assumed roughly facing it), mapped into the world frame; then the existing search ranks
  them (:func:`fitting.initialize.initial_parameters`; with 2D keypoints in two views or more, the
  rigid pose that aligns the template's palm keypoints with the triangulated ones joins them,
  :func:`keypoint_candidate`) and tries the in-plane rotations
  (:func:`fitting.initialize.search_hypotheses`), with the multi-view energy.

Every view is cropped to the fit's working size around the projection of the hand's centre
(views with depth around their own segmented hand, as :func:`fitting.preprocess.prepare`).
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle

from hands import KEYPOINT_NAMES
from losses import (depth_loss, depth_residuals, keypoint_2d_loss, keypoint_residuals, silhouette_loss,
                    silhouette_residuals, sphere_overlap_stats)
from renderers import Camera, RenderOutput

from .config import GLOBAL_PARAMETERS
from .errors import InputError, NoHandFoundError
from .evaluation import mpjpe
from .initialize import SURFACE_TO_CENTRE_MM, global_candidates, initial_parameters, search_hypotheses
from .observation import MultiViewObservation, Observation, Rig
from .preprocess import HandCrop, prepare, resample_mask
from .result import FitResult, fit_metrics

__all__ = ["MultiViewTarget", "PreparedViews", "as_multiview", "hand_centre", "crop_view", "crop_views",
           "view_candidates", "prepare_views", "stack_views", "multiview_image_terms", "fit_multiview", "HAND_AREA_MM2", "HAND_KEYPOINT_SPREAD_MM",
           "SILHOUETTE_CENTROID_MM", "KEYPOINT_CENTROID_MM", "PALM_KEYPOINTS", "triangulate_keypoints",
           "keypoint_candidate", "template_keypoints"]

#: Silhouette area (mm^2) of the default hand's open template seen palm-on (12 560 mm^2
#: measured with the soft rasterizer's coverage), the hand-size prior that puts a single
#: mask-only view's hand at ``z = f sqrt(A / A_px)``. A curled or tilted hand covers less and
#: starts farther (70 % of the area: 20 % too far); the fit's translation is free.
HAND_AREA_MM2 = 12_500.0

#: RMS distance (mm) of the default template's 21 keypoints from their centroid, palm-on
#: (57 mm in the image plane): the prior that puts a keypoints-only view's hand at
#: ``z = f s / s_px``.
HAND_KEYPOINT_SPREAD_MM = 57.0

#: Where the silhouette's centroid lies on the default template seen palm-on, in the model's
#: canonical frame (mm from its origin, the rest centroid; measured with the exact rasterizer):
#: towards the wrist, the palm covering more of the image than the fingers.
SILHOUETTE_CENTROID_MM = (5.6, 31.6, 0.0)
#: Where the 21 keypoints' centroid lies on the template (canonical frame, mm from its origin).
KEYPOINT_CENTROID_MM = (2.8, 1.2, 2.0)

#: Rays closer to parallel than this (degrees) do not triangulate: the single-view prior is used.
MIN_RAY_ANGLE_DEG = 3.0


@dataclasses.dataclass
class MultiViewTarget:
    """A batch of B multi-view observations in the renderer's image spaces.

    Attributes:
        views: V :class:`~fitting.fitter.FitTarget`, one per view, each of batch B (crop
            cameras, masks, depths, 2D keypoints in crop px and their weights); their
            ``points`` are unused.
        rotation: (B, V, 3, 3) world-to-camera rotations; translation (B, V, 3) mm.
        has_mask: (B, V) bool, the views whose silhouette is fitted; has_depth (B, V) bool,
            the views with depth; has_keypoints (B, V) bool, the views with 2D keypoints.
        points: optional (B, N, 3) mm, the depth views' hand points in the world frame;
            point_lengths (B,) long.
        keypoints_3d: optional (B, 21, 3) mm, world frame; keypoint_weights: optional (B, 21).
        previous_keypoints, wrist: as :class:`~fitting.fitter.FitTarget` (world frame).
    """

    views: list
    rotation: torch.Tensor
    translation: torch.Tensor
    has_mask: torch.Tensor
    has_depth: torch.Tensor
    has_keypoints: torch.Tensor
    points: torch.Tensor | None = None
    point_lengths: torch.Tensor | None = None
    keypoints_3d: torch.Tensor | None = None
    keypoint_weights: torch.Tensor | None = None
    previous_keypoints: torch.Tensor | None = None
    wrist: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.rotation.shape[0])

    @property
    def device(self) -> torch.device:
        return self.rotation.device

    @property
    def dtype(self) -> torch.dtype:
        return self.rotation.dtype

    def select(self, idx: torch.Tensor) -> "MultiViewTarget":
        """The frames ``idx`` ((K,) long, on the target's device) of the batch, in that order."""
        take = lambda x: None if x is None else x[idx]  # noqa: E731
        return MultiViewTarget([v.select(idx) for v in self.views], self.rotation[idx], self.translation[idx],
                               self.has_mask[idx], self.has_depth[idx], self.has_keypoints[idx], take(self.points),
                               take(self.point_lengths), take(self.keypoints_3d), take(self.keypoint_weights),
                               take(self.previous_keypoints), take(self.wrist))

    def repeat_interleave(self, n: int) -> "MultiViewTarget":
        """Each frame repeated n times (for trying n initial candidates per frame)."""
        return self.select(torch.arange(self.batch_size, device=self.device).repeat_interleave(n))

    def to_camera(self, points: torch.Tensor, v: int) -> torch.Tensor:
        """(B, N, 3) world points (mm) in view ``v``'s camera coordinates: ``R X + t``."""
        return points @ self.rotation[:, v].transpose(1, 2) + self.translation[:, v, None]


# ----------------------------------------------------------------------------- observations
def as_multiview(observation: Observation) -> MultiViewObservation:
    """A single :class:`~fitting.Observation` as a one-view :class:`~fitting.MultiViewObservation`
    whose world frame is the camera's (``R = I``, ``t = 0``)."""
    rig = Rig([observation.name], [observation.camera], torch.eye(3, dtype=torch.float64)[None],
              torch.zeros(1, 3, dtype=torch.float64))
    return MultiViewObservation(rig, [observation], keypoints_3d=observation.keypoints_3d, name=observation.name)


def _keypoint_pixels(o: Observation) -> torch.Tensor:
    """(K, 3) ``u, v, weight`` of a view's usable 2D keypoints (finite, confidence > 0)."""
    k = o.keypoints_2d.detach().cpu().double()
    w = torch.ones(k.shape[0], dtype=torch.float64) if o.keypoint_confidence is None \
        else o.keypoint_confidence.detach().cpu().double()
    ok = torch.isfinite(k).all(-1) & (w > 0)
    return torch.cat([k[ok], w[ok, None]], 1)


def _view_pixel_centre(o: Observation, source: str) -> tuple[torch.Tensor, float] | None:
    """A view's hand centre pixel (2,) from its mask (``source="mask"``: the silhouette's
    centroid) or its 2D keypoints (``"keypoints"``: their confidence-weighted centroid), and
    the depth (mm) the hand-size prior gives for it; None when the view lacks that data."""
    fx, fy = float(o.camera.fx[0]), float(o.camera.fy[0])
    if source == "mask" and o.mask is not None:
        rows, cols = torch.nonzero(o.mask.cpu(), as_tuple=True)
        if rows.numel() == 0:
            return None
        uv = torch.stack([cols, rows], -1).double().mean(0)
        return uv, math.sqrt(fx * fy) * math.sqrt(HAND_AREA_MM2 / rows.numel())
    if source == "keypoints" and o.keypoints_2d is not None:
        k = _keypoint_pixels(o)
        if k.shape[0] < 2:
            return None
        w = k[:, 2] / k[:, 2].sum()
        uv = (k[:, :2] * w[:, None]).sum(0)
        spread = float(((k[:, :2] - uv) ** 2).sum(-1).mul(w).sum().sqrt())
        return uv, math.sqrt(fx * fy) * HAND_KEYPOINT_SPREAD_MM / max(spread, 1.0)
    return None


def _ray(rig: Rig, v: int, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin (3,) and unit direction (3,) in the world frame of view ``v``'s ray through pixel ``uv``."""
    cam = rig.cameras[v]
    d_cam = torch.stack([(uv[0] - float(cam.cx[0])) / float(cam.fx[0]), (uv[1] - float(cam.cy[0])) / float(cam.fy[0]),
                         torch.ones((), dtype=torch.float64)])
    R = rig.rotation[v]
    d = R.T @ d_cam
    return rig.centres_mm[v], d / d.norm()


def _to_world(rig: Rig, v: int, x: torch.Tensor) -> torch.Tensor:
    """(..., 3) camera-``v`` points (mm) in the world frame: ``R^T (x - t)``."""
    R, t = rig.rotation[v].to(x), rig.translation[v].to(x)
    return (x - t) @ R


def hand_centre(observation: MultiViewObservation, crops: list | None = None) -> tuple[torch.Tensor, str, str]:
    """The hand's first centre in the world frame (3,) float64 mm, how it was found, and of what.

    See the module docstring: the mean of the depth views' hand centroids (``crops``: the
    views' :class:`~fitting.preprocess.HandCrop` or None, as :func:`crop_views` makes them
    for depth views; ``"depth"``), else the least-squares intersection of the rays through
    the views' silhouette centroids, or through their 2D keypoint centroids when more views
    have keypoints than masks (``"triangulated"``), else one view's ray at the hand-size
    prior's depth (``"size prior"``). The third value says which point of the hand the
    centre is: ``"points"`` (the depth points' centroid pushed back by
    :data:`~fitting.initialize.SURFACE_TO_CENTRE_MM`, the model origin), ``"mask"`` (the
    silhouette's centroid, :data:`SILHOUETTE_CENTROID_MM` from the origin) or ``"keypoints"``
    (the keypoints' centroid, :data:`KEYPOINT_CENTROID_MM`).

    Raises:
        NoHandFoundError: no view has depth, a mask pixel or two usable 2D keypoints.
    """
    rig = observation.rig
    crops = crops or [None] * len(rig)
    depth_centres = []
    for v, c in enumerate(crops):
        if c is not None and observation.views[v].depth is not None:
            centre = c.centre_mm.double()
            centre = centre + SURFACE_TO_CENTRE_MM * centre / centre.norm()
            depth_centres.append(_to_world(rig, v, centre))
    if depth_centres:
        return torch.stack(depth_centres).mean(0), "depth", "points"
    found = {src: [(v, f) for v, o in enumerate(observation.views) if (f := _view_pixel_centre(o, src)) is not None]
             for src in ("mask", "keypoints")}
    source = "keypoints" if len(found["keypoints"]) > len(found["mask"]) else "mask"
    seen = found[source]
    if not seen:
        raise NoHandFoundError(f"{observation.name}: no view has depth, a mask pixel or two 2D keypoints")
    if len(seen) >= 2:
        rays = [_ray(rig, v, uv) for v, (uv, _) in seen]
        dirs = torch.stack([d for _, d in rays])
        cos = (dirs @ dirs.T).abs().clamp(max=1.0)
        if float(torch.rad2deg(torch.acos(cos.min()))) >= MIN_RAY_ANGLE_DEG:
            A = torch.zeros(3, 3, dtype=torch.float64)
            b = torch.zeros(3, dtype=torch.float64)
            for o, d in rays:
                P = torch.eye(3, dtype=torch.float64) - torch.outer(d, d)
                A += P
                b += P @ o
            return torch.linalg.solve(A, b), "triangulated", source
    v, (uv, z) = seen[0]
    cam = rig.cameras[v]
    x_cam = torch.stack([(uv[0] - float(cam.cx[0])) / float(cam.fx[0]) * z,
                         (uv[1] - float(cam.cy[0])) / float(cam.fy[0]) * z, torch.tensor(z, dtype=torch.float64)])
    return _to_world(rig, v, x_cam), "size prior", source


#: The keypoints that move rigidly with the palm (wrist, the thumb's CMC, the four finger MCPs),
#: aligned to the template's for the triangulated keypoints' orientation candidate.
PALM_KEYPOINTS = (0, 1, 5, 9, 13, 17)


def triangulate_keypoints(observation: MultiViewObservation) -> tuple[torch.Tensor, torch.Tensor]:
    """The 21 keypoints triangulated from the views' 2D keypoints: (21, 3) float64 mm in the world
    frame (NaN rows where fewer than two views see a keypoint) and (21,) bool, which were.

    Each keypoint is the confidence-weighted least-squares intersection of its rays
    (``argmin_X sum_v c_v |(I - d_v d_v^T)(X - o_v)|^2``), kept when its rays span at least
    :data:`MIN_RAY_ANGLE_DEG`.
    """
    K = len(KEYPOINT_NAMES)
    A = torch.zeros(K, 3, 3, dtype=torch.float64)
    b = torch.zeros(K, 3, dtype=torch.float64)
    dirs: list[list] = [[] for _ in range(K)]
    for v, o in enumerate(observation.views):
        if o.keypoints_2d is None:
            continue
        kp = o.keypoints_2d.detach().cpu().double()
        conf = torch.ones(K, dtype=torch.float64) if o.keypoint_confidence is None \
            else o.keypoint_confidence.detach().cpu().double()
        for k in range(K):
            if bool(torch.isfinite(kp[k]).all()) and float(conf[k]) > 0:
                origin, d = _ray(observation.rig, v, kp[k])
                P = torch.eye(3, dtype=torch.float64) - torch.outer(d, d)
                A[k] += float(conf[k]) * P
                b[k] += float(conf[k]) * (P @ origin)
                dirs[k].append(d)
    points = torch.full((K, 3), float("nan"), dtype=torch.float64)
    seen = torch.zeros(K, dtype=torch.bool)
    for k in range(K):
        if len(dirs[k]) >= 2:
            D = torch.stack(dirs[k])
            if float(torch.rad2deg(torch.acos((D @ D.T).abs().clamp(max=1.0).min()))) >= MIN_RAY_ANGLE_DEG:
                points[k] = torch.linalg.solve(A[k], b[k])
                seen[k] = True
    return points, seen


def keypoint_candidate(observation: MultiViewObservation, template_keypoints: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rigid pose (``global_orient`` (1, 3) rad, ``transl`` (1, 3) mm, world frame) that best
    aligns the template's palm keypoints (:data:`PALM_KEYPOINTS` of ``template_keypoints``, (21, 3) mm,
    the neutral hand at the origin) with the triangulated ones (Kabsch / Umeyama without scale,
    via ``pytorch3d.ops.corresponding_points_alignment``); None unless at least 4 of them were
    triangulated (:func:`triangulate_keypoints`)."""
    from pytorch3d.ops import corresponding_points_alignment

    points, seen = triangulate_keypoints(observation)
    idx = torch.tensor([k for k in PALM_KEYPOINTS if bool(seen[k])], dtype=torch.long)
    if idx.numel() < 4:
        return None
    X = template_keypoints.detach().cpu().double()[idx][None]
    Y = points[idx][None]
    fit = corresponding_points_alignment(X, Y, estimate_scale=False)
    # PyTorch3D's row-vector convention: Y ~ X @ R + T, so the column-vector rotation is R^T
    R = fit.R[0].T
    return matrix_to_axis_angle(R)[None], fit.T


def crop_view(observation: Observation, centre_cam: torch.Tensor, box_mm: float, out_size: int) -> HandCrop:
    """A view without depth cropped like :func:`fitting.preprocess.crop_hand`: the projection of
    a ``box_mm`` cube around ``centre_cam`` ((3,) mm, this view's camera coordinates) resampled
    to ``out_size`` px. Its depth maps are 0 and it has no points; its mask is the view's
    (zeros for a keypoints-only view).

    Raises:
        InputError: the centre lies behind the camera (z <= 0).
    """
    cam = observation.camera.to("cpu", torch.float32)
    c = centre_cam.detach().cpu().double()
    if not float(c[2]) > 1.0:
        raise InputError(f"{observation.name}: the hand's centre lies behind this camera (z = {float(c[2]):.0f} mm); "
                         "check the rig's extrinsics (R, t are world-to-camera)")
    uc = float(cam.fx[0]) * float(c[0]) / float(c[2]) + float(cam.cx[0])
    vc = float(cam.fy[0]) * float(c[1]) / float(c[2]) + float(cam.cy[0])
    size = float(cam.fx[0]) * box_mm / float(c[2])
    window = (uc + 0.5 - size / 2, vc + 0.5 - size / 2, size)
    zeros = torch.zeros(out_size, out_size)
    if observation.mask is not None:
        mask = resample_mask(observation.mask.cpu(), window, out_size)
    else:
        mask = zeros.clone()
    return HandCrop(depth=zeros, hand_depth=zeros.clone(), mask=mask, camera=cam.crop(*window, out_size),
                    centre_mm=c.float(), window=window, points_mm=torch.zeros(0, 3))


def crop_views(observation: MultiViewObservation, box_mm: float, out_size: int) -> tuple[list, torch.Tensor, str, str]:
    """Every view's crop (depth views as :func:`~fitting.preprocess.prepare` crops them, the others
    around the projected :func:`hand_centre`), and the centre (3,) world mm, how it was found
    and of what (:func:`hand_centre`).

    Raises:
        InputError: a depth view without a findable hand; a mask view whose crop holds no hand
            (the triangulated centre projects away from its mask: the rig disagrees with the images).
    """
    rig = observation.rig
    crops = [prepare(o, box_mm, out_size) if o.depth is not None else None for o in observation.views]
    centre, how, source = hand_centre(observation, crops)
    for v, o in enumerate(observation.views):
        if crops[v] is None:
            c_cam = rig.rotation[v] @ centre + rig.translation[v]
            crops[v] = crop_view(o, c_cam, box_mm, out_size)
            if o.mask is not None and float(crops[v].mask.sum()) < 1.0:
                raise InputError(f"{observation.name}: view {o.name!r}: the hand triangulated from the other views "
                                 "projects outside this view's mask; do the rig's extrinsics belong to these images?")
    return crops, centre, how, source


def view_candidates(observation: MultiViewObservation, crops: list, centre: torch.Tensor, source: str = "mask",
                    template_keypoints: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The principal-axis candidates (``global_orient`` (K, 3) rad, ``transl`` (K, 3) mm) in the
    world frame (see the module docstring).

    From the depth view with the most hand points: :func:`fitting.initialize.global_candidates`
    of those points (with its wrist where a forearm was cut). Otherwise from the view with the
    largest mask (else the most keypoints): its mask pixels (or keypoints) lifted to the
    centre's depth in that view; each candidate's translation puts the point of the hand the
    centre is (``source``, see :func:`hand_centre`) at ``centre``. With ``template_keypoints``
    ((21, 3) mm, the neutral hand's) and 2D keypoints in two views or more, the pose aligning the
    template's palm to the triangulated keypoints joins the candidates (:func:`keypoint_candidate`).
    """
    rig = observation.rig
    depth_views = [v for v, o in enumerate(observation.views) if o.depth is not None]
    if depth_views:
        v = max(depth_views, key=lambda i: crops[i].points_mm.shape[0])
        orient, transl = global_candidates(crops[v].points_mm.double(),
                                           None if crops[v].wrist_mm is None else crops[v].wrist_mm.double())
    else:
        def score(i):
            o = observation.views[i]
            if o.mask is not None:
                return (1, float(crops[i].mask.sum()))
            return (0, float(_keypoint_pixels(o).shape[0]) if o.keypoints_2d is not None else 0.0)
        v = max(range(len(rig)), key=score)
        o = observation.views[v]
        c_cam = rig.rotation[v] @ centre + rig.translation[v]
        if o.mask is not None:
            uv = torch.stack(torch.nonzero(crops[v].mask > 0.5, as_tuple=True)[::-1], -1).double()
            cam = crops[v].camera.to(dtype=torch.float64)
        else:
            uv = _keypoint_pixels(o)[:, :2]
            cam = o.camera.to(dtype=torch.float64)
        if uv.shape[0] < 3:
            uv = cam.project(c_cam[None, None])[0] + torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
                                                                  dtype=torch.float64)
        points = cam.unproject(uv[None], torch.full((1, uv.shape[0]), float(c_cam[2]), dtype=torch.float64))[0]
        orient, _ = global_candidates(points)
        offset = torch.tensor(KEYPOINT_CENTROID_MM if source == "keypoints" else SILHOUETTE_CENTROID_MM,
                              dtype=torch.float64)
        transl = c_cam - axis_angle_to_matrix(orient.double()) @ offset
    # camera v -> world: R_w = R_v^T R_c, t_w = R_v^T (t_c - t_v)
    R_v = rig.rotation[v]
    R_w = R_v.T @ axis_angle_to_matrix(orient.double())
    orient, transl = matrix_to_axis_angle(R_w), _to_world(rig, v, transl.double())
    if template_keypoints is not None:
        extra = keypoint_candidate(observation, template_keypoints)
        if extra is not None:
            orient, transl = torch.cat([orient, extra[0]]), torch.cat([transl, extra[1]])
    return orient, transl


def stack_views(observations: list[MultiViewObservation], crops: list[list[HandCrop]], device, dtype
                ) -> MultiViewTarget:
    """One batched :class:`MultiViewTarget` of B observations with V views each, on ``device`` in ``dtype``.

    Raises:
        InputError: the observations have different view counts.
    """
    from .fitter import stack_targets

    V = len(observations[0].views)
    if any(len(o.views) != V for o in observations):
        raise InputError("a batch of multi-view observations must have the same number of views, got "
                         f"{sorted({len(o.views) for o in observations})}")
    to = dict(device=device, dtype=dtype)
    views = [stack_targets([c[v] for c in crops], [o.views[v] for o in observations], device, dtype)
             for v in range(V)]
    for v, view in enumerate(views):
        if view.keypoints_2d is not None and view.keypoint_weights is None:
            views[v] = dataclasses.replace(view, keypoint_weights=torch.ones(view.batch_size, len(KEYPOINT_NAMES), **to))
    rotation = torch.stack([o.rig.rotation for o in observations]).to(**to)
    translation = torch.stack([o.rig.translation for o in observations]).to(**to)
    flag = lambda f: torch.tensor([[f(view) for view in o.views] for o in observations], device=device)  # noqa: E731
    has_mask = flag(lambda view: view.mask is not None or view.depth is not None)
    has_depth = flag(lambda view: view.depth is not None)
    has_keypoints = flag(lambda view: view.keypoints_2d is not None)
    # the depth views' points, in the world frame
    world = []
    for o, c in zip(observations, crops):
        pts = [_to_world(o.rig, v, c[v].points_mm.double()) for v in range(V) if o.views[v].depth is not None]
        world.append(torch.cat(pts) if pts else torch.zeros(0, 3, dtype=torch.float64))
    extra = {}
    if any(p.shape[0] for p in world):
        lengths = torch.tensor([p.shape[0] for p in world], device=device)
        points = torch.zeros(len(world), max(p.shape[0] for p in world), 3, **to)
        for b, p in enumerate(world):
            points[b, :p.shape[0]] = p.to(**to)
        extra.update(points=points, point_lengths=lengths)
    if any(o.keypoints_3d is not None for o in observations):
        kp = torch.full((len(observations), len(KEYPOINT_NAMES), 3), float("nan"), **to)
        for b, o in enumerate(observations):
            if o.keypoints_3d is not None:
                kp[b] = o.keypoints_3d.to(**to)
        extra["keypoints_3d"] = kp
    return MultiViewTarget(views, rotation, translation, has_mask, has_depth, has_keypoints, **extra)


# ----------------------------------------------------------------------------- energy
def _view_average(values: list, flags: torch.Tensor) -> torch.Tensor:
    """(B,) the mean of the V (B,) ``values`` over the views flagged in ``flags`` (B, V); 0 where none."""
    f = flags.to(values[0].dtype)
    return (torch.stack(values, 1) * f).sum(1) / f.sum(1).clamp(min=1)


def _view_residuals(values: list, flags: torch.Tensor) -> torch.Tensor:
    """(B, sum M_v) the V (B, M_v) residuals scaled so that their squares sum to :func:`_view_average`
    of their per-view sums of squares."""
    f = flags.to(values[0].dtype)
    scale = (f / f.sum(1, keepdim=True).clamp(min=1)).sqrt()
    return torch.cat([r * scale[:, v, None] for v, r in enumerate(values)], 1)


def multiview_image_terms(fitter, out, target: MultiViewTarget, render_settings: dict | None = None,
                          robust: float | None = None, residuals: bool = False) -> tuple[dict, list]:
    """The view-averaged ``silhouette``, ``depth`` and ``keypoints_2d`` terms of a hand output in the
    world frame (see the module docstring), as (B,) energies or, with ``residuals``, as (B, M)
    residual vectors whose squares sum to them; and the V renders.

    Args:
        fitter: the :class:`~fitting.Fitter` (renderer, faces, weights, depth beta).
        out: the :class:`hands.HandOutput` (vertices (B, V, 3), keypoints (B, 21, 3); world, mm).
        target: the batch; render_settings: the stage's renderer overrides;
        robust: the occlusion-aware depth's ``occlusion_mm`` (energies only) or None.
    """
    w, cfg = fitter.config.weights, fitter.config
    overrides = fitter._render_overrides(render_settings)
    sil, dep, kps, renders = [], [], [], []
    for v, view in enumerate(target.views):
        verts = target.to_camera(out.vertices, v)
        render = fitter.renderer(verts, fitter.model.faces, view.camera, **overrides)
        renders.append(render)
        if residuals:
            sil.append(silhouette_residuals(render.silhouette, view.mask))
            dep.append(depth_residuals(render.depth, view.depth, beta=cfg.depth_beta))
        else:
            sil.append(silhouette_loss(render.silhouette, view.mask))
            dep.append(depth_loss(render.depth, view.depth, beta=cfg.depth_beta, occlusion_mm=robust))
        if w["keypoints_2d"] and view.keypoints_2d is not None:  # some frame's view has them (no host sync)
            uv = view.camera.project(target.to_camera(out.keypoints, v))
            target_uv = view.keypoints_2d
            fn = keypoint_residuals if residuals else keypoint_2d_loss
            kps.append(fn(uv, target_uv, view.keypoint_weights))
        else:
            zeros = out.keypoints.new_zeros(out.keypoints.shape[0], *(() if not residuals else (1,)))
            kps.append(zeros)
    combine = _view_residuals if residuals else _view_average
    terms = {"silhouette": combine(sil, target.has_mask), "depth": combine(dep, target.has_depth)}
    if w["keypoints_2d"] and any(view.keypoints_2d is not None for view in target.views):
        terms["keypoints_2d"] = combine(kps, target.has_keypoints)
    return terms, renders


# ----------------------------------------------------------------------------- the fit
@dataclasses.dataclass
class PreparedViews:
    """What :func:`prepare_views` makes of one :class:`~fitting.MultiViewObservation` on the CPU.

    Attributes:
        crops: V :class:`~fitting.preprocess.HandCrop`; centre: (3,) float64 mm, world frame;
        how, source: how the centre was found and of what (see :func:`hand_centre`); candidates: ``(global_orient
        (K, 3) rad, transl (K, 3) mm)`` float64, world frame (:func:`view_candidates`).
    """

    crops: list
    centre: torch.Tensor
    how: str
    source: str
    candidates: tuple


def prepare_views(observation: MultiViewObservation, box_mm: float, out_size: int,
                  template_keypoints: torch.Tensor | None = None) -> PreparedViews:
    """Crop every view and find the first centre and candidates (CPU; :func:`crop_views`,
    :func:`view_candidates` with ``template_keypoints``, (21, 3) mm); the fit then runs on the
    fitter's device (:func:`fit_multiview`).

    Raises:
        InputError: see :func:`crop_views`.
    """
    crops, centre, how, source = crop_views(observation, box_mm, out_size)
    return PreparedViews(crops, centre, how, source,
                         view_candidates(observation, crops, centre, source, template_keypoints))


def template_keypoints(model) -> torch.Tensor:
    """(21, 3) float64 mm on the CPU: a hand model's neutral keypoints (rest pose at the origin)."""
    with torch.no_grad():
        return model(**model.neutral_parameters(1)).keypoints[0].detach().cpu().double()


def fit_multiview(fitter, observations: list[MultiViewObservation], prepared: list | None = None) -> list[FitResult]:
    """Fit B multi-view observations (equal view counts) as one batch: crop every view, find the
    hand's centre and the principal-axis candidates (module docstring), rank them and the
    in-plane rotations with the multi-view energy, then the configured stages.

    Returns:
        B :class:`~fitting.FitResult`, in the rig's world frame (vertices, keypoints, params),
        with ``observation`` the :class:`~fitting.MultiViewObservation`, ``crop`` and
        ``render`` the first view's. Metrics: ``iou`` (mean over the views with a mask;
        ``iou/<view>`` each), ``depth_mean_mm`` / ``depth_median_mm`` (mean over the views
        with depth; NaN without), ``mpjpe_mm`` with world ``keypoints_3d``,
        ``keypoints_2d_error_px`` (mean reprojection error over the views with 2D keypoints,
        full-image px), the penetration metrics, ``iterations``, ``search_iterations``,
        ``seconds``, ``nan_events``, and ``init`` how the centre was found.

    Args:
        fitter: the :class:`~fitting.Fitter`; observations: B multi-view observations.
        prepared: their :func:`prepare_views` (made here when None).

    Raises:
        InputError: see :func:`crop_views`, :func:`stack_views`.
    """
    from .determinism import deterministic

    t0 = time.perf_counter()
    cfg = fitter.config
    if prepared is None:
        template = template_keypoints(fitter.model)
        prepared = [prepare_views(o, cfg.box_mm, cfg.working_size, template) for o in observations]
    with deterministic(fitter.device, fitter.config.deterministic):
        return _fit_multiview(fitter, observations, prepared, t0)


def _fit_multiview(fitter, observations, prepared, t0):
    cfg, dev, dt = fitter.config, fitter.device, fitter.dtype
    B = len(observations)
    crops = [p.crops for p in prepared]
    target = stack_views(observations, crops, dev, dt)
    init, spent = initial_parameters(fitter, None, target, candidates=[p.candidates for p in prepared])
    init, spent_hyp = search_hypotheses(fitter, target, init)
    stages = tuple(s for s in cfg.stages if not set(s.free) <= GLOBAL_PARAMETERS)
    state = fitter.run(target, init, stages=stages)
    with torch.no_grad():
        out = fitter.model(**state.params)
        _, renders = multiview_image_terms(fitter, out, target)
        per_view = [fit_metrics(r, view) for r, view in zip(renders, target.views)]
        nan = torch.tensor(float("nan"), device=dev, dtype=dt)

        def average(key, flags):
            values = torch.stack([torch.nan_to_num(m[key], nan=0.0) for m in per_view], 1)
            ok = flags & torch.stack([torch.isfinite(m[key]) for m in per_view], 1)
            n = ok.sum(1)
            return torch.where(n > 0, (values * ok).sum(1) / n.clamp(min=1), nan)

        metrics = {"iou": average("iou", target.has_mask),
                   "depth_mean_mm": average("depth_mean_mm", target.has_depth),
                   "depth_median_mm": average("depth_median_mm", target.has_depth)}
        for v, name in enumerate(observations[0].rig.names):
            metrics[f"iou/{name}"] = torch.where(target.has_mask[:, v], per_view[v]["iou"], nan)
        p = fitter.proxies
        largest, pairs = sphere_overlap_stats(p.centers(out), p.radii, p.allowed)
        metrics.update(penetration_max_mm=largest, penetration_pairs=pairs)
        if target.keypoints_3d is not None:
            metrics["mpjpe_mm"] = mpjpe(out.keypoints, target.keypoints_3d)
        if bool(target.has_keypoints.any()):
            errors = []  # per view (B,): mean reprojection error in the full image's pixels
            for v in range(len(target.views)):
                kp = torch.full((B, len(KEYPOINT_NAMES), 2), float("nan"), device=dev, dtype=dt)
                for b, o in enumerate(observations):
                    if o.views[v].keypoints_2d is not None:
                        kp[b] = o.views[v].keypoints_2d.to(dev, dt)
                cam = Camera.cat([o.views[v].camera.to(dev, dt) for o in observations])
                uv = cam.project(target.to_camera(out.keypoints, v))
                errors.append(torch.nan_to_num((uv - kp).norm(dim=-1).nanmean(-1)))
            metrics["keypoints_2d_error_px"] = _view_average(errors, target.has_keypoints)
    seconds = (time.perf_counter() - t0) / B
    metrics = {k: v.cpu().tolist() for k, v in metrics.items()}
    counts = {"iterations": state.iterations.cpu().tolist(), "search_iterations": (spent + spent_hyp).cpu().tolist(),
              "nan_events": state.nan_events.cpu().tolist()}
    history = [{k: (v if k in ("stage", "iteration") else v.cpu()) for k, v in h.items()} for h in state.history]
    params = {k: v.detach().cpu() for k, v in state.params.items()}
    vertices, keypoints = out.vertices.detach().cpu(), out.keypoints.detach().cpu()
    render0 = RenderOutput(*(None if x is None else x.detach().cpu() for x in renders[0]))
    results = []
    for b, o in enumerate(observations):
        m = {k: (int(v[b]) if k == "penetration_pairs" else float(v[b])) for k, v in metrics.items()}
        m.update({k: int(v[b]) for k, v in counts.items()}, seconds=seconds, init=prepared[b].how)
        frame_history = [{k: (v if k in ("stage", "iteration") else float(v[b])) for k, v in h.items()}
                         for h in history if bool(h["active"][b])]
        results.append(FitResult(name=o.name, params={k: v[b].clone() for k, v in params.items()},
                                 vertices=vertices[b], faces=fitter.model.faces.cpu(), keypoints=keypoints[b],
                                 metrics=m, history=frame_history, crop=crops[b][0], render=render0.select(b),
                                 observation=o))
    return results
