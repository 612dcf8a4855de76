r"""The energies as residual vectors, for Gauss-Newton / Levenberg-Marquardt solvers.

For every energy :math:`E_k(b)` of this package there is a residual function returning
:math:`r_k(b) \in \mathbb{R}^{M_k}`, shape ``(B, M_k)``, with

.. math::

    E_k(b) = \lVert r_k(b) \rVert_2^2

exactly, normalisation included (a per-pixel mean becomes a division of each residual by
:math:`\sqrt{H W}`), so a solver that minimises :math:`\sum_k w_k \lVert r_k \rVert^2` minimises
the same energy as the first-order fitter (``tests/test_residuals.py`` checks every term).

Robust terms (the smooth-L1 of the depth and data-to-model terms, the hinges of the
penetration terms) use the *square-rooted* cost of Triggs et al. ("Bundle Adjustment - A
Modern Synthesis", 2000, Sec. 4.3): the residual is :math:`r = \sqrt{w(x)}\, x` with the IRLS
weight :math:`w(x) = \rho(x) / x^2` that reproduces the robust cost :math:`\rho(x)` at the
current point, and the weight is differentiated too, so the Jacobian is the exact
derivative of :math:`\operatorname{sign}(x) \sqrt{\rho(x)}` (for the smooth-L1 it is
:math:`x / \sqrt{2 \beta}` below :math:`\beta` and :math:`\operatorname{sign}(x) \sqrt{|x| -
\beta / 2}` above: continuous with a continuous derivative). Where the inner value is 0 and
the cost a hinge (penetration), the Jacobian is taken as 0 (a subgradient).

Residuals are plain differentiable functions of their tensors: ``torch.autograd`` and the
forward mode of ``torch.func`` (``jvp``, ``jacfwd`` with ``vmap``) both go through them.
Shapes as in the energies' docstrings; units are the square roots of the energies' units.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ._checks import check_like, check_ndim, shape_str
from .image import depth_validity
from .points import nearest_vertex

__all__ = [
    "smooth_l1_residual",
    "silhouette_residuals",
    "depth_residuals",
    "point_to_vertex_residuals",
    "keypoint_residuals",
    "joint_limit_residuals",
    "temporal_residuals",
    "hinge_residuals",
    "sqrt_energy_residual",
]


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with derivative 0 (not inf or NaN) where ``x <= 0``."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def smooth_l1_residual(x: torch.Tensor, beta: float) -> torch.Tensor:
    r"""The signed square root of the smooth-L1 cost, elementwise: ``r**2 == smooth_l1(x)``.

    .. math::

        r(x) = \begin{cases} x / \sqrt{2 \beta} & |x| < \beta \\
                             \operatorname{sign}(x) \sqrt{|x| - \beta / 2} & \text{otherwise}\end{cases}

    (:func:`torch.nn.functional.smooth_l1_loss` with the same ``beta``; ``beta = 0`` is the
    L1 cost, :math:`\operatorname{sign}(x) \sqrt{|x|}`). Triggs et al. 2000, Sec. 4.3.

    Args:
        x: any shape, the raw residuals (e.g. mm).
        beta: the transition, >= 0, in the unit of ``x``.

    Returns:
        the same shape as ``x``, in the square root of that unit.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    a = x.abs()
    if beta > 0:
        quad = x / math.sqrt(2.0 * beta)
        lin = torch.sign(x) * _safe_sqrt(a - 0.5 * beta)
        return torch.where(a < beta, quad, lin)
    return torch.sign(x) * _safe_sqrt(a)


def silhouette_residuals(pred: torch.Tensor, target: torch.Tensor,
                         weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Residuals of :func:`losses.silhouette_loss`: ``sqrt(w) (S - M) / sqrt(H W)`` per pixel.

    Args:
        pred: (B, H, W) rendered silhouette in [0, 1]; target: (B, H, W) mask;
            weight: optional (B, H, W) per-pixel weight (>= 0).

    Returns:
        (B, H * W), unitless; ``(r ** 2).sum(-1) == silhouette_loss(pred, target, weight)``.

    Raises:
        ValueError: shapes as in :func:`losses.silhouette_loss`.
    """
    check_ndim("pred", pred, "(B, H, W)")
    check_like("target", target, "pred", pred, "(B, H, W)")
    r = pred - target.to(pred.dtype)
    if weight is not None:
        check_like("weight", weight, "pred", pred, "(B, H, W)")
        r = r * weight.to(pred.dtype).sqrt()
    return r.flatten(1) / math.sqrt(pred.shape[1] * pred.shape[2])


def depth_residuals(pred_depth: torch.Tensor, target_depth: torch.Tensor,
                    pred_mask: Optional[torch.Tensor] = None, target_mask: Optional[torch.Tensor] = None,
                    beta: float = 10.0) -> torch.Tensor:
    r"""Residuals of :func:`losses.depth_loss`: the robust per-pixel depth differences.

    ``r_p = smooth_l1_residual(D_p - D*_p, beta) / sqrt(max(1, N_valid))`` on the valid pixels
    (both maps have hand, and the masks if given; see :func:`losses.depth_loss`), 0 elsewhere
    (NaN or inf target depth never reaches the value or the derivative). The valid set is
    the one of the current point and is not differentiated, as in the energy.

    Args:
        pred_depth: (B, H, W) mm; target_depth: (B, H, W) mm; masks and ``beta`` (mm) as in
            :func:`losses.depth_loss`.

    Returns:
        (B, H * W), sqrt(mm); ``(r ** 2).sum(-1) == depth_loss(...)``.

    Raises:
        ValueError: shapes or ``beta`` as in :func:`losses.depth_loss`.
    """
    valid = depth_validity(pred_depth, target_depth, pred_mask, target_mask, beta)
    diff = torch.where(valid, pred_depth - target_depth.to(pred_depth.dtype), 0.0)
    count = valid.sum(dim=(1, 2)).clamp_min(1).to(pred_depth.dtype)
    r = torch.where(valid, smooth_l1_residual(diff, beta), 0.0)
    return r.flatten(1) / count.sqrt()[:, None]


def point_to_vertex_residuals(points: torch.Tensor, verts: torch.Tensor,
                              lengths: Optional[torch.Tensor] = None, beta: float = 5.0,
                              nearest: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Residuals of :func:`losses.point_to_vertex_loss`: one robust distance per point.

    ``r_i = smooth_l1_residual(d_i, beta) / sqrt(N_b)`` with :math:`d_i` the distance from
    point i to its nearest vertex (0 for padding points). The correspondences are those of
    the current point (ICP-style): ``nearest`` gives them, else they are searched here
    (:func:`losses.nearest_vertex`, no derivative); a solver computes them once per iteration
    and keeps them for the Jacobian.

    Args:
        points: (B, N, 3) mm; verts: (B, V, 3) mm; lengths: optional (B,) long valid counts;
        beta: mm; nearest: optional (B, N) long, the nearest vertex of each point.

    Returns:
        (B, N), sqrt(mm); ``(r ** 2).sum(-1) == point_to_vertex_loss(...)``.

    Raises:
        ValueError: bad shapes.
    """
    check_ndim("points", points, "(B, N, 3)", last=3)
    check_ndim("verts", verts, "(B, V, 3)", last=3)
    B, N, _ = points.shape
    if verts.shape[0] != B:
        raise ValueError(f"verts must have the batch size of points {B}, got {shape_str(verts.shape)}")
    if lengths is None:
        lengths = torch.full((B,), N, dtype=torch.long, device=points.device)
    if nearest is None:
        nearest = nearest_vertex(points.detach(), verts.detach(), lengths)
    elif tuple(nearest.shape) != (B, N):
        raise ValueError(f"nearest must have shape (B, N) = {(B, N)}, got {shape_str(nearest.shape)}")
    near = verts.gather(1, nearest[..., None].expand(-1, -1, 3))
    dist = (((points - near) ** 2).sum(-1) + 1e-9).sqrt()
    valid = torch.arange(N, device=points.device)[None] < lengths[:, None]
    r = torch.where(valid, smooth_l1_residual(dist, beta), torch.zeros_like(dist))
    return r / lengths.clamp(min=1).to(r.dtype).sqrt()[:, None]


def keypoint_residuals(pred: torch.Tensor, target: torch.Tensor,
                       weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Residuals of :func:`losses.keypoint_3d_loss` / :func:`losses.keypoint_2d_loss`.

    ``r_{k,c} = sqrt(w_k / sum_k w_k) (p_{k,c} - p*_{k,c})``, 0 for keypoints with weight 0 or
    a non-finite target.

    Args:
        pred: (B, K, C) mm or px; target: (B, K, C), NaN where missing; weights: optional
            (B, K) or (K,), >= 0.

    Returns:
        (B, K * C), mm or px; ``(r ** 2).sum(-1)`` equals the keypoint energy.

    Raises:
        ValueError: bad shapes.
    """
    check_ndim("pred", pred, "(B, K, C)")
    check_like("target", target, "pred", pred, "(B, K, C)")
    B, K, _ = pred.shape
    present = torch.isfinite(target).all(dim=-1)
    if weights is None:
        w = present.to(pred.dtype)
    else:
        if tuple(weights.shape) not in ((B, K), (K,)):
            raise ValueError(f"weights must have shape (B, K) or (K,), got {shape_str(weights.shape)}")
        w = torch.where(present, weights.to(pred.dtype), 0.0)
    use = w != 0
    diff = torch.where(use[..., None], pred - target.to(pred.dtype), 0.0)
    den = w.sum(dim=-1, keepdim=True)
    den = torch.where(den != 0, den, torch.ones_like(den))
    scale = torch.where(use, (w / den).clamp_min(0), torch.zeros_like(w)).sqrt()
    return (scale[..., None] * diff).flatten(1)


def joint_limit_residuals(angles: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Residuals of :func:`losses.joint_limit_loss`: ``[relu(lower - phi), relu(phi - upper)]``.

    Args:
        angles: (B, D) radians; lower, upper: (D,) or (B, D) radians.

    Returns:
        (B, 2 D) radians.
    """
    check_ndim("angles", angles, "(B, D)")
    lower, upper = lower.to(angles.dtype), upper.to(angles.dtype)
    return torch.cat([torch.relu(lower - angles), torch.relu(angles - upper)], dim=-1)


def temporal_residuals(current: torch.Tensor, previous: torch.Tensor,
                       before_previous: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Residuals of :func:`losses.temporal_smoothness_loss`: the deviations from the
    constant-velocity prediction divided by :math:`\sqrt{M}` (M entries per element, the sum
    running over the last dimension).

    Args:
        current, previous, before_previous: (B, ..., C) as in the energy.

    Returns:
        (B, M * C), the unit of ``current``.
    """
    check_like("previous", previous, "current", current, "(B, ..., C)")
    prediction = previous.to(current.dtype)
    if before_previous is not None:
        check_like("before_previous", before_previous, "current", current, "(B, ..., C)")
        prediction = 2.0 * prediction - before_previous.to(current.dtype)
    d = current - prediction
    M = max(1, d[0, ..., 0].numel()) if d.dim() > 1 else 1
    return d.flatten(1) / math.sqrt(M)


def hinge_residuals(values: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``sqrt(scale * max(values, 0))`` flattened to (B, M): the residuals of a summed hinge
    energy ``scale * sum relu(values)`` (penetration depths, cylinder intrusions); the
    derivative is 0 where a value is <= 0.

    Args:
        values: (B, ...) the hinge arguments (mm or mm^2); scale: >= 0.
    """
    return _safe_sqrt(scale * values.flatten(1))


def sqrt_energy_residual(energy: torch.Tensor) -> torch.Tensor:
    """(B, 1) ``sqrt(E)``: the one residual of a term whose per-element structure a solver
    does not need (e.g. the PyTorch3D mesh regularisers while the offsets stay first-order);
    derivative 0 where ``E = 0``.

    Args:
        energy: (B,) >= 0.
    """
    return _safe_sqrt(energy)[:, None]
