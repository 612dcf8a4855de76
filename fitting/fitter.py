"""The analysis-by-synthesis optimizer: render the hand, compare, follow the gradients.

:class:`Fitter` minimises a weighted sum of energies over the hand's parameters for a batch of
B frames at once, in stages (global transform -> articulation -> shape, bone scales and
offsets), with convergence, stages and the NaN guard tracked per frame, so one frame is just
B = 1 and batched or GPU fitting needs no other code.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

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
    normal_consistency_loss,
    offset_loss,
    point_to_vertex_loss,
    pose_prior_loss,
    silhouette_loss,
    sphere_penetration_loss,
    temporal_smoothness_loss,
)
from renderers import Camera, RenderOutput, make_renderer

PARAMETER_NAMES = ("global_orient", "transl", "theta", "alpha", "beta", "offsets")

#: The renderer a :class:`Fitter` uses when none is given (see ``bench/renderers.py`` and
#: ``bench/fit_sr305.py --renderer`` for the speed and accuracy of each).
DEFAULT_RENDERER = "soft"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One optimisation stage.

    Attributes:
        name: shown in the history.
        free: the parameters optimised in this stage (others stay fixed).
        iterations: the most iterations; a frame leaves the stage earlier when converged.
        render_settings: per-call renderer overrides for this stage, e.g. a wider soft
            silhouette (``sigma_px``) early on so that the outline pulls from further away.
        learning_rates: step sizes of this stage that differ from the config's, e.g. small
            ones for parameters an earlier stage has converged (Adam's first step moves every
            parameter by its full step size, which would throw a converged pose away).
    """

    name: str
    free: tuple[str, ...]
    iterations: int
    render_settings: dict = dataclasses.field(default_factory=dict)
    learning_rates: dict = dataclasses.field(default_factory=dict)


#: Renderer settings of the default stages: a sharp soft silhouette, blurred over a quarter
#: pixel at any working resolution. A wider blur dilates the soft silhouette (the soft
#: coverage of the 16 nearest faces adds up to about 1 half a pixel outside the outline),
#: so the squared difference to a mask is least for a hand shrunk by that much. Started at
#: the truth of three synthetic frames at 96 px (``bench/silhouette_blur.py``), the fit drifts
#: to mean IoU 0.915 and 2.0 mm keypoint error with a 0.5 px blur (PyTorch3D's default sigma
#: at this size) and stays at 0.969 and 1.0 mm with a quarter pixel.
SHARP_SILHOUETTE = {"sigma_px": 0.25}

DEFAULT_STAGES = (
    Stage("global", ("global_orient", "transl"), 40, SHARP_SILHOUETTE),
    Stage("articulation", ("global_orient", "transl", "theta"), 120, SHARP_SILHOUETTE),
    Stage("shape", ("global_orient", "transl", "theta", "alpha", "beta", "offsets"), 80, SHARP_SILHOUETTE,
          learning_rates={"global_orient": 0.005, "transl": 0.5, "theta": 0.01}),
)

#: Energy weights. Silhouette is a per-pixel mean of squared differences (RealisticHands
#: Eq. 2 over H*W), depth a smooth-L1 in mm (DeepHandMesh), keypoints in mm^2 / px^2, angles in
#: rad^2; the mesh regularisers act on the offset field (laplacian, edge) and the posed mesh
#: (normal), with RealisticHands' ratios (lambda_2..4 = 1, lambda_5 = 0.1) scaled down so they
#: stay below the data terms. Off by default (0), and on where a caller asks for them:
#: ``penetration`` (mm: DeepHandMesh's rigid sphere term plus ``FitConfig.nonrigid_weight``
#: times the fingertip-palm term, on :class:`hands.CollisionProxies`), ``collision`` (mm^2:
#: the cylinder term of seed 001, an alternative to ``penetration``) and ``temporal`` (mm^2:
#: the keypoints' squared acceleration against the previous frames of a sequence, from
#: ``FitTarget.previous_keypoints``).
DEFAULT_WEIGHTS = {
    "silhouette": 1.0,
    "depth": 1e-2,
    "points": 2e-3,
    "keypoints_3d": 0.0,
    "keypoints_2d": 0.0,
    "joint_limits": 1.0,
    "pose_prior": 1e-3,
    "shape_prior": 1e-3,
    "bone_scale_prior": 1e-2,
    "offset": 1e-4,
    "laplacian": 1e-3,
    "normal": 1e-3,
    "edge": 1e-4,
    "penetration": 0.0,
    "collision": 0.0,
    "temporal": 0.0,
}

#: Weights that turn the plausibility terms on, as ``fit-sequence`` and the benches use them:
#: a summed sphere overlap of 5 mm costs about as much as 1 % of the crop's pixels
#: mislabelled (the silhouette term is a per-pixel mean).
PLAUSIBILITY_WEIGHTS = {"penetration": 2e-3}
#: Temporal weight of ``fit-sequence``: a keypoint acceleration of 6 mm/frame^2 costs about as
#: much as 1 % of the crop's pixels mislabelled. Stronger weights lag behind real motion (on
#: synthetic sequences 3e-3 lost the hand within a few frames).
TEMPORAL_WEIGHT = 3e-4

#: Adam step sizes per parameter (radians, mm, unitless).
DEFAULT_LEARNING_RATES = {
    "global_orient": 0.03,
    "transl": 2.0,
    "theta": 0.04,
    "alpha": 0.002,
    "beta": 0.01,
    "offsets": 0.05,
}


@dataclasses.dataclass
class FitConfig:
    """Settings of a fit.

    Attributes:
        stages: the stages, in order.
        weights: energy weights (missing keys take ``DEFAULT_WEIGHTS``); 0 disables a term.
        learning_rates: Adam step size per parameter at the start of each stage.
        patience: a frame whose energy has not improved by ``rel_tol`` (relative) for this
            many iterations goes back to its best state with half its step size.
        rel_tol: see ``patience``.
        max_halvings: a frame has converged in a stage once its step size has been halved
            this many times.
        clamp_limits: clamp the articulation to the model's limits after every step (the
            joint-limit energy still applies).
        depth_beta: the smooth-L1 transition in mm.
        z_range: allowed range of the hand's depth (mm); the translation is projected into it.
        nonrigid_weight: lambda_nr, the weight of the fingertip-palm term inside the
            ``penetration`` energy (DeepHandMesh: 5).
    """

    stages: tuple[Stage, ...] = DEFAULT_STAGES
    weights: dict = dataclasses.field(default_factory=dict)
    learning_rates: dict = dataclasses.field(default_factory=dict)
    patience: int = 6
    rel_tol: float = 1e-3
    max_halvings: int = 4
    clamp_limits: bool = True
    depth_beta: float = 10.0
    z_range: tuple[float, float] = (150.0, 3000.0)
    nonrigid_weight: float = 5.0

    def __post_init__(self):
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"FitConfig.weights: unknown terms {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        unknown = set(self.learning_rates) - set(PARAMETER_NAMES)
        if unknown:
            raise ValueError(f"FitConfig.learning_rates: unknown parameters {sorted(unknown)}")
        for stage in self.stages:
            bad = set(stage.free) - set(PARAMETER_NAMES)
            if bad:
                raise ValueError(f"stage {stage.name!r} frees unknown parameters {sorted(bad)}")
            bad = set(stage.learning_rates) - set(stage.free)
            if bad:
                raise ValueError(f"stage {stage.name!r} sets step sizes of parameters it does not free: "
                                 f"{sorted(bad)}")
        if self.patience < 1 or self.max_halvings < 0:
            raise ValueError(f"FitConfig: patience must be >= 1 and max_halvings >= 0, got "
                             f"{self.patience} and {self.max_halvings}")
        self.weights = {**DEFAULT_WEIGHTS, **self.weights}
        self.learning_rates = {**DEFAULT_LEARNING_RATES, **self.learning_rates}


class BatchedAdam:
    """Adam (Kingma and Ba, ICLR 2015) over (B, ...) tensors with a step size per frame.

    Frames of a batch are independent fits, so each has its own step-size scale and its own
    moment estimates, which :meth:`reset` clears (after a frame is sent back to its best
    state). Frames with ``active = False`` do not move and their moments do not age.

    Args:
        tensors: name -> (B, ...) leaf tensor, updated in place.
        learning_rates: name -> base step size (the parameter's units).
    """

    def __init__(self, tensors: dict, learning_rates: dict, betas=(0.9, 0.999), eps: float = 1e-8):
        self.tensors, self.lr = tensors, learning_rates
        self.betas, self.eps = betas, eps
        B = next(iter(tensors.values())).shape[0]
        self.m = {n: torch.zeros_like(t) for n, t in tensors.items()}
        self.v = {n: torch.zeros_like(t) for n, t in tensors.items()}
        self.steps = torch.zeros(B)

    @torch.no_grad()
    def step(self, scale: torch.Tensor, active: torch.Tensor) -> None:
        """One step with step sizes ``lr * scale[b]`` for the ``active`` (B,) frames."""
        b1, b2 = self.betas
        self.steps += active.to(self.steps.dtype)
        t = self.steps.clamp(min=1)
        for n, x in self.tensors.items():
            if x.grad is None:
                continue
            shape = (-1,) + (1,) * (x.ndim - 1)
            on = active.view(shape)
            g = x.grad
            m = torch.where(on, b1 * self.m[n] + (1 - b1) * g, self.m[n])
            v = torch.where(on, b2 * self.v[n] + (1 - b2) * g * g, self.v[n])
            self.m[n], self.v[n] = m, v
            m_hat = m / (1 - b1 ** t).view(shape)
            v_hat = v / (1 - b2 ** t).view(shape)
            step = self.lr[n] * scale.view(shape) * m_hat / (v_hat.sqrt() + self.eps)
            x -= torch.where(on, step, torch.zeros_like(step))

    def reset(self, frames: torch.Tensor) -> None:
        """Forget the moments of the (B,) bool ``frames``."""
        for n in self.tensors:
            shape = (-1,) + (1,) * (self.m[n].ndim - 1)
            self.m[n] = torch.where(frames.view(shape), torch.zeros_like(self.m[n]), self.m[n])
            self.v[n] = torch.where(frames.view(shape), torch.zeros_like(self.v[n]), self.v[n])
        self.steps[frames] = 0


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

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def repeat_interleave(self, n: int) -> "FitTarget":
        """Each frame repeated n times (for trying n initial candidates per frame)."""
        rep = lambda x: None if x is None else x.repeat_interleave(n, dim=0)  # noqa: E731
        cam = self.camera.expand(self.batch_size) if self.camera.batch_size == 1 else self.camera
        idx = torch.arange(self.batch_size, device=self.mask.device).repeat_interleave(n)
        return FitTarget(cam[idx], rep(self.mask), rep(self.depth), rep(self.points), rep(self.point_lengths),
                         rep(self.keypoints_3d), rep(self.keypoints_2d), rep(self.keypoint_weights),
                         rep(self.previous_keypoints))


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


class Fitter:
    """Fits a :class:`hands.HandModel` to a :class:`FitTarget` by differentiable rendering.

    Args:
        model: the hand model.
        renderer: a renderer name (``"pytorch3d"``, ``"hybrid"``, ``"soft"``, ``"splat"``; see
            :func:`renderers.make_renderer`) or a module ``renderer(verts (B,V,3) mm,
            faces (F,3), camera, **overrides) -> RenderOutput``. Default:
            :data:`DEFAULT_RENDERER`.
        config: a :class:`FitConfig`.

    Energy (per frame): ``sum_k w_k E_k`` over the terms of :data:`DEFAULT_WEIGHTS`.

    Raises:
        ValueError: an unknown renderer name.
    """

    def __init__(self, model: HandModel, renderer: str | Callable[..., RenderOutput] = None,
                 config: FitConfig | None = None):
        self.model = model
        self.renderer = make_renderer(renderer or DEFAULT_RENDERER) if isinstance(renderer, (str, type(None))) \
            else renderer
        self.config = config or FitConfig()
        self._proxies: CollisionProxies | None = None

    @property
    def proxies(self) -> CollisionProxies:
        """The hand's sphere and cylinder proxies (built on first use)."""
        if self._proxies is None:
            self._proxies = CollisionProxies(self.model)
        return self._proxies

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
                     render_settings: dict | None = None) -> tuple[dict, RenderOutput, object]:
        """Unweighted energy terms, each (B,), plus the render and the hand output.

        ``surface_terms=False`` leaves out the offset regularisers (offset, Laplacian, edge,
        normal consistency): they only matter while the offsets are free and cost as much as
        a render on the CPU.
        """
        w = self.config.weights
        out = self.model(**params)
        render = self.renderer(out.vertices, self.model.faces, target.camera,
                               **self._render_overrides(render_settings))
        terms = {
            "silhouette": silhouette_loss(render.silhouette, target.mask),
            "depth": depth_loss(render.depth, target.depth, beta=self.config.depth_beta),
            "points": (point_to_vertex_loss(target.points, out.vertices, target.point_lengths)
                       if target.points is not None and w["points"] else None),
            "joint_limits": joint_limit_loss(params["theta"], self.model.dof_lower, self.model.dof_upper),
            "pose_prior": pose_prior_loss(params["theta"]),
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
        if target.keypoints_3d is not None and w["keypoints_3d"]:
            terms["keypoints_3d"] = keypoint_3d_loss(out.keypoints, target.keypoints_3d, target.keypoint_weights)
        if target.keypoints_2d is not None and w["keypoints_2d"]:
            uv = target.camera.project(out.keypoints)
            terms["keypoints_2d"] = keypoint_2d_loss(uv, target.keypoints_2d, target.keypoint_weights)
        return terms, render, out

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
            params["alpha"].clamp_(0.7, 1.4)
            params["beta"].clamp_(-2.0, 2.0)

    def run(self, target: FitTarget, init: dict, stages: tuple[Stage, ...] | None = None,
            callback: Callable[[dict], None] | None = None) -> FitState:
        """Optimise ``init`` (dict of (B, ...) tensors; missing ones are neutral) against ``target``.

        Each stage runs :class:`BatchedAdam` on its free parameters. Per frame: the best state
        is kept; a frame that has not improved for ``patience`` iterations goes back to its
        best state with half the step size, and has converged after ``max_halvings`` halvings
        (see :class:`FitConfig`); a non-finite energy or parameter restores that frame's best
        state and stops it for the stage (the NaN guard), so the result never holds NaN.

        Raises:
            ValueError: ``init`` has an unknown parameter or a batch size other than the target's.
        """
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

        best = {k: v.clone() for k, v in params.items()}
        best_energy = torch.full((B,), math.inf)
        iterations = torch.zeros(B, dtype=torch.long)
        nan_events = torch.zeros(B, dtype=torch.long)
        history: list = []

        def restore(frames: torch.Tensor) -> None:
            for n in PARAMETER_NAMES:
                params[n][frames] = best[n][frames]

        for stage in stages:
            free = [n for n in PARAMETER_NAMES if n in stage.free]
            surface = "offsets" in free
            # Each stage has its own energy (the surface terms join with the offsets), so the
            # best state is tracked per stage, starting from where the last one ended.
            best_energy = torch.full((B,), math.inf)
            reference = torch.full((B,), math.inf)  # energy at the last significant gain
            since = torch.zeros(B, dtype=torch.long)
            halvings = torch.zeros(B, dtype=torch.long)
            scale = torch.ones(B)
            active = torch.ones(B, dtype=torch.bool)
            tensors = {n: params[n].requires_grad_(True) for n in free}
            adam = BatchedAdam(tensors, {n: stage.learning_rates.get(n, cfg.learning_rates[n]) for n in free})
            for it in range(stage.iterations + 1):
                # the extra pass only evaluates the last step
                last = it == stage.iterations
                if not bool(active.any()):
                    break
                for t in tensors.values():
                    t.grad = None
                with torch.set_grad_enabled(not last):
                    terms, _, _ = self.energy_terms(params, target, surface, stage.render_settings)
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
                    for n in PARAMETER_NAMES:
                        best[n][improved] = params[n][improved]
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
                    if bool(stalled.any()):
                        restore(stalled)
                        adam.reset(stalled)
                        scale[stalled] *= 0.5
                        halvings += stalled.long()
                        since[stalled] = 0
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

        with torch.no_grad():
            terms, _, _ = self.energy_terms(best, target, surface_terms=True)
            weighted = {k: self.config.weights[k] * v for k, v in terms.items()}
        return FitState(params=best, energy=best_energy, terms=weighted, iterations=iterations,
                        history=history, nan_events=nan_events, seconds=time.perf_counter() - t0)
