"""The analysis-by-synthesis fitter: render the hand, compare, follow the gradients.

:class:`Fitter` is the front door of the library: :meth:`Fitter.fit` takes one
:class:`~fitting.Observation` or a list (one batch) and returns :class:`~fitting.FitResult`
objects; :meth:`Fitter.track` fits a sequence in memory. Underneath, :meth:`Fitter.run`
minimises a weighted sum of energies over the hand's parameters for a batch of B crops at
once, in stages (global transform -> articulation -> shape, bone scales and offsets), with
convergence, stages and the NaN guard tracked per frame, so one frame is just B = 1.

Data flow of :meth:`Fitter.fit`: observation -> :func:`~fitting.preprocess.prepare`
(segment, crop; CPU) -> :func:`stack_targets` (one batched :class:`FitTarget` on the fitter's
device and dtype) -> :func:`~fitting.initialize.initial_parameters` and
:func:`~fitting.initialize.search_hypotheses` -> :meth:`Fitter.run` over the stages ->
:class:`~fitting.FitResult`. Every tensor of the loop is made on the fitter's device, in its
dtype (``Fitter(..., device="cuda", dtype=torch.float64)``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from typing import Callable, Iterable, Iterator

import torch

from hands import CollisionProxies, HandModel
from losses import (
    cylinder_collision_loss,
    depth_loss,
    edge_loss,
    fingertip_palm_penetration_loss,
    joint_limit_loss,
    keypoint_2d_loss,
    keypoint_3d_loss,
    laplacian_loss,
    nearest_vertex,
    normal_consistency_loss,
    offset_loss,
    point_to_vertex_loss,
    pose_prior_loss,
    silhouette_loss,
    sphere_overlap_stats,
    sphere_penetration_loss,
    temporal_smoothness_loss,
)
from renderers import Camera, RenderOutput, make_renderer

from .config import (BONE_SCALE_BOUNDS, DEFAULT_RENDERER, GLOBAL_PARAMETERS, HELD_POSE_PRIOR_WEIGHT, OCCLUDER_MARGIN_MM,
                     OPTIMIZERS,
                     PARAMETER_NAMES, SHAPE_PARAMETERS, TEXTURE_RGB_SCALE, FitConfig, Stage)
from .determinism import deterministic
from .cpu_memory import keep_freed_memory
from .errors import InputError
from .initialize import (WRIST_CANDIDATES, grasp_pose, holds_object, initial_parameters, network_parameters,
                         search_hypotheses, start_articulations)
from .observation import MultiViewObservation, Observation
from .multiview import MultiViewTarget, multiview_image_terms
from .levenberg_marquardt import FORWARD_MODE_RENDERERS, LM_PARAMETERS, levenberg_marquardt_stage
from .tracking_energy import ICP_WEIGHTS, TRACK_PARAMETERS, TRACKING_ENERGIES, IcpEnergy, icp_stage
from .optimizers import BatchedAdam
from .preprocess import HandCrop, prepare
from .evaluation import mpjpe
from .result import FitResult, fit_metrics

log = logging.getLogger(__name__)

__all__ = ["Fitter", "FitTarget", "FitState", "cold_stages", "occluded_pixels", "occluder_weight", "stack_targets", "resolve_device"]


def resolve_device(device) -> torch.device:
    """A :class:`torch.device` from ``"auto"`` (CUDA when available, else the CPU), a name or a device.

    Raises:
        ValueError: an unknown device name, or a CUDA device asked for where none is available.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device)
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} was asked for but no CUDA GPU is available "
                         "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
    return dev


#: Iterations between the checks whether any frame of a batch is still active, on a GPU: the
#: check reads a flag back to the host (a synchronization), so the loop queues this many
#: iterations' kernels between checks (a finished batch then runs at most that many
#: iterations for nothing). On the CPU every iteration checks (it costs nothing there).
GPU_EARLY_EXIT_INTERVAL = 8


def _early_exit_interval(device: torch.device) -> int:
    """Iterations between the loop's "is any frame still active?" checks on ``device``."""
    return 1 if device.type == "cpu" else GPU_EARLY_EXIT_INTERVAL


@dataclasses.dataclass
class FitTarget:
    """A batch of B observations in the renderer's image space.

    Attributes:
        camera: Camera with batch size B (or 1), the crop cameras.
        mask: (B, H, W) float in [0, 1], the segmented hand.
        depth: (B, H, W) mm, the hand's measured depth, 0 where none or not hand.
        points: optional (B, N, 3) mm, the observed hand surface points (camera frame) for the
            data-to-model term; ``point_lengths`` (B,) long, how many of the N are valid.
        keypoints_3d: optional (B, 21, 3) mm; ``keypoints_2d`` optional (B, 21, 2) px.
        keypoint_weights: optional (B, 21), 0 for missing keypoints.
        previous_keypoints: optional (B, T, 21, 3) mm, the fitted keypoints of the T = 1 or 2
            previous frames of a sequence, oldest first, for the ``temporal`` term.
        wrist: optional (B, 3) mm, the wrist where the segmentation cut a forearm off
            (:attr:`fitting.preprocess.HandCrop.wrist_mm`), NaN rows where none was cut,
            for the ``wrist`` term.
        rgb: optional (B, 3, H', W') in [0, 1], the frames' colour in the crop's window at a
            finer resolution (:data:`~fitting.config.TEXTURE_RGB_SCALE` times the crop's side),
            for the ``texture`` term; ``rgb_camera`` its camera (batch B or 1, W' x H');
            ``has_rgb`` (B,) bool, False for frames without RGB (zeros in ``rgb``, no
            ``texture`` term).
        occluder_depth: optional (B, H, W) mm, the observed depth of a held object separated
            from the hand mask (:func:`fitting.preprocess.separate_held_object`), 0 elsewhere:
            where the model renders behind it (hidden by it), the silhouette term does not push
            the model out (:func:`occluder_weight`).
    """

    camera: Camera
    mask: torch.Tensor
    depth: torch.Tensor
    points: torch.Tensor | None = None
    point_lengths: torch.Tensor | None = None
    keypoints_3d: torch.Tensor | None = None
    keypoints_2d: torch.Tensor | None = None
    keypoint_weights: torch.Tensor | None = None
    previous_keypoints: torch.Tensor | None = None
    wrist: torch.Tensor | None = None
    rgb: torch.Tensor | None = None
    rgb_camera: Camera | None = None
    has_rgb: torch.Tensor | None = None
    occluder_depth: torch.Tensor | None = None

    def __post_init__(self):
        if self.mask.ndim != 3 or self.depth.shape != self.mask.shape:
            raise ValueError(
                f"FitTarget: mask and depth must both be (B, H, W), got {tuple(self.mask.shape)} "
                f"and {tuple(self.depth.shape)}"
            )
        H, W = self.mask.shape[1:]
        if (self.camera.height, self.camera.width) != (H, W):
            raise ValueError(
                f"FitTarget: camera is {self.camera.width}x{self.camera.height} but the maps are {W}x{H}"
            )
        prev = self.previous_keypoints
        if prev is not None and (prev.ndim != 4 or prev.shape[0] != self.mask.shape[0]
                                 or prev.shape[1] not in (1, 2) or prev.shape[3] != 3):
            raise ValueError(f"FitTarget: previous_keypoints must be (B, T, K, 3) with B = {self.mask.shape[0]} "
                             f"and T = 1 or 2, got {tuple(prev.shape)}")
        if self.rgb is not None:
            B = self.mask.shape[0]
            cam = self.rgb_camera
            if self.rgb.ndim != 4 or self.rgb.shape[:2] != (B, 3) or cam is None \
                    or (cam.height, cam.width) != tuple(self.rgb.shape[2:]) or cam.batch_size not in (1, B) \
                    or self.has_rgb is None or tuple(self.has_rgb.shape) != (B,):
                raise ValueError(f"FitTarget: rgb must be (B, 3, H', W') with B = {B}, with an rgb_camera of "
                                 f"that size and has_rgb (B,), got {tuple(self.rgb.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def device(self) -> torch.device:
        return self.mask.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mask.dtype

    def select(self, idx: torch.Tensor) -> "FitTarget":
        """The frames ``idx`` ((K,) long, on the target's device) of the batch, in that order."""
        take = lambda x: None if x is None else x[idx]  # noqa: E731
        batch = lambda c: c.expand(self.batch_size) if c.batch_size == 1 else c  # noqa: E731
        return FitTarget(batch(self.camera)[idx], take(self.mask), take(self.depth), take(self.points),
                         take(self.point_lengths), take(self.keypoints_3d), take(self.keypoints_2d),
                         take(self.keypoint_weights), take(self.previous_keypoints), take(self.wrist),
                         take(self.rgb), None if self.rgb_camera is None else batch(self.rgb_camera)[idx],
                         take(self.has_rgb), take(self.occluder_depth))

    def repeat_interleave(self, n: int) -> "FitTarget":
        """Each frame repeated n times (for trying n initial candidates per frame)."""
        return self.select(torch.arange(self.batch_size, device=self.device).repeat_interleave(n))


def stack_targets(crops: list[HandCrop], observations: list[Observation] | None = None,
                  device=None, dtype: torch.dtype | None = None) -> FitTarget:
    """One batched :class:`FitTarget` of B crops of equal size, on ``device`` in ``dtype``.

    The hand points are padded to the longest (``point_lengths`` says how many are valid).
    Keypoints of the observations (if any has them) go into the target: ``keypoints_2d``
    mapped from frame to crop pixels (:meth:`HandCrop.to_crop_pixels`), ``keypoints_3d`` as
    they are (camera frame, mm); frames without them get NaN rows (ignored by the energies),
    frames without confidences weight 1.

    Args:
        crops: B crops from :func:`~fitting.preprocess.prepare`.
        observations: the B observations they came from (for the keypoints and the RGB), or None.
            Their RGB images (if any has one) are cropped with each crop's window at
            :data:`~fitting.config.TEXTURE_RGB_SCALE` times the crop's side (bilinear,
            :func:`~fitting.preprocess.resample_window` per channel; the matching
            :meth:`renderers.Camera.crop`), so frames of any size stack; frames without RGB
            get zeros and ``has_rgb`` False.
        device, dtype: where the target lives (default: the crops' CPU float32).
    """
    dtype = dtype or crops[0].mask.dtype
    to = dict(device=device, dtype=dtype)
    B = len(crops)
    lengths = torch.tensor([c.points_mm.shape[0] for c in crops], device=device)
    points = torch.zeros(B, max(c.points_mm.shape[0] for c in crops), 3, **to)
    for b, c in enumerate(crops):
        points[b, : c.points_mm.shape[0]] = c.points_mm.to(**to)
    extra = {}
    observations = observations or []
    for field, dim in (("keypoints_2d", 2), ("keypoints_3d", 3)):
        if any(getattr(o, field) is not None for o in observations):
            kp = torch.full((B, 21, dim), float("nan"), **to)
            for b, (o, c) in enumerate(zip(observations, crops)):
                if getattr(o, field) is not None:
                    value = getattr(o, field).to(**to)
                    kp[b] = c.to_crop_pixels(value) if dim == 2 else value
            extra[field] = kp
    if extra and any(o.keypoint_confidence is not None for o in observations):
        weights = torch.ones(B, 21, **to)
        for b, o in enumerate(observations):
            if o.keypoint_confidence is not None:
                weights[b] = o.keypoint_confidence.to(**to)
        extra["keypoint_weights"] = weights
    if any(getattr(c, "wrist_mm", None) is not None for c in crops):
        wrist = torch.full((B, 3), float("nan"), **to)
        for b, c in enumerate(crops):
            if c.wrist_mm is not None:
                wrist[b] = c.wrist_mm.to(**to)
        extra["wrist"] = wrist
    if any(o.rgb is not None for o in observations):
        extra.update(_stack_rgb(crops, observations, device, dtype))
    if any(getattr(c, "occluder_depth", None) is not None for c in crops):
        extra["occluder_depth"] = torch.stack([torch.zeros_like(c.mask) if c.occluder_depth is None
                                               else c.occluder_depth for c in crops]).to(**to)
    return FitTarget(
        camera=Camera.cat([c.camera.to(device, dtype) for c in crops]),
        mask=torch.stack([c.mask.to(**to) for c in crops]),
        depth=torch.stack([c.hand_depth.to(**to) for c in crops]),
        points=points,
        point_lengths=lengths,
        **extra,
    )


def _stack_rgb(crops: list[HandCrop], observations: list[Observation], device, dtype) -> dict:
    """The ``rgb``, ``rgb_camera`` and ``has_rgb`` of :func:`stack_targets` (CPU crops, then moved)."""
    from .preprocess import resample_window

    side = TEXTURE_RGB_SCALE * int(crops[0].mask.shape[-1])
    rgb = torch.zeros(len(crops), 3, side, side)
    cameras = []
    for b, (o, c) in enumerate(zip(observations, crops)):
        x0, y0, size = c.window
        if o.rgb is not None:
            image = o.rgb.detach().cpu()
            sub = max(1, math.ceil(size / side))  # box-filter a window larger than the crop
            for ch in range(3):
                rgb[b, ch] = resample_window(image[ch], c.window, side, "bilinear", sub)
        frame_camera = o.camera.to("cpu", torch.float32)
        cameras.append(frame_camera.crop(x0, y0, size, side).to(device, dtype))
    has = torch.tensor([o.rgb is not None for o in observations], device=device)
    return {"rgb": rgb.to(device=device, dtype=dtype), "rgb_camera": Camera.cat(cameras), "has_rgb": has}


def occluder_weight(render_depth: torch.Tensor, occluder_depth: torch.Tensor,
                    margin_mm: float = OCCLUDER_MARGIN_MM) -> torch.Tensor:
    """Silhouette weights (B, H, W) that leave out the pixels where a held object hides the model.

    A pixel of a separated occluder (``occluder_depth > 0``) gets weight 0 where the model
    renders there no nearer than ``margin_mm`` in front of the occluder's observed depth: the
    model is behind the object, which hides it, so the empty hand mask there says nothing
    (fingers wrapped round a held object). A model rendered clearly in front of the occluder
    contradicts the observation and is still pushed out (weight 1); so is every other pixel.
    Model-based trackers treat occluded pixels this way (Tagliasacchi et al. 2015, robust
    articulated ICP: only unoccluded data constrains the model).

    Args:
        render_depth: (B, H, W) mm, the model's rendered depth (0 where empty).
        occluder_depth: (B, H, W) mm, the occluder's observed depth, 0 where none.
        margin_mm: how far (mm) in front of the occluder the model may render and still count
            as hidden (sensor noise; :data:`~fitting.config.OCCLUDER_MARGIN_MM`).

    Returns:
        (B, H, W) weights in ``{0, 1}``, ``render_depth``'s dtype and device.
    """
    occ = occluder_depth.to(render_depth.dtype)
    hidden = (occ > 0) & ((render_depth <= 0) | (render_depth >= occ - margin_mm))
    return (~hidden).to(render_depth.dtype)


def occluded_pixels(vertices: torch.Tensor, target: FitTarget, render_mask: torch.Tensor,
                    distance_mm: float) -> torch.Tensor:
    """Mask pixels the fitted model cannot explain: (B, H, W) bool.

    A pixel of the target mask (> 0.5) with observed depth is *unexplained* when the model's
    render does not cover it and its 3D point (the crop camera's unprojection of its depth)
    lies farther than ``distance_mm`` from every model vertex: something other than the hand
    model is seen there (a held object, a remnant of the forearm). Pixels without depth are
    never unexplained.

    Args:
        vertices: (B, V, 3) the fitted model's vertices, camera coordinates, mm.
        target: the B frames' :class:`FitTarget`.
        render_mask: (B, H, W) bool, the model's rendered coverage.
        distance_mm: the distance (mm) beyond which a pixel is unexplained (> 0).

    Raises:
        ValueError: ``distance_mm`` is not > 0.
    """
    if not distance_mm > 0:
        raise ValueError(f"distance_mm must be > 0, got {distance_mm}")
    B, H, W = target.mask.shape
    candidate = (target.mask > 0.5) & (target.depth > 0) & ~render_mask
    camera = target.camera.expand(B) if target.camera.batch_size == 1 else target.camera
    far = torch.zeros_like(candidate)
    for b in range(B):  # only the candidate pixels are searched (a good fit leaves few)
        flat = torch.nonzero(candidate[b].flatten(), as_tuple=True)[0]
        if flat.numel() == 0:
            continue
        v = torch.div(flat, W, rounding_mode="floor").to(target.depth.dtype)
        u = (flat % W).to(target.depth.dtype)
        points = camera[b].unproject(torch.stack([u, v], -1)[None], target.depth[b].flatten()[flat][None])
        with torch.no_grad():
            # the search picks indices (losses.nearest_vertex); distances in the fit's dtype
            verts = vertices[b:b + 1].detach().to(points.dtype)
            idx = nearest_vertex(points, verts)
            nearest = verts.gather(1, idx[..., None].expand(-1, -1, 3))
            dist2 = ((points - nearest) ** 2).sum(-1)[0]
        far.view(B, H * W)[b, flat] = dist2 > distance_mm ** 2
    return candidate & far


@dataclasses.dataclass
class FitState:
    """Result of :meth:`Fitter.run` for B frames.

    Attributes:
        params: the best parameters per frame (dict of (B, ...) tensors).
        energy: (B,) the best total energy.
        terms: dict of (B,) weighted energy terms at the best state.
        iterations: (B,) iterations each frame actually ran (all stages).
        history: one dict per iteration: ``stage``, ``iteration`` and per-term (B,) values
            (unweighted), ``total`` (B,), ``active`` (B,) bool.
        nan_events: (B,) how many times the NaN guard restored a frame.
        seconds: wall time of the run.
    """

    params: dict
    energy: torch.Tensor
    terms: dict
    iterations: torch.Tensor
    history: list
    nan_events: torch.Tensor
    seconds: float


def _scaled_stages(stages, pose_scale: float, shape_scale: float, lr_scale: float, base_rates: dict, at_least: int):
    """``stages`` with each pose stage's iterations times ``pose_scale``, each shape stage's
    (one freeing ``alpha``, ``beta`` or ``offsets``) times ``shape_scale`` (rounded, at least
    ``at_least``) and the step sizes of its free shape parameters (the stage's own, else
    ``base_rates``') times ``lr_scale``; stages
    left with 0 iterations are left out."""
    def scaled(s: Stage) -> Stage:
        shape = set(s.free) & SHAPE_PARAMETERS
        iterations = max(at_least, round(s.iterations * (shape_scale if shape else pose_scale)))
        if not shape or lr_scale == 1:
            return dataclasses.replace(s, iterations=iterations)
        rates = dict(s.learning_rates)
        for n in shape:
            rates[n] = rates.get(n, base_rates[n]) * lr_scale
        return dataclasses.replace(s, iterations=iterations, learning_rates=rates)
    return tuple(s for s in map(scaled, stages) if s.iterations > 0)


def network_stages(config: FitConfig, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
    """``stages`` as a fit from the network's guess runs them: each pose stage (freeing none of
    ``alpha``, ``beta``, ``offsets``) with ``config.network_pose_scale`` times its iterations,
    each shape stage with ``config.network_shape_scale`` times (rounded, at least 1) and its
    shape parameters' step sizes times ``config.network_shape_lr_scale``
    (:data:`fitting.config.FAST_NETWORK_START` for the short stages)."""
    return _scaled_stages(stages, config.network_pose_scale, config.network_shape_scale,
                          config.network_shape_lr_scale, config.learning_rates, at_least=1)


def cold_stages(config: FitConfig, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
    """``stages`` as the fast cold path (``FitConfig(cold="icp")``) runs them after its ICP search:
    each pose stage (freeing none of ``alpha``, ``beta``, ``offsets``) with ``config.cold_pose_scale``
    times its iterations, each shape stage with ``config.cold_shape_scale`` times (rounded) and
    the step sizes of its free shape parameters times ``config.cold_shape_lr_scale`` (fewer,
    larger steps; measured in :data:`fitting.config.COLD_SHAPE_LR_SCALE`); a stage left with 0
    iterations is left out."""
    return _scaled_stages(stages, config.cold_pose_scale, config.cold_shape_scale,
                          config.cold_shape_lr_scale, config.learning_rates, at_least=0)


class Fitter:
    """Fits a :class:`hands.HandModel` to observations by differentiable rendering.

    Args:
        model: the hand model (e.g. :func:`hands.load_hand`). It is moved to ``device`` and
            ``dtype`` in place (``nn.Module.to``).
        renderer: a renderer name (``"soft"``, ``"splat"``, ``"hybrid"``, ``"pytorch3d"``; see
            :data:`renderers.RENDERERS`) or a module ``renderer(verts (B,V,3) mm, faces (F,3),
            camera, **overrides) -> RenderOutput``. Default: :data:`~fitting.config.DEFAULT_RENDERER`.
        config: a :class:`~fitting.FitConfig` (stages, weights, crop size, search).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
            :class:`torch.device`; None keeps the model's device.
        dtype: the floating dtype of the fit (e.g. ``torch.float64``); None keeps the model's.
        init: how a frame without a starting point begins: ``"search"`` (the principal-axis
            candidates and in-plane rotations, :mod:`fitting.initialize`) or ``"network"``
            (the depth initializer's guess, checked against its palm-flipped alternative:
            by their raw energies, and by a short global fit where those are close,
            :func:`~fitting.initialize.network_parameters`; then the stages at the network
            start's lengths, :func:`network_stages`).
        checkpoint: with ``init="network"``, a ``handfit train-init`` (or ``adapt``) checkpoint
            file or a loaded :class:`~fitting.initializer.DepthInitializer`; its hand model and
            crop box must be this fit's (``config.box_mm``). None: the checkpoint shipped in the
            package for the default hand model (:data:`fitting.initializer.DEFAULT_CHECKPOINT`).
        texture: a :class:`~fitting.texture.TextureReference` (the hand's texture, e.g. extracted
            from earlier frames by :class:`~fitting.texture.TextureAccumulator`): the fit then adds
            the ``texture`` energy (NCC, DeepHandMesh supp. Eq. 5) for frames with RGB; None (the
            default) fits without it. Settable later (``fitter.texture = ...``).

    Energy (per frame): ``sum_k w_k E_k`` over the terms of
    :data:`~fitting.config.DEFAULT_WEIGHTS`; the keypoint terms act when the observations
    carry keypoints, the temporal term when a fit has previous frames (:meth:`track`), the
    ``texture`` term when the fitter has a reference texture and the observation has RGB.

    Raises:
        ValueError: an unknown renderer name, a bad device (CUDA asked for without a GPU), a
            non-floating dtype, or an unknown ``init``.
        InputError: ``init="network"`` without a checkpoint for a model other than the default
            one, or a checkpoint that is unreadable or made for another hand model or crop box.

    Example:
        >>> from hands import load_hand                       # doctest: +SKIP
        >>> fitter = Fitter(load_hand("default"), "soft", device="auto")  # doctest: +SKIP
        >>> result = fitter.fit(Observation(depth=depth_mm, camera=camera))  # doctest: +SKIP
        >>> result.metrics["iou"], result.keypoints.shape     # doctest: +SKIP
        (0.95..., torch.Size([21, 3]))
    """

    def __init__(self, model: HandModel, renderer: str | Callable[..., RenderOutput] | None = None,
                 config: FitConfig | None = None, device=None, dtype: torch.dtype | None = None,
                 init: str = "search", checkpoint=None, texture=None):
        if init not in ("search", "network"):
            raise ValueError(f"init must be 'search' or 'network', got {init!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype such as torch.float64, got {dtype!r}")
        if device is not None or dtype is not None:
            model = model.to(device=None if device is None else resolve_device(device), dtype=dtype)
        self.model = model
        if self.device.type == "cpu":
            # the batch's large temporaries reuse freed memory instead of faulting in new pages
            keep_freed_memory()
        self.renderer = make_renderer(renderer or DEFAULT_RENDERER) if isinstance(renderer, (str, type(None))) \
            else renderer
        self.config = config or FitConfig()
        uses_lm = "lm" in (self.config.optimizer, self.config.search_optimizer)
        if uses_lm and isinstance(renderer, str) and renderer not in FORWARD_MODE_RENDERERS:
            raise ValueError(f"optimizer 'lm' needs forward-mode derivatives through the renderer, which the "
                             f"{renderer!r} renderer (PyTorch3D's rasterizer) lacks; use one of "
                             f"{FORWARD_MODE_RENDERERS} or optimizer 'adam'")
        #: the hand's sphere and cylinder proxies (penetration energies and metrics), built once
        #: from the model file's data and moved to the fit's device and dtype
        self.proxies = CollisionProxies(self.model).to(self.device, self.dtype)
        #: the depth initializer network (``init="network"``), else None
        self.initializer = None
        if init == "network":
            self.initializer = self._load_initializer(checkpoint)
        self.texture = texture
        self._grasp_pose = {}  # (device, dtype) -> the grasp prior's (D,) articulation, made once

    @property
    def texture(self):
        """The :class:`~fitting.texture.TextureReference` of the ``texture`` energy, or None
        (set it to a reference or None; it is moved to the fit's device and dtype).

        Levenberg-Marquardt (``optimizer="lm"``) cannot use it: torch's ``grid_sample`` (the
        unwrap's colour lookup) has no forward-mode derivatives.

        Raises:
            InputError: (on setting) not a TextureReference, or an atlas of another hand model.
            ValueError: (on setting) a reference with a ``FitConfig(optimizer="lm")`` (or
                ``search_optimizer="lm"``) and a non-zero ``texture`` weight.
        """
        return self._texture

    @texture.setter
    def texture(self, reference) -> None:
        from .texture import TextureReference

        if reference is not None:
            if not isinstance(reference, TextureReference):
                raise InputError(f"Fitter: texture must be a fitting.texture.TextureReference or None, got "
                                 f"{type(reference).__name__}")
            if int(reference.atlas.faces.max()) >= self.model.v_template.shape[0]:
                raise InputError("Fitter: the reference texture's atlas indexes more vertices than the hand model "
                                 "has: an atlas of another hand model?")
            reference = reference.to(self.device, self.dtype)
        self._texture = reference
        if "lm" in (self.config.optimizer, self.config.search_optimizer):
            self._check_lm_texture()

    def _check_lm_texture(self) -> None:
        if self._texture is not None and self.config.weights["texture"]:
            raise ValueError("the texture energy has no forward-mode derivatives (the unwrap's bilinear colour "
                             "lookup, torch's grid_sample, lacks them), which optimizer 'lm' needs; fit with a "
                             "reference texture with optimizer 'adam' (and search_optimizer 'adam' or None)")

    def _texture_energy(self, vertices: torch.Tensor, target) -> torch.Tensor | None:
        """(B,) the ``texture`` energy (0 for frames without RGB), or None where it does not act."""
        if self._texture is None or not self.config.weights["texture"] or getattr(target, "rgb", None) is None:
            return None
        energy = self._texture.energy(target.rgb, vertices, target.rgb_camera)
        return torch.where(target.has_rgb, energy, torch.zeros_like(energy))

    def _load_initializer(self, checkpoint):
        from .initializer import DepthInitializer, load_initializer

        if checkpoint is None:
            from .initializer import default_checkpoint

            checkpoint = default_checkpoint(self.model)
        if isinstance(checkpoint, DepthInitializer):
            from .initializer import hand_identity

            if hand_identity(checkpoint.hand) != hand_identity(self.model):
                raise InputError("the initializer network was made for another hand model")
            if not math.isclose(checkpoint.box_mm, self.config.box_mm):
                raise InputError(f"the initializer network was trained on a {checkpoint.box_mm:g} mm crop box, "
                                 f"the fit uses {self.config.box_mm:g} mm")
            return checkpoint.to(self.device, self.dtype).eval()
        return load_initializer(checkpoint, self.model, box_mm=self.config.box_mm)

    @property
    def device(self) -> torch.device:
        """Where the fit runs (the model's device)."""
        return self.model.v_template.device

    @property
    def dtype(self) -> torch.dtype:
        """The fit's floating dtype (the model's)."""
        return self.model.v_template.dtype

    def pose_prior_mean(self, target) -> torch.Tensor | None:
        """The pose prior's mean per frame, (B, D) rad, or None (the open hand, 0, for all).

        With ``config.pose_prior`` ``"auto"``, frames with a separated held object
        (``target.occluder_depth``) get the grasp pose (:func:`fitting.initialize.grasp_pose`,
        :data:`~fitting.config.GRASP_FLEXION`), the others 0; ``"grasp"`` gives every frame
        the grasp pose, ``"open"`` none.
        """
        mode = self.config.pose_prior
        if mode == "open":
            return None
        held = None if mode == "grasp" else holds_object(target)
        if mode != "grasp" and held is None:
            return None
        key = (target.device, target.dtype)
        if key not in self._grasp_pose:  # once per device and dtype: no host copy in the loop
            self._grasp_pose[key] = grasp_pose(self.model).to(target.device, target.dtype)
        grasp = self._grasp_pose[key]
        if held is None:
            return grasp.expand(target.batch_size, -1)
        return torch.where(held[:, None], grasp, torch.zeros_like(grasp))

    def _pose_prior_scaled(self, value: torch.Tensor, target, residual: bool = False) -> torch.Tensor:
        """The pose prior's energy (B,) (or residuals (B, D) with ``residual``), scaled in the
        frames with a separated held object (:func:`~fitting.initialize.holds_object`) so that its
        weight there is at least :data:`~fitting.config.HELD_POSE_PRIOR_WEIGHT` (the square root
        of the factor for residuals; a weight of 0 stays 0)."""
        held = holds_object(target)
        w = self.config.weights["pose_prior"]
        if held is None or not 0 < w < HELD_POSE_PRIOR_WEIGHT:
            return value
        scale = HELD_POSE_PRIOR_WEIGHT / w
        scale = scale ** 0.5 if residual else scale
        factor = torch.where(held, torch.full_like(held, scale, dtype=value.dtype), torch.ones_like(held, dtype=value.dtype))
        return value * (factor[:, None] if residual else factor)

    def penetration_terms(self, out) -> dict:
        """The ``penetration`` and ``collision`` energies (B,) of a hand output, unweighted.

        ``penetration`` = rigid sphere term (DeepHandMesh Eq. 2) + ``nonrigid_weight`` x
        fingertip-palm term (Eqs. 3-4), mm; ``collision`` = the cylinder term of seed 001
        (Eqs. 14-18) with the sphere centres as points, mm^2.
        """
        p = self.proxies
        centers = p.centers(out)
        tips, tip_radii = p.fingertip_spheres(centers)
        rigid = sphere_penetration_loss(centers, p.radii, p.allowed)
        nonrigid = fingertip_palm_penetration_loss(tips, tip_radii, p.palm_vertices(out))
        start, end = p.cylinders(centers)
        return {"penetration": rigid + self.config.nonrigid_weight * nonrigid,
                "collision": cylinder_collision_loss(centers, start, end, p.cylinder_radii, p.cylinder_allowed)}

    def _render_overrides(self, render_settings: dict | None) -> dict:
        """The stage's renderer overrides that this renderer has (a splat renderer has no
        blur, say); all of them for a renderer without a settings dataclass."""
        if not render_settings:
            return {}
        settings = getattr(self.renderer, "settings", None)
        if settings is None or not dataclasses.is_dataclass(settings):
            return dict(render_settings)
        fields = {f.name for f in dataclasses.fields(settings)}
        return {k: v for k, v in render_settings.items() if k in fields}

    # -- energy --------------------------------------------------------------------------
    def energy_terms(self, params: dict, target: FitTarget, surface_terms: bool = True,
                     render_settings: dict | None = None, robust: bool = False) -> tuple[dict, RenderOutput, object]:
        """Unweighted energy terms, each (B,), plus the render and the hand output.

        ``surface_terms=False`` leaves out the offset regularisers (offset, Laplacian, edge,
        normal consistency): they only matter while the offsets are free and cost as much as
        a render on the CPU. ``robust=True`` makes the data terms robust at
        ``config.robust_mm`` (:data:`~fitting.config.ROBUST_MM`): the points term truncated,
        the depth term occluder-aware, and the silhouette term weighted 0 on the mask pixels
        the model cannot explain (:func:`occluded_pixels`: not covered by the render, their
        3D point farther than ``robust_mm`` from every vertex, e.g. a held object or a
        forearm remnant), so that only hand surface near the model pulls. :meth:`run` asks
        for it in the stages that free the shape (see :data:`~fitting.config.ROBUST_MM` for
        what robust pose stages did).
        """
        w = self.config.weights
        robust = (self.config.robust_mm or None) if robust else None
        out = self.model(**params)
        if isinstance(target, MultiViewTarget):  # world-frame hand, one render per view
            image, render = multiview_image_terms(self, out, target, render_settings, robust)
        else:
            image = None
            render = self.renderer(out.vertices, self.model.faces, target.camera,
                                   **self._render_overrides(render_settings))
        sil_weight = None
        if robust and image is None:
            # mask pixels the model cannot explain (a held object, a forearm remnant) pull nothing
            sil_weight = (~occluded_pixels(out.vertices, target, render.mask, robust)).to(render.silhouette.dtype)
        if image is None and target.occluder_depth is not None:
            # a separated held object hides the model behind it: no push out of its pixels
            hidden = occluder_weight(render.depth.detach(), target.occluder_depth)
            sil_weight = hidden if sil_weight is None else sil_weight * hidden
        terms = {
            "silhouette": image["silhouette"] if image else silhouette_loss(render.silhouette, target.mask, sil_weight),
            "depth": image["depth"] if image else depth_loss(render.depth, target.depth, beta=self.config.depth_beta,
                                                             occlusion_mm=robust),
            "points": (point_to_vertex_loss(target.points, out.vertices, target.point_lengths, truncation=robust)
                       if target.points is not None and w["points"] else None),
            "joint_limits": joint_limit_loss(params["theta"], self.model.dof_lower, self.model.dof_upper),
            "pose_prior": self._pose_prior_scaled(pose_prior_loss(params["theta"], self.pose_prior_mean(target)), target),
            "shape_prior": (params["beta"] ** 2).sum(-1),
            "bone_scale_prior": ((params["alpha"] - 1.0) ** 2).sum(-1),
        }
        terms = {k: v for k, v in terms.items() if v is not None}
        if surface_terms:
            offsets, faces = params["offsets"], self.model.faces
            terms["offset"] = offset_loss(offsets)
            if w["laplacian"]:
                terms["laplacian"] = laplacian_loss(offsets, faces)
            if w["edge"]:
                terms["edge"] = edge_loss(offsets, faces)
            if w["normal"]:
                terms["normal"] = normal_consistency_loss(out.vertices, faces)
        if w["penetration"] or w["collision"]:
            extra = self.penetration_terms(out)
            terms.update({k: v for k, v in extra.items() if w[k]})
        if target.previous_keypoints is not None and w["temporal"]:
            prev = target.previous_keypoints
            terms["temporal"] = temporal_smoothness_loss(out.keypoints, prev[:, -1],
                                                         prev[:, 0] if prev.shape[1] == 2 else None)
        if target.wrist is not None and w["wrist"]:
            terms["wrist"] = keypoint_3d_loss(out.keypoints[:, :1], target.wrist[:, None])
        if target.keypoints_3d is not None and w["keypoints_3d"]:
            terms["keypoints_3d"] = keypoint_3d_loss(out.keypoints, target.keypoints_3d, target.keypoint_weights)
        if image is not None:
            if "keypoints_2d" in image:
                terms["keypoints_2d"] = image["keypoints_2d"]
        elif target.keypoints_2d is not None and w["keypoints_2d"]:
            uv = target.camera.project(out.keypoints)
            terms["keypoints_2d"] = keypoint_2d_loss(uv, target.keypoints_2d, target.keypoint_weights)
        texture = self._texture_energy(out.vertices, target)
        if texture is not None:
            terms["texture"] = texture
        return terms, render, out

    def residual_terms(self, params: dict, target: FitTarget, surface_terms: bool = True,
                       render_settings: dict | None = None, nearest: torch.Tensor | None = None
                       ) -> tuple[dict, RenderOutput, object]:
        """The energy terms of :meth:`energy_terms` as residual vectors, plus the render and the hand output.

        Every term ``k`` of :meth:`energy_terms` with ``robust=False`` (same keys, same
        conditions; the Levenberg-Marquardt stages use the plain data terms) comes as an
        unweighted (B, M_k) tensor ``r_k`` with ``energy_terms(...)[k] == (r_k ** 2).sum(-1)``
        exactly (:mod:`losses.residuals`; ``tests/test_residuals.py``): per-pixel silhouette
        and depth differences (the depth's smooth-L1 as its square-rooted IRLS form), one
        robust distance per data point, per-coordinate keypoint and temporal differences, one
        residual per DoF for the priors and limits, per sphere pair for the penetration. The
        PyTorch3D mesh regularisers (Laplacian, edge, normal; only with ``surface_terms``)
        and the ``texture`` term (an NCC over patches) enter as the one residual ``sqrt(E_k)``: the Levenberg-Marquardt solver
        (:mod:`fitting.levenberg_marquardt`) leaves the offsets, which they regularise, to Adam.

        Args:
            params, target, surface_terms, render_settings: as :meth:`energy_terms`.
            nearest: optional (B, N) long, the data points' nearest vertices (fixed ICP
                correspondences; searched here when None).

        Returns:
            (dict name -> (B, M_k), the render, the :class:`hands.HandOutput`).
        """
        from losses import (depth_residuals, joint_limit_residuals, keypoint_residuals, penetration_residuals,
                            cylinder_collision_residuals, point_to_vertex_residuals, silhouette_residuals,
                            sqrt_energy_residual, temporal_residuals)

        w, cfg = self.config.weights, self.config
        out = self.model(**params)
        if isinstance(target, MultiViewTarget):  # world-frame hand, one render per view
            image, render = multiview_image_terms(self, out, target, render_settings, residuals=True)
        else:
            image = None
            render = self.renderer(out.vertices, self.model.faces, target.camera,
                                   **self._render_overrides(render_settings))
        theta = params["theta"]
        terms = {
            "silhouette": image["silhouette"] if image else silhouette_residuals(
                render.silhouette, target.mask,
                None if target.occluder_depth is None else occluder_weight(render.depth.detach(),
                                                                           target.occluder_depth)),
            "depth": image["depth"] if image else depth_residuals(render.depth, target.depth, beta=cfg.depth_beta),
            "joint_limits": joint_limit_residuals(theta, self.model.dof_lower, self.model.dof_upper),
            "pose_prior": self._pose_prior_scaled(
                theta if self.pose_prior_mean(target) is None else theta - self.pose_prior_mean(target), target,
                residual=True),
            "shape_prior": params["beta"],
            "bone_scale_prior": params["alpha"] - 1.0,
        }
        if target.points is not None and w["points"]:
            terms["points"] = point_to_vertex_residuals(target.points, out.vertices, target.point_lengths,
                                                        nearest=nearest)
        if surface_terms:
            offsets, faces = params["offsets"], self.model.faces
            terms["offset"] = offsets.flatten(1) / math.sqrt(offsets.shape[1])
            if w["laplacian"]:
                terms["laplacian"] = sqrt_energy_residual(laplacian_loss(offsets, faces))
            if w["edge"]:
                terms["edge"] = sqrt_energy_residual(edge_loss(offsets, faces))
            if w["normal"]:
                terms["normal"] = sqrt_energy_residual(normal_consistency_loss(out.vertices, faces))
        if w["penetration"] or w["collision"]:
            p = self.proxies
            centers = p.centers(out)
            if w["penetration"]:
                tips, tip_radii = p.fingertip_spheres(centers)
                terms["penetration"] = penetration_residuals(centers, p.radii, p.allowed, tips, tip_radii,
                                                             p.palm_vertices(out), cfg.nonrigid_weight)
            if w["collision"]:
                start, end = p.cylinders(centers)
                terms["collision"] = cylinder_collision_residuals(centers, start, end, p.cylinder_radii,
                                                                  p.cylinder_allowed)
        if target.previous_keypoints is not None and w["temporal"]:
            prev = target.previous_keypoints
            terms["temporal"] = temporal_residuals(out.keypoints, prev[:, -1], prev[:, 0] if prev.shape[1] == 2 else None)
        if target.wrist is not None and w["wrist"]:
            terms["wrist"] = keypoint_residuals(out.keypoints[:, :1], target.wrist[:, None])
        if target.keypoints_3d is not None and w["keypoints_3d"]:
            terms["keypoints_3d"] = keypoint_residuals(out.keypoints, target.keypoints_3d, target.keypoint_weights)
        if image is not None:
            if "keypoints_2d" in image:
                terms["keypoints_2d"] = image["keypoints_2d"]
        elif target.keypoints_2d is not None and w["keypoints_2d"]:
            uv = target.camera.project(out.keypoints)
            terms["keypoints_2d"] = keypoint_residuals(uv, target.keypoints_2d, target.keypoint_weights)
        texture = self._texture_energy(out.vertices, target)
        if texture is not None:
            terms["texture"] = sqrt_energy_residual(texture)
        return terms, render, out

    def stack_residuals(self, terms: dict) -> torch.Tensor:
        """(B, M) the weighted residuals ``[sqrt(w_k) r_k]`` of the terms with ``w_k > 0``, so that
        ``(stack_residuals(r) ** 2).sum(-1) == total(energies)``."""
        w = self.config.weights
        return torch.cat([math.sqrt(w[k]) * v for k, v in terms.items() if w[k]], dim=1)

    def total(self, terms: dict) -> torch.Tensor:
        """Weighted sum (B,) of the terms."""
        w = self.config.weights
        return sum(w[k] * v for k, v in terms.items() if w[k])

    # -- optimisation --------------------------------------------------------------------
    def _project(self, params: dict) -> None:
        """Keep the parameters in their valid sets (in place, no gradient)."""
        with torch.no_grad():
            if self.config.clamp_limits:
                params["theta"].copy_(self.model.clamp_theta(params["theta"]))
            lo, hi = self.config.z_range
            params["transl"][:, 2].clamp_(lo, hi)
            params["alpha"].clamp_(*BONE_SCALE_BOUNDS)
            params["beta"].clamp_(-2.0, 2.0)

    def run(self, target: FitTarget, init: dict, stages: tuple[Stage, ...] | None = None,
            callback: Callable[[dict], None] | None = None, optimizer: str | None = None,
            energy: str = "render", icp_weights: dict | None = None) -> FitState:
        """Optimise ``init`` (dict of (B, ...) tensors; missing ones are neutral) against ``target``.

        Each stage runs :class:`BatchedAdam` on its free parameters, or with ``optimizer="lm"``
        (``FitConfig.optimizer``) batched Levenberg-Marquardt
        (:func:`~fitting.levenberg_marquardt.levenberg_marquardt_stage`, at most
        ``FitConfig.lm_iterations`` per stage) on its free pose, bone-scale and shape parameters
        followed by ``FitConfig.lm_offset_iterations`` Adam iterations on the offsets if the
        stage frees them. Per frame: the best state
        is kept; a frame that has not improved for ``patience`` iterations goes back to its
        best state with half the step size, and has converged after ``max_halvings`` halvings
        (see :class:`FitConfig`); a non-finite energy or parameter restores that frame's best
        state and stops it for the stage (the NaN guard), so the result never holds NaN.
        Frames that have stopped are left out of the energy evaluations of the rest of the
        stage (their history records read NaN), so a batch costs what its active frames cost.

        Args:
            target: B crops (:func:`stack_targets`), on the fitter's device.
            init: dict of (B, ...) tensors, moved to the fitter's device and dtype.
            stages: the stages to run (default: the config's).
            callback: called with each iteration's history record.
            optimizer: ``"adam"`` or ``"lm"`` for this call (default: ``FitConfig.optimizer``).
            energy: ``"render"`` (the energy of :meth:`energy_terms`) or ``"icp"``: the
                articulated-ICP tracking energy with closed-form Jacobians
                (:mod:`fitting.tracking_energy`), minimised by LM over each stage's free pose
                parameters (the shape stays as ``init`` has it; ``optimizer`` is then unused),
                at most ``min(stage.iterations, FitConfig.lm_iterations)`` per stage; the
                returned ``terms`` are then the ICP energy's.
            icp_weights: with ``energy="icp"``, overrides of
                :data:`~fitting.tracking_energy.ICP_WEIGHTS` (e.g. the cold path's
                :data:`~fitting.config.ICP_COLD_WEIGHTS`).

        Raises:
            ValueError: ``init`` has an unknown parameter or a batch size other than the target's,
                an unknown ``optimizer`` or ``energy``, or ``"lm"`` with a reference texture (see
                :attr:`texture`).

        On the CPU it runs with deterministic kernels (``FitConfig.deterministic``,
        :mod:`fitting.determinism`): bit-identical whatever the load and the thread count.
        """
        optimizer = self.config.optimizer if optimizer is None else optimizer
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if energy not in TRACKING_ENERGIES:
            raise ValueError(f"energy must be one of {TRACKING_ENERGIES}, got {energy!r}")
        if optimizer == "lm" and energy == "render":
            self._check_lm_texture()
        with deterministic(self.device, self.config.deterministic):
            return self._run(target, init, stages, callback, optimizer, energy, icp_weights)

    def _run(self, target, init, stages, callback, optimizer, energy="render", icp_weights=None) -> FitState:
        t0 = time.perf_counter()
        cfg = self.config
        stages = cfg.stages if stages is None else stages
        B = target.batch_size
        unknown = set(init) - set(PARAMETER_NAMES)
        if unknown:
            raise ValueError(f"init has unknown parameters {sorted(unknown)}; known: {PARAMETER_NAMES}")
        neutral = self.model.neutral_parameters(B)
        params = {}
        for name in PARAMETER_NAMES:
            value = init.get(name, neutral[name])
            if value.shape[0] != B:
                raise ValueError(f"init[{name!r}] has batch size {value.shape[0]}, the target has {B}")
            params[name] = value.detach().clone().to(neutral[name])
        self._project(params)

        dev, dt = self.device, self.dtype
        best = {k: v.clone() for k, v in params.items()}
        best_energy = torch.full((B,), math.inf, device=dev, dtype=dt)
        iterations = torch.zeros(B, dtype=torch.long, device=dev)
        nan_events = torch.zeros(B, dtype=torch.long, device=dev)
        history: list = []

        for stage in stages:
            free = [n for n in PARAMETER_NAMES if n in stage.free]
            if energy == "icp":
                pose_free = [n for n in free if n in TRACK_PARAMETERS]
                if pose_free:
                    def record(rec):
                        history.append(rec)
                        if callback is not None:
                            callback(rec)
                    best_energy, spent, nans = icp_stage(self, params, pose_free, target,
                                                         min(stage.iterations, cfg.lm_iterations),
                                                         stage_name=stage.name, record=record, weights=icp_weights)
                    iterations += spent
                    nan_events += nans
                    for n in PARAMETER_NAMES:
                        best[n] = params[n].clone()
                continue
            if optimizer == "lm":
                lm_free = [n for n in free if n in LM_PARAMETERS]
                if lm_free:
                    def record(rec, stage=stage):
                        history.append(rec)
                        if callback is not None:
                            callback(rec)
                    best_energy, spent, nans = levenberg_marquardt_stage(
                        self, params, lm_free, target, min(stage.iterations, cfg.lm_iterations),
                        stage.render_settings, surface_terms=False, stage_name=stage.name, record=record)
                    iterations += spent
                    nan_events += nans
                    for n in PARAMETER_NAMES:
                        best[n] = params[n].clone()
                # the offsets stay first-order (fitting.levenberg_marquardt explains why)
                adam_free = ["offsets"] if "offsets" in free else []
                budget = min(stage.iterations, cfg.lm_offset_iterations)
            else:
                adam_free, budget = free, stage.iterations
            if adam_free and budget > 0:
                best_energy = self._adam_stage(params, best, target, stage, adam_free, budget, iterations,
                                               nan_events, history, callback)

        with torch.no_grad():
            if energy == "icp":  # no render: the frame's one render is the caller's (metrics)
                last = history[-1] if history else None
                if last is not None and last["stage"] == stages[-1].name:  # the best state's terms
                    weights = {**self.config.weights, **ICP_WEIGHTS, **(icp_weights or {})}
                    weighted = {k: weights[k] * v for k, v in last.items() if k in weights}
                else:
                    weighted = IcpEnergy(self, target, icp_weights).weighted_terms(best)
            else:
                terms, _, _ = self.energy_terms(best, target, surface_terms=True)
                weighted = {k: self.config.weights[k] * v for k, v in terms.items()}
        return FitState(params=best, energy=best_energy, terms=weighted, iterations=iterations,
                        history=history, nan_events=nan_events, seconds=time.perf_counter() - t0)

    def _adam_stage(self, params, best, target, stage, free, n_iter, iterations, nan_events, history, callback):
        """One stage of :class:`BatchedAdam` on ``free`` for at most ``n_iter`` iterations (in place:
        ``params`` ends at each frame's best state, ``iterations``, ``nan_events`` and ``history``
        grow); returns the stage's best energy (B,)."""
        cfg = self.config
        B = target.batch_size
        dev, dt = self.device, self.dtype

        def select(frames: torch.Tensor, new: dict, old: dict) -> None:
            """old[n] <- new[n] for the (B,) bool ``frames``, in place (no host sync)."""
            for n in PARAMETER_NAMES:
                on = frames.view((-1,) + (1,) * (old[n].ndim - 1))
                old[n].copy_(torch.where(on, new[n].detach(), old[n]))

        def restore(frames: torch.Tensor) -> None:
            with torch.no_grad():
                select(frames, best, params)

        check_every = _early_exit_interval(dev)
        surface = "offsets" in free
        # the robust data terms act in the stages that free the shape (ROBUST_MM)
        robust = bool(set(free) & SHAPE_PARAMETERS)
        # Each stage has its own energy (the surface terms join with the offsets), so the
        # best state is tracked per stage, starting from where the last one ended.
        best_energy = torch.full((B,), math.inf, device=dev, dtype=dt)
        reference = torch.full((B,), math.inf, device=dev, dtype=dt)  # energy at the last significant gain
        since = torch.zeros(B, dtype=torch.long, device=dev)
        halvings = torch.zeros(B, dtype=torch.long, device=dev)
        scale = torch.ones(B, device=dev, dtype=dt)
        active = torch.ones(B, dtype=torch.bool, device=dev)
        tensors = {n: params[n].requires_grad_(True) for n in free}
        adam = BatchedAdam(tensors, {n: stage.learning_rates.get(n, cfg.learning_rates[n]) for n in free})
        frames, sub_target = None, target  # the frames evaluated (None: all) and their target
        for it in range(n_iter + 1):
            # the extra pass only evaluates the last step
            last = it == n_iter
            if it % check_every == 0:
                n_active = int(active.sum())
                if n_active == 0:
                    break
                if n_active < (B if frames is None else frames.shape[0]):
                    # leave the converged frames out of the energy (their share of the work)
                    frames = active.nonzero()[:, 0]
                    sub_target = target.select(frames)
            for t in tensors.values():
                t.grad = None
            with torch.set_grad_enabled(not last):
                if frames is None:
                    terms, _, _ = self.energy_terms(params, target, surface, stage.render_settings, robust=robust)
                else:
                    sub = {n: params[n][frames] for n in PARAMETER_NAMES}
                    terms, _, _ = self.energy_terms(sub, sub_target, surface, stage.render_settings, robust=robust)
                    # the left-out frames read NaN (never active again in this stage)
                    terms = {k: torch.full((B,), math.nan, device=dev, dtype=v.dtype).index_copy(0, frames, v)
                             for k, v in terms.items()}
                energy = self.total(terms)
                finite = torch.isfinite(energy)
                for n in free:
                    finite &= torch.isfinite(params[n].detach().reshape(B, -1)).all(1)
                if not last:
                    torch.where(active & finite, energy, torch.zeros_like(energy)).sum().backward()
            with torch.no_grad():
                energy = energy.detach()
                evaluated = active.clone()
                improved = active & finite & (energy < best_energy)
                select(improved, params, best)
                best_energy = torch.where(improved, energy, best_energy)
                # all energies are >= 0, so a relative gain is a factor below the reference
                significant = improved & (energy < reference * (1.0 - cfg.rel_tol))
                reference = torch.where(significant, energy, reference)
                since = torch.where(significant, torch.zeros_like(since), since + 1)
                bad = active & ~finite
                nan_events += bad.long()
                restore(bad)
                active &= ~bad
                stalled = active & (since >= cfg.patience)
                restore(stalled)
                adam.reset(stalled)
                scale = torch.where(stalled, scale * 0.5, scale)
                halvings += stalled.long()
                since = torch.where(stalled, torch.zeros_like(since), since)
                active &= halvings <= cfg.max_halvings
                if not last:
                    record = {"stage": stage.name, "iteration": it, "total": energy.clone(),
                              "active": evaluated}
                    record.update({k: v.detach().clone() for k, v in terms.items()})
                    iterations += evaluated.long()
                    history.append(record)
                    if callback is not None:
                        callback(record)
                    adam.step(scale, active)
                    self._project(params)
        for t in tensors.values():
            t.requires_grad_(False)
        for n in PARAMETER_NAMES:
            params[n] = best[n].clone()
        return best_energy

    # -- the front door ------------------------------------------------------------------
    def fit(self, observations: Observation | MultiViewObservation | Iterable) -> FitResult | list[FitResult]:
        """Fit one observation, or several as one batch: segment, crop, search, stages.

        A :class:`~fitting.MultiViewObservation` (several calibrated views), or an
        :class:`~fitting.Observation` without depth (a mask and/or 2D keypoints), goes through
        :func:`fitting.multiview.fit_multiview` instead: the hand is fitted in the rig's world
        frame (a single view's camera frame) with the energies averaged over the views, from
        a triangulated (or hand-size prior) centre; depth observations in the same call are
        fitted that way too.

        Each frame is segmented (unless it has a mask) and cropped on the CPU
        (:func:`~fitting.preprocess.prepare`), then all frames are fitted together on the
        fitter's device: the best of four principal-axis candidates, the best of the config's
        in-plane rotations, then the stages. Frames may differ in size and camera: each is
        cropped to the working size first.

        Args:
            observations: an :class:`~fitting.Observation` or a sequence of them.

        Returns:
            a :class:`~fitting.FitResult` for one observation, a list (same order) for several.

        Raises:
            InputError: an element is not an Observation, none is given, or a frame has no
                findable hand (:class:`~fitting.errors.NoHandFoundError`).
        """
        single = isinstance(observations, (Observation, MultiViewObservation))
        batch = [observations] if single else list(observations)
        if not batch:
            raise InputError("Fitter.fit: no observation given")
        for i, o in enumerate(batch):
            if not isinstance(o, (Observation, MultiViewObservation)):
                raise InputError(f"Fitter.fit: observations[{i}] must be a fitting.Observation, "
                                 f"got {type(o).__name__}")
        if any(isinstance(o, MultiViewObservation) or o.depth is None for o in batch):
            results = self._fit_views(batch)
            return results[0] if single else results
        cfg = self.config
        crops = [prepare(o, cfg.box_mm, cfg.working_size) for o in batch]
        results = self.fit_crops(crops, observations=batch)
        return results[0] if single else results

    def _fit_views(self, batch: list) -> list[FitResult]:
        """:meth:`fit` of a batch with views without depth or several views
        (:func:`fitting.multiview.fit_multiview`), one batch per view count, in input order."""
        from .multiview import as_multiview, fit_multiview

        views = [o if isinstance(o, MultiViewObservation) else as_multiview(o) for o in batch]
        results: list = [None] * len(views)
        for count in dict.fromkeys(len(o.views) for o in views):
            idx = [i for i, o in enumerate(views) if len(o.views) == count]
            for i, r in zip(idx, fit_multiview(self, [views[i] for i in idx])):
                if isinstance(batch[i], Observation):
                    r.observation = batch[i]
                results[i] = r
        return results

    def track(self, observations: Iterable[Observation], shape: dict | None = None,
              skip_failures: bool = False, **options) -> Iterator[FitResult]:
        """Fit a sequence in memory, frame by frame; yields one :class:`~fitting.FitResult` each.

        The first ``shape_frames`` observations are fitted together and their average shape
        (bone scales, shape coefficients, offsets) is frozen; then each frame starts from the
        constant-velocity prediction of the previous fits, runs the articulation stages with
        the ``temporal`` energy, and is fitted again from the search when its IoU ends below
        ``recover_iou`` (see :class:`~fitting.tracking.Tracker`).

        Args:
            observations: any iterable of :class:`~fitting.Observation` (read lazily).
            shape: a frozen shape (dict of (1, ...) tensors ``alpha``, ``beta``, ``offsets``)
                to use instead of calibrating one.
            skip_failures: a frame without a findable hand is logged and skipped (the next one
                starts from the search) instead of raising.
            **options: fields of :class:`~fitting.tracking.TrackOptions` (``shape_frames``,
                ``warm_start``, ``recover_iou``, ``frame_iterations``, ``recover_from_last_pose``,
                ``energy``, ``tracked_crop``): ``energy="icp", frame_iterations=8`` is the fast
                tracking mode of ``fit-sequence --track`` (a fixed LM budget per warm frame on the
                articulated-ICP energy, :mod:`fitting.tracking_energy`).

        Raises:
            InputError: a frame has no findable hand (unless ``skip_failures``), or no
                calibration frame could be fitted.
        """
        from .tracking import Tracker, TrackOptions

        tracker = Tracker(self, TrackOptions(**options), shape)
        frames = iter(observations)
        pending: list[Observation] = []
        if tracker.shape is None:
            pending = list(itertools.islice(frames, tracker.options.shape_frames))
            tracker.calibrate(pending)
        for obs in itertools.chain(pending, frames):
            try:
                yield tracker.step(obs)
            except InputError as err:
                if not skip_failures:
                    raise
                log.warning("skipped %s: %s", getattr(obs, "name", "frame"), err)

    def fit_crops(self, crops: list[HandCrop], names: list[str] | None = None, *, init: dict | None = None,
                  shape: dict | None = None, previous_keypoints: torch.Tensor | None = None,
                  stages: tuple[Stage, ...] | None = None,
                  observations: list[Observation] | None = None, energy: str = "render") -> list[FitResult]:
        """Fit B prepared crops as one batch (what :meth:`fit` does after cropping).

        Without ``init``, the fit starts from the best principal-axis candidate
        (:func:`~fitting.initialize.initial_parameters`, with ``shape`` if given) turned by
        the best in-plane rotation (:func:`~fitting.initialize.search_hypotheses`), and the
        global-only stages are left out (the search ran them); ``init`` (dict of (B, ...)
        tensors) skips the search.

        Args:
            crops: B :class:`~fitting.preprocess.HandCrop`; names: B labels (default: the
                observations' names, else ``frame<b>``).
            init: optional starting parameters; shape: optional shape for the search.
            previous_keypoints: optional (B, T, 21, 3) mm, the previous frames' fitted
                keypoints, oldest first (T = 1 or 2), for the ``temporal`` term.
            stages: the stages (default: the config's).
            observations: the B observations (their keypoints join the energy and the metrics,
                and :meth:`FitResult.save` needs them).
            energy: ``"render"`` or ``"icp"`` (the tracking energy, with ``init``; see :meth:`run`).

        Returns:
            B :class:`~fitting.FitResult`, tensors on the CPU in the fit's dtype.

        On the CPU everything (search, stages, final render) runs with deterministic kernels
        (``FitConfig.deterministic``, :mod:`fitting.determinism`).
        """
        with deterministic(self.device, self.config.deterministic):
            return self._fit_crops(crops, names, init, shape, previous_keypoints, stages, observations, energy)

    def _fit_crops(self, crops, names, init, shape, previous_keypoints, stages, observations,
                   energy="render") -> list[FitResult]:
        t0 = time.perf_counter()
        B = len(crops)
        if names is None:
            names = [o.name for o in observations] if observations else [f"frame{b}" for b in range(B)]
        dev, dt = self.device, self.dtype
        target = stack_targets(crops, observations, dev, dt)
        if previous_keypoints is not None:
            target = dataclasses.replace(target, previous_keypoints=previous_keypoints.to(dev, dt))
        stages = self.config.stages if stages is None else stages
        search_iterations = torch.zeros(B, dtype=torch.long, device=dev)
        if init is None:
            shape = None if shape is None else {k: v.to(dev, dt) for k, v in shape.items()}
            if self.initializer is not None:
                init, search_iterations = network_parameters(self, self.initializer, crops, target, shape)
                stages = network_stages(self.config, stages)
            else:
                wrists = [c.wrist_mm for c in crops]
                keep = WRIST_CANDIDATES if any(w is not None for w in wrists) else 1
                mean = self.pose_prior_mean(target)
                starts = None if "theta" in (shape or {}) else start_articulations(self, target)
                if starts is not None and mean is not None:
                    # a frame with a held object keeps its grasp as its only start (its rows repeat it)
                    own = (mean != 0).any(-1)
                    if bool(own.all()):  # once per search, outside the loop
                        starts = None
                    else:
                        starts = torch.where(own[:, None, None], mean[:, None].expand(-1, starts.shape[0], -1),
                                             starts[None].expand(mean.shape[0], -1, -1))
                if mean is not None and (shape is None or "theta" not in shape):
                    shape = {**(shape or {}), "theta": mean}  # a held object: start from the grasp
                init, spent = initial_parameters(self, [c.points_mm for c in crops], target, shape, wrists, keep=keep)
                init, spent_hyp = search_hypotheses(self, target, init, wrists=wrists, per_frame=keep,
                                                    starts=starts)
                search_iterations = spent + spent_hyp
                if self.config.cold == "icp":
                    stages = cold_stages(self.config, stages)
            stages = tuple(s for s in stages if not set(s.free) <= GLOBAL_PARAMETERS)
        robust = self.config.robust_mm
        state = self.run(target, init, stages=stages, energy=energy)
        with torch.no_grad():
            out = self.model(**state.params)
            render = self.renderer(out.vertices, self.model.faces, target.camera)
            metrics = fit_metrics(render, target)
            occluded = (occluded_pixels(out.vertices, target, render.mask, robust) if robust
                        else torch.zeros_like(render.mask))
            seen = target.mask > 0.5
            if target.occluder_depth is not None:  # a separated held object is occluded too
                occluded = occluded | (target.occluder_depth > 0)
                seen = seen | (target.occluder_depth > 0)
            metrics["occluded_fraction"] = (occluded.flatten(1).sum(1).to(render.depth.dtype)
                                            / seen.flatten(1).sum(1).clamp(min=1).to(render.depth.dtype))
            p = self.proxies
            largest, pairs = sphere_overlap_stats(p.centers(out), p.radii, p.allowed)
            metrics.update(penetration_max_mm=largest, penetration_pairs=pairs)
            if target.keypoints_3d is not None:
                metrics["mpjpe_mm"] = mpjpe(out.keypoints, target.keypoints_3d)
        seconds = (time.perf_counter() - t0) / B
        metrics = {k: v.cpu().tolist() for k, v in metrics.items()}
        counts = {"iterations": state.iterations.cpu().tolist(), "search_iterations": search_iterations.cpu().tolist(),
                  "nan_events": state.nan_events.cpu().tolist()}
        history = [{k: (v if k in ("stage", "iteration") else v.cpu()) for k, v in h.items()} for h in state.history]
        params = {k: v.detach().cpu() for k, v in state.params.items()}
        vertices, keypoints = out.vertices.detach().cpu(), out.keypoints.detach().cpu()
        faces = self.model.faces.cpu()
        render = RenderOutput(*(None if x is None else x.detach().cpu() for x in render))
        results = []
        for b, (crop, name) in enumerate(zip(crops, names)):
            frame_metrics = {k: (int(v[b]) if k == "penetration_pairs" else float(v[b])) for k, v in metrics.items()}
            frame_metrics.update({k: int(v[b]) for k, v in counts.items()}, seconds=seconds)
            obs = observations[b] if observations else None
            if obs is not None and obs.keypoints_2d is not None:
                uv = obs.camera.to(dtype=dt).project(keypoints[b][None])
                # mean reprojection error over the given keypoints (NaN rows are missing ones)
                frame_metrics["keypoints_2d_error_px"] = float((uv[0] - obs.keypoints_2d.to(dt)).norm(dim=-1).nanmean())
            frame_history = [
                {k: (v if k in ("stage", "iteration") else float(v[b])) for k, v in h.items()}
                for h in history if bool(h["active"][b])
            ]
            results.append(FitResult(
                name=name,
                params={k: v[b].clone() for k, v in params.items()},
                vertices=vertices[b],
                faces=faces,
                keypoints=keypoints[b],
                metrics=frame_metrics,
                history=frame_history,
                crop=crop,
                render=render.select(b),
                observation=obs,
                occluded=occluded[b].cpu(),
            ))
        return results
