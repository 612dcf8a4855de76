r"""Pose energies: joint limits, 3D and 2D keypoints, and a simple articulation prior.

Each function returns one value per batch element, shape ``(B,)``. Angles are in radians,
3D positions in millimetres, 2D positions in pixels.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import check_like, check_ndim, check_one_of

__all__ = ["joint_limit_loss", "keypoint_3d_loss", "keypoint_2d_loss", "pose_prior_loss"]


def _check_per_dof(name: str, x: Optional[torch.Tensor], angles: torch.Tensor) -> None:
    if x is not None:
        B, D = angles.shape
        check_one_of(name, x, [(D,), (B, D)], "(D,) or (B, D) like angles")


def joint_limit_loss(angles: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    r"""Squared hinge penalty on articulation angles outside their limits.

    .. math::

        L_{lim}(b) = \sum_{d=1}^{D} \max(0, \underline{\phi}_d - \phi_{b,d})^2
                                   + \max(0, \phi_{b,d} - \overline{\phi}_d)^2

    Zero inside :math:`[\underline{\phi}_d, \overline{\phi}_d]`, quadratic outside (an angle 0.5 rad
    above its upper limit costs 0.25), with a continuous gradient. The limits come from the hand
    model (e.g. the Euler-angle bounds of seed 001, supplementary Table 1); the loss knows
    nothing about which DoF is which. Use ``-inf``/``+inf`` for an unbounded side (e.g. the global
    rotation DoFs): they contribute 0 with zero gradient. A DoF locked at ``lower == upper`` is
    pulled to that value. Limits are not checked for ``lower <= upper`` (that would need a
    device sync); with crossed limits every angle is penalised.

    Args:
        angles: articulation angles :math:`\phi`, shape :math:`(B, D)`, radians.
        lower: lower limits :math:`\underline{\phi}`, shape :math:`(D,)` (or :math:`(B, D)`), radians.
        upper: upper limits :math:`\overline{\phi}`, shape :math:`(D,)` (or :math:`(B, D)`), radians.

    Returns:
        the loss per batch element, shape :math:`(B,)`, rad^2.

    Raises:
        ValueError: if ``angles`` is not :math:`(B, D)` or a limit is neither :math:`(D,)` nor
            :math:`(B, D)`.

    Example:
        >>> lower = torch.tensor([-0.1, 0.0])
        >>> upper = torch.tensor([1.6, 0.0])
        >>> angles = torch.tensor([[0.5, 0.0], [2.1, 0.0], [-0.4, 0.2]])
        >>> joint_limit_loss(angles, lower, upper)  # 0; 0.5 ** 2; 0.3 ** 2 + 0.2 ** 2
        tensor([0.0000, 0.2500, 0.1300])
    """
    check_ndim("angles", angles, "(B, D)")
    _check_per_dof("lower", lower, angles)
    _check_per_dof("upper", upper, angles)
    lower = lower.to(angles.dtype)
    upper = upper.to(angles.dtype)
    below = torch.relu(lower - angles)
    above = torch.relu(angles - upper)
    return (below**2 + above**2).sum(dim=-1)


def _keypoint_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor], dim: int, layout: str
) -> torch.Tensor:
    check_ndim("pred", pred, layout, last=dim)
    check_like("target", target, "pred", pred, layout)
    B, K, _ = pred.shape
    # Keypoints whose target is not finite (NaN marks "missing" in many files) are ignored.
    present = torch.isfinite(target).all(dim=-1)  # (B, K)
    if weights is None:
        w = present.to(pred.dtype)
    else:
        check_one_of("weights", weights, [(B, K), (K,)], "(B, K) or (K,) like pred's first dims")
        w = torch.where(present, weights.to(pred.dtype), 0.0)
    use = w != 0
    # Mask before squaring so that a NaN target never reaches the value or the gradient.
    diff = torch.where(use[..., None], pred - target.to(pred.dtype), 0.0)
    sq = (diff**2).sum(dim=-1)  # (B, K)
    den = w.sum(dim=-1)
    den = torch.where(den != 0, den, torch.ones_like(den))
    return (w * sq).sum(dim=-1) / den


def keypoint_3d_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    r"""Weighted mean squared Euclidean distance between predicted and target 3D keypoints.

    .. math::

        L_{kp3d}(b) = \frac{\sum_k w_{b,k} \lVert p_{b,k} - p^*_{b,k} \rVert_2^2}{\sum_k w_{b,k}}

    The usual keypoint data term (squared, so it pairs with a Gaussian noise model; DeepHandMesh's
    pose loss uses L1 instead). Keypoints with weight 0 or a non-finite target (NaN for "missing")
    are ignored, including in the denominator; an element with no usable keypoint gets exactly 0
    with zero gradient. Weights should be non-negative (e.g. detection confidences).

    Args:
        pred: predicted keypoints, shape :math:`(B, K, 3)`, millimetres.
        target: target keypoints, shape :math:`(B, K, 3)`, millimetres; NaN where missing.
        weights: optional per-keypoint weights, shape :math:`(B, K)` or :math:`(K,)`.

    Returns:
        the loss per batch element, shape :math:`(B,)`, mm^2 (its square root is an RMS error).

    Raises:
        ValueError: if ``pred`` is not :math:`(B, K, 3)`, ``target`` does not have its shape, or
            ``weights`` is neither :math:`(B, K)` nor :math:`(K,)`.

    Example:
        >>> target = torch.zeros(1, 2, 3)
        >>> pred = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])  # 5 mm and 0 mm off
        >>> keypoint_3d_loss(pred, target)
        tensor([12.5000])
        >>> keypoint_3d_loss(pred, target, weights=torch.tensor([1.0, 0.0]))
        tensor([25.])
    """
    return _keypoint_loss(pred, target, weights, 3, "(B, K, 3)")


def keypoint_2d_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    r"""Weighted mean squared distance between projected and target 2D keypoints, in pixels.

    .. math::

        L_{kp2d}(b) = \frac{\sum_k w_{b,k} \lVert \pi(p_{b,k}) - u^*_{b,k} \rVert_2^2}{\sum_k w_{b,k}}

    Same conventions as :func:`keypoint_3d_loss`: weight-0 or non-finite targets are ignored, an
    element with none left gets 0. The value depends on the image resolution (pixels^2): rescale
    the weight when the crop size changes.

    Args:
        pred: projected keypoints, shape :math:`(B, K, 2)`, pixels.
        target: detected keypoints, shape :math:`(B, K, 2)`, pixels; NaN where missing.
        weights: optional per-keypoint weights (e.g. detector confidences), shape :math:`(B, K)` or
            :math:`(K,)`.

    Returns:
        the loss per batch element, shape :math:`(B,)`, pixels^2.

    Raises:
        ValueError: if ``pred`` is not :math:`(B, K, 2)`, ``target`` does not have its shape, or
            ``weights`` is neither :math:`(B, K)` nor :math:`(K,)`.

    Example:
        >>> pred = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
        >>> target = torch.tensor([[[13.0, 24.0], [float("nan"), float("nan")]]])  # 2nd missing
        >>> keypoint_2d_loss(pred, target)
        tensor([25.])
    """
    return _keypoint_loss(pred, target, weights, 2, "(B, K, 2)")


def pose_prior_loss(
    angles: torch.Tensor, mean: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    r"""A simple articulation prior: squared L2 distance of the angles from a mean pose.

    .. math::

        L_{prior}(b) = \sum_{d=1}^{D} w_d \, (\phi_{b,d} - \mu_d)^2

    With ``weight`` the inverse variances of the DoFs, this is the negative log-likelihood (up to
    a factor 2 and a constant) of a diagonal Gaussian pose prior. With the defaults
    (:math:`\mu = 0`, the open-hand rest pose, and :math:`w = 1`) it pulls towards the rest pose.

    Args:
        angles: articulation angles :math:`\phi`, shape :math:`(B, D)`, radians.
        mean: the mean pose :math:`\mu`, shape :math:`(D,)` or :math:`(B, D)`, radians; 0 if None.
        weight: per-DoF weights :math:`w`, shape :math:`(D,)` or :math:`(B, D)`, 1/rad^2; 1 if None.

    Returns:
        the loss per batch element, shape :math:`(B,)`, rad^2 (unitless with ``weight``).

    Raises:
        ValueError: if ``angles`` is not :math:`(B, D)` or ``mean`` / ``weight`` is neither
            :math:`(D,)` nor :math:`(B, D)`.

    Example:
        >>> angles = torch.tensor([[0.0, 0.0], [0.3, -0.4]])
        >>> pose_prior_loss(angles)
        tensor([0.0000, 0.2500])
    """
    check_ndim("angles", angles, "(B, D)")
    _check_per_dof("mean", mean, angles)
    _check_per_dof("weight", weight, angles)
    diff = angles if mean is None else angles - mean.to(angles.dtype)
    sq = diff**2
    if weight is not None:
        sq = sq * weight.to(angles.dtype)
    return sq.sum(dim=-1)
