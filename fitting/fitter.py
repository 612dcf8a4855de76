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

from hands import HandModel
from losses import (
    depth_loss,
    edge_loss,
    joint_limit_loss,
    keypoint_2d_loss,
    keypoint_3d_loss,
    laplacian_loss,
    normal_consistency_loss,
    offset_loss,
    point_to_vertex_loss,
    pose_prior_loss,
    silhouette_loss,
)
from renderers import Camera, RenderOutput

PARAMETER_NAMES = ("global_orient", "transl", "theta", "alpha", "beta", "offsets")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One optimisation stage.

    Attributes:
        name: shown in the history.
        free: the parameters optimised in this stage (others stay fixed).
        iterations: the most iterations; a frame leaves the stage earlier when converged.
        render_settings: per-call renderer overrides for this stage, e.g. a wider soft
            silhouette (``sigma_px``) early on so that the outline pulls from further away.
    """

    name: str
    free: tuple[str, ...]
    iterations: int
    render_settings: dict = dataclasses.field(default_factory=dict)


DEFAULT_STAGES = (
    Stage("global", ("global_orient", "transl"), 40),
    Stage("articulation", ("global_orient", "transl", "theta"), 120),
    Stage("shape", ("global_orient", "transl", "theta", "alpha", "beta", "offsets"), 80),
)

#: Energy weights. Silhouette is a per-pixel mean of squared differences (RealisticHands
#: Eq. 2 over H*W), depth a smooth-L1 in mm (DeepHandMesh), keypoints in mm^2 / px^2, angles in
#: rad^2; the mesh regularisers act on the offset field (laplacian, edge) and the posed mesh
#: (normal), with RealisticHands' ratios (lambda_2..4 = 1, lambda_5 = 0.1) scaled down so they
#: stay below the data terms.
DEFAULT_WEIGHTS = {
    "silhouette": 1.0,
    "depth": 1e-2,
    "points": 2e-3,
    "keypoints_3d": 0.0,
    "keypoints_2d": 0.0,
    "joint_limits": 1.0,
    "pose_prior": 1e-3,
    "shape_prior": 1e-3,
    "bone_scale_prior": 1.0,
    "offset": 1e-4,
    "laplacian": 1e-3,
    "normal": 1e-3,
    "edge": 1e-4,
}

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
        learning_rates: Adam step size per parameter.
        optimizer: ``"adam"``, ``"sgd"`` (with momentum 0.9, as RealisticHands) or ``"lbfgs"``.
        rel_tol: a frame has converged in a stage when its best energy improved by less than
            ``rel_tol`` (relative) over the last ``patience`` iterations.
        patience: see ``rel_tol``.
        clamp_limits: clamp the articulation to the model's limits after every step (the
            joint-limit energy still applies).
        depth_beta: the smooth-L1 transition in mm.
        z_range: allowed range of the hand's depth (mm); the translation is projected into it.
        lr_decay: each stage's step sizes decay exponentially to this fraction by its last
            iteration (Adam/SGD).
    """

    stages: tuple[Stage, ...] = DEFAULT_STAGES
    weights: dict = dataclasses.field(default_factory=dict)
    learning_rates: dict = dataclasses.field(default_factory=dict)
    optimizer: str = "adam"
    rel_tol: float = 1e-3
    patience: int = 20
    clamp_limits: bool = True
    depth_beta: float = 10.0
    z_range: tuple[float, float] = (150.0, 3000.0)
    lr_decay: float = 0.1

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
        if self.optimizer not in ("adam", "sgd", "lbfgs"):
            raise ValueError(f"FitConfig.optimizer must be 'adam', 'sgd' or 'lbfgs', got {self.optimizer!r}")
        self.weights = {**DEFAULT_WEIGHTS, **self.weights}
        self.learning_rates = {**DEFAULT_LEARNING_RATES, **self.learning_rates}


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
    """

    camera: Camera
    mask: torch.Tensor
    depth: torch.Tensor
    points: torch.Tensor | None = None
    point_lengths: torch.Tensor | None = None
    keypoints_3d: torch.Tensor | None = None
    keypoints_2d: torch.Tensor | None = None
    keypoint_weights: torch.Tensor | None = None

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

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def repeat_interleave(self, n: int) -> "FitTarget":
        """Each frame repeated n times (for trying n initial candidates per frame)."""
        rep = lambda x: None if x is None else x.repeat_interleave(n, dim=0)  # noqa: E731
        cam = self.camera.expand(self.batch_size) if self.camera.batch_size == 1 else self.camera
        idx = torch.arange(self.batch_size, device=self.mask.device).repeat_interleave(n)
        return FitTarget(cam[idx], rep(self.mask), rep(self.depth), rep(self.points), rep(self.point_lengths),
                         rep(self.keypoints_3d), rep(self.keypoints_2d), rep(self.keypoint_weights))


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
        renderer: a module ``renderer(verts (B,V,3) mm, faces (F,3), camera) -> RenderOutput``.
        config: a :class:`FitConfig`.

    Energy (per frame): ``sum_k w_k E_k`` over the terms of :data:`DEFAULT_WEIGHTS`.
    """

    def __init__(self, model: HandModel, renderer: Callable[..., RenderOutput], config: FitConfig | None = None):
        self.model = model
        self.renderer = renderer
        self.config = config or FitConfig()

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
        render = self.renderer(out.vertices, self.model.faces, target.camera, **(render_settings or {}))
        # The silhouette term looks only where the hard render and the target disagree. The
        # soft aggregate of a mesh whose faces are about a pixel wide is a dilated, not
        # saturated, silhouette (0.75 on an edge shared by two faces inside, a halo of about
        # half a pixel outside), so comparing it with a binary mask everywhere biases the fit;
        # on the disagreeing pixels the soft values still carry the gradients that move the
        # outline, and the energy of a perfect fit is exactly zero.
        disagree = render.mask ^ (target.mask > 0.5)
        terms = {
            "silhouette": silhouette_loss(render.silhouette, target.mask, weight=disagree.to(render.silhouette.dtype)),
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

    def _make_optimizer(self, tensors: list, names: list):
        lr = self.config.learning_rates
        groups = [{"params": [t], "lr": lr[n]} for t, n in zip(tensors, names)]
        if self.config.optimizer == "adam":
            return torch.optim.Adam(groups)
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(groups, momentum=0.9)
        return torch.optim.LBFGS([t for t in tensors], lr=1.0, max_iter=1, line_search_fn="strong_wolfe")

    def run(self, target: FitTarget, init: dict, stages: tuple[Stage, ...] | None = None,
            callback: Callable[[dict], None] | None = None) -> FitState:
        """Optimise ``init`` (dict of (B, ...) tensors; missing ones are neutral) against ``target``.

        Per frame: a frame stops a stage when converged (see :class:`FitConfig`); a non-finite
        energy or parameter restores that frame's best state and stops it for the stage (the
        NaN guard), so the result never holds NaN.

        Raises:
            ValueError: ``init`` has an unknown parameter or a batch size other than the target's.
        """
        t0 = time.perf_counter()
        stages = self.config.stages if stages is None else stages
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
        iterations = torch.zeros(B, dtype=torch.long)
        nan_events = torch.zeros(B, dtype=torch.long)
        history: list = []

        for stage in stages:
            free = [n for n in PARAMETER_NAMES if n in stage.free]
            surface = "offsets" in free
            # Each stage has its own energy (the surface terms join with the offsets), so the
            # best state is tracked per stage, starting from where the last one ended.
            with torch.no_grad():
                terms, _, _ = self.energy_terms(params, target, surface, stage.render_settings)
                best_energy = self.total(terms)
            best_energy = torch.where(torch.isfinite(best_energy), best_energy, torch.full_like(best_energy, math.inf))
            tensors = [params[n].requires_grad_(True) for n in free]
            optimizer = self._make_optimizer(tensors, free)
            gamma = self.config.lr_decay ** (1.0 / max(stage.iterations - 1, 1))
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
            active = torch.ones(B, dtype=torch.bool)
            recent = [best_energy.clone()]
            for it in range(stage.iterations):
                if not bool(active.any()):
                    break
                frozen = {n: params[n].detach().clone() for n in free}

                def closure():
                    optimizer.zero_grad(set_to_none=True)
                    terms, _, _ = self.energy_terms(params, target, surface, stage.render_settings)
                    energy = self.total(terms)
                    ok = active & torch.isfinite(energy)
                    loss = torch.where(ok, energy, torch.zeros_like(energy)).sum()
                    if loss.requires_grad:
                        loss.backward()
                    closure.terms, closure.energy = terms, energy
                    closure.at = {n: params[n].detach().clone() for n in free}
                    return loss

                optimizer.step(closure)
                scheduler.step()
                energy = closure.energy.detach()
                # The energy is that of the parameters the closure last saw: keep them if best.
                with torch.no_grad():
                    finite = torch.isfinite(energy)
                    improved = active & finite & (energy < best_energy)
                    for n in PARAMETER_NAMES:
                        src = closure.at[n] if n in closure.at else params[n]
                        best[n][improved] = src[improved]
                    best_energy = torch.where(improved, energy, best_energy)
                    bad = active & ~finite
                    for n in free:
                        bad |= active & ~torch.isfinite(params[n].reshape(B, -1)).all(1)
                    if bool(bad.any()):
                        nan_events += bad.long()
                        active &= ~bad
                    # frames that are not active keep their parameters (best ones if bad)
                    for n in free:
                        keep = ~active
                        params[n][keep] = torch.where(bad.view(-1, *[1] * (params[n].ndim - 1))[keep],
                                                      best[n][keep], frozen[n][keep])
                    self._project(params)
                    iterations += active.long()
                    record = {"stage": stage.name, "iteration": it, "total": energy.clone(),
                              "active": active.clone()}
                    record.update({k: v.detach().clone() for k, v in closure.terms.items()})
                    history.append(record)
                    if callback is not None:
                        callback(record)
                    recent.append(best_energy.clone())
                    if len(recent) > self.config.patience:
                        old = recent[-self.config.patience - 1]
                        gain = (old - best_energy) / old.abs().clamp(min=1e-12)
                        active &= ~(gain < self.config.rel_tol)
            for t in tensors:
                t.requires_grad_(False)
            # the last step's parameters have not been evaluated: evaluate once, keep if best
            with torch.no_grad():
                terms, _, _ = self.energy_terms(params, target, surface, stage.render_settings)
                energy = self.total(terms)
                improved = torch.isfinite(energy) & (energy < best_energy)
                for n in PARAMETER_NAMES:
                    best[n][improved] = params[n][improved]
                best_energy = torch.where(improved, energy, best_energy)
                for n in PARAMETER_NAMES:
                    params[n] = best[n].clone()

        with torch.no_grad():
            terms, _, _ = self.energy_terms(best, target, surface_terms=True)
            weighted = {k: self.config.weights[k] * v for k, v in terms.items()}
        return FitState(params=best, energy=best_energy, terms=weighted, iterations=iterations,
                        history=history, nan_events=nan_events, seconds=time.perf_counter() - t0)
