"""Frames in, fitted hands out: segmentation -> crop -> initialisation -> staged fit -> metrics."""

from __future__ import annotations

import dataclasses
import time

import torch

from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle

from hands import HandModel
from losses import sphere_overlap_stats
from renderers import Camera, RenderOutput

from .fitter import Fitter, FitConfig, FitState, FitTarget, Stage
from .initialize import global_candidates
from .observation import Observation
from .preprocess import HandCrop, crop_hand, segment_hand

#: Side of the 3D box cropped around the hand (mm) and the working resolution (px).
DEFAULT_BOX_MM = 220.0
DEFAULT_WORKING_SIZE = 96
GLOBAL_PARAMETERS = {"global_orient", "transl"}
SHAPE_PARAMETERS = {"alpha", "beta", "offsets"}
#: Iterations of the global-only fit that ranks the principal-axis candidates.
CANDIDATE_ITERATIONS = 25
#: In-plane rotations (degrees, about the palm normal) tried around the best principal-axis
#: candidate. A spread thumb or a curled finger tilts the blob's long axis by up to about 30
#: degrees, and a hand that starts rotated by a finger's width settles with every finger one
#: gap over (a local minimum the energy ranks clearly worse once the fingers have moved).
IN_PLANE_ANGLES_DEG = (-30.0, -15.0, 0.0, 15.0, 30.0)
#: Iterations per pose stage of the short fits that rank the in-plane hypotheses.
HYPOTHESIS_ITERATIONS = 30


@dataclasses.dataclass
class FitResult:
    """The fit of one frame.

    Attributes:
        name: the observation's name.
        params: the hand parameters, unbatched tensors (see :class:`hands.HandModel`).
        vertices: (V, 3) mm, the input camera's coordinates; ``faces`` (F, 3).
        faces: (F, 3) long.
        keypoints: (21, 3) mm, input camera coordinates, ``hands.KEYPOINT_NAMES`` order.
        metrics: ``iou`` (silhouette IoU against the segmented hand at the working
            resolution), ``depth_mean_mm``/``depth_median_mm`` (absolute depth residual where
            both rendered and observed hand exist), ``iterations`` (of the final fit),
            ``search_iterations`` (of the initial candidates and hypotheses, summed over
            them), ``seconds`` (per frame, search included),
            ``nan_events``, ``penetration_max_mm`` (the largest overlap of two spheres of
            :class:`hands.CollisionProxies` that must not touch) and ``penetration_pairs``
            (how many such pairs overlap), and ``keypoint_error_mm`` when ground truth was
            given.
        history: per iteration: ``stage``, ``iteration``, ``total`` and the unweighted terms.
        crop: the :class:`HandCrop` the fit ran in; ``render`` the final render of the crop.
    """

    name: str
    params: dict
    vertices: torch.Tensor
    faces: torch.Tensor
    keypoints: torch.Tensor
    metrics: dict
    history: list
    crop: HandCrop
    render: RenderOutput


def fit_metrics(render: RenderOutput, target: FitTarget) -> dict[str, torch.Tensor]:
    """Silhouette IoU and absolute depth residuals (mm), each (B,).

    IoU compares the hard rendered coverage with the target mask (> 0.5); the depth residual
    is taken over pixels where both the render and the observation have hand depth (NaN for
    a frame where none overlap).
    """
    target_mask = target.mask > 0.5
    inter = (render.mask & target_mask).flatten(1).sum(1).float()
    union = (render.mask | target_mask).flatten(1).sum(1).float()
    iou = inter / union.clamp(min=1)
    both = render.mask & (target.depth > 0)
    residual = (render.depth - target.depth).abs()
    mean, median = [], []
    for b in range(render.depth.shape[0]):
        r = residual[b][both[b]]
        mean.append(r.mean() if r.numel() else torch.tensor(float("nan")))
        median.append(r.median() if r.numel() else torch.tensor(float("nan")))
    return {"iou": iou, "depth_mean_mm": torch.stack(mean), "depth_median_mm": torch.stack(median)}


def prepare(observation: Observation, box_mm: float = DEFAULT_BOX_MM,
            working_size: int = DEFAULT_WORKING_SIZE) -> HandCrop:
    """Segment the hand (unless the observation has a mask) and crop around it.

    Raises:
        fitting.errors.InputError: no hand could be found (see :func:`segment_hand`).
    """
    mask = observation.mask
    if mask is None:
        mask = segment_hand(observation.depth, observation.camera)
    return crop_hand(observation.depth, mask, observation.camera, box_mm=box_mm, out_size=working_size)


def stack_targets(crops: list[HandCrop]) -> FitTarget:
    """One batched :class:`FitTarget` of B crops of equal size (hand points padded)."""
    lengths = torch.tensor([c.points_mm.shape[0] for c in crops])
    points = torch.zeros(len(crops), int(lengths.max()), 3)
    for b, c in enumerate(crops):
        points[b, : lengths[b]] = c.points_mm
    return FitTarget(
        camera=Camera.cat([c.camera for c in crops]),
        mask=torch.stack([c.mask for c in crops]),
        depth=torch.stack([c.hand_depth for c in crops]),
        points=points,
        point_lengths=lengths,
    )


def initial_parameters(fitter: Fitter, crops: list[HandCrop], target: FitTarget,
                       iterations: int = CANDIDATE_ITERATIONS, shape: dict | None = None) -> tuple[dict, torch.Tensor]:
    """Best of the four principal-axis candidates per frame after a short global fit.

    All 4B candidates are optimised together as one batch. ``shape`` (optional dict of
    (1, ...) or (B, ...) tensors among ``alpha``, ``beta``, ``offsets``) gives every
    candidate that shape instead of the template's.

    Returns:
        the parameters (dict of (B, ...) tensors) and the iterations spent per frame (B,).
    """
    orients, transls = zip(*(global_candidates(c.points_mm) for c in crops))
    n = orients[0].shape[0]
    init = {"global_orient": torch.cat(orients), "transl": torch.cat(transls)}
    for k, v in (shape or {}).items():
        init[k] = v.expand(len(crops), *v.shape[1:]).repeat_interleave(n, 0)
    stage = Stage("candidates", ("global_orient", "transl"), iterations)
    state = fitter.run(target.repeat_interleave(n), init, stages=(stage,))
    choice = state.energy.view(-1, n).argmin(1) + torch.arange(len(crops)) * n
    return {k: v[choice] for k, v in state.params.items()}, state.iterations.view(-1, n).sum(1)


def rotate_in_plane(params: dict, angles_deg: tuple[float, ...]) -> dict:
    """Each frame's parameters repeated once per angle, the hand turned about its palm normal.

    The rotation is about the posed hand's canonical ``z`` axis (the palm normal), through
    the model origin. Returns a dict of (B * K, ...) tensors, frame-major.
    """
    K = len(angles_deg)
    R = axis_angle_to_matrix(params["global_orient"]).repeat_interleave(K, 0)
    normal = R[:, :, 2]
    angles = torch.tensor(angles_deg, dtype=R.dtype).repeat(params["global_orient"].shape[0])
    turned = axis_angle_to_matrix(torch.deg2rad(angles)[:, None] * normal) @ R
    out = {k: v.repeat_interleave(K, 0) for k, v in params.items()}
    out["global_orient"] = matrix_to_axis_angle(turned)
    return out


def search_hypotheses(fitter: Fitter, target: FitTarget, init: dict,
                      angles_deg: tuple[float, ...] = IN_PLANE_ANGLES_DEG,
                      iterations: int = HYPOTHESIS_ITERATIONS) -> tuple[dict, torch.Tensor]:
    """The best in-plane rotation of ``init`` per frame after a short fit of the pose stages.

    The pose stages are the configured stages that free no shape parameter (``alpha``,
    ``beta``, ``offsets``), each capped at ``iterations``; all B * K hypotheses run as one
    batch and the lowest energy wins.

    Returns:
        the winners' parameters (dict of (B, ...) tensors) and the iterations spent per frame.
    """
    K = len(angles_deg)
    B = target.batch_size
    stages = tuple(dataclasses.replace(s, iterations=min(s.iterations, iterations))
                   for s in fitter.config.stages if not set(s.free) & SHAPE_PARAMETERS)
    state = fitter.run(target.repeat_interleave(K), rotate_in_plane(init, angles_deg), stages=stages)
    choice = state.energy.view(B, K).argmin(1) + torch.arange(B) * K
    return {k: v[choice] for k, v in state.params.items()}, state.iterations.view(B, K).sum(1)


def fit_crops(fitter: Fitter, crops: list[HandCrop], names: list[str], init: dict | None = None,
              angles_deg: tuple[float, ...] = IN_PLANE_ANGLES_DEG, shape: dict | None = None,
              previous_keypoints: torch.Tensor | None = None) -> list[FitResult]:
    """Fit B prepared crops as one batch.

    Without ``init``, the fit starts from the best principal-axis candidate
    (:func:`initial_parameters`, with ``shape`` if given) turned by the best of
    ``angles_deg`` (:func:`search_hypotheses`); ``init`` (dict of (B, ...) tensors) skips that
    search. ``previous_keypoints`` (B, T, 21, 3) mm feeds the ``temporal`` term.
    """
    t0 = time.perf_counter()
    target = stack_targets(crops)
    target = dataclasses.replace(target, previous_keypoints=previous_keypoints)
    search_iterations = torch.zeros(len(crops), dtype=torch.long)
    stages = fitter.config.stages
    if init is None:
        init, spent = initial_parameters(fitter, crops, target, shape=shape)
        init, spent_hyp = search_hypotheses(fitter, target, init, angles_deg)
        search_iterations = spent + spent_hyp
        # the global-only stages have run for every hypothesis: go on from the articulation
        stages = tuple(s for s in stages if not set(s.free) <= GLOBAL_PARAMETERS)
    state: FitState = fitter.run(target, init, stages=stages)
    model = fitter.model
    with torch.no_grad():
        out = model(**state.params)
        render = fitter.renderer(out.vertices, model.faces, target.camera)
        metrics = fit_metrics(render, target)
        proxies = fitter.proxies
        largest, pairs = sphere_overlap_stats(proxies.centers(out), proxies.radii, proxies.allowed)
        metrics.update(penetration_max_mm=largest, penetration_pairs=pairs)
    seconds = (time.perf_counter() - t0) / len(crops)
    results = []
    for b, (crop, name) in enumerate(zip(crops, names)):
        frame_metrics = {k: (int(v[b]) if k == "penetration_pairs" else float(v[b])) for k, v in metrics.items()}
        frame_metrics.update(iterations=int(state.iterations[b]),
                             search_iterations=int(search_iterations[b]), seconds=seconds,
                             nan_events=int(state.nan_events[b]))
        history = [
            {k: (v if k in ("stage", "iteration") else float(v[b])) for k, v in h.items()}
            for h in state.history if bool(h["active"][b])
        ]
        results.append(FitResult(
            name=name,
            params={k: v[b].detach().clone() for k, v in state.params.items()},
            vertices=out.vertices[b].detach(),
            faces=model.faces,
            keypoints=out.keypoints[b].detach(),
            metrics=frame_metrics,
            history=history,
            crop=crop,
            render=render.select(b),
        ))
    return results


def fit_observations(observations: list[Observation], model: HandModel, renderer,
                     config: FitConfig | None = None, box_mm: float = DEFAULT_BOX_MM,
                     working_size: int = DEFAULT_WORKING_SIZE,
                     angles_deg: tuple[float, ...] = IN_PLANE_ANGLES_DEG) -> list[FitResult]:
    """Fit the hand to each observation (all of them as one batch; see :func:`fit_crops`).

    Raises:
        fitting.errors.InputError: an observation has no findable hand.
    """
    crops = [prepare(o, box_mm, working_size) for o in observations]
    fitter = Fitter(model, renderer, config)
    return fit_crops(fitter, crops, [o.name for o in observations], angles_deg=angles_deg)
