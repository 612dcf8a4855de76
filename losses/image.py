r"""Image-space energies: silhouette and depth.

Both compare a rendered map with an observed one and return one value per batch element,
shape ``(B,)``, so a batch of frames can be weighted, logged and stopped one by one.
Depths are in millimetres; silhouettes and masks are unitless.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import as_mask, check_like, check_ndim

__all__ = ["silhouette_loss", "depth_loss"]


def silhouette_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    r"""Squared L2 distance between a rendered silhouette and a target mask, per pixel.

    .. math::

        L_{sil}(b) = \frac{1}{H W} \sum_{u, v} w_{b,u,v} \, (S_{b,u,v} - M_{b,u,v})^2

    This is :math:`L_{sil} = \lVert S_{mesh} - S_{target} \rVert_2^2` of RealisticHands
    (Seeber, Poranne, Pollefeys, Oswald, Sec. 3.2, the image term of Eq. 5, weight
    :math:`\lambda_1 = 1`) **divided by the pixel count** :math:`H W`, so the value lies in
    ``[0, 1]`` for unit weights and a term weight chosen at one resolution works at any other.
    Multiply by ``H * W`` to get the paper's value.

    Args:
        pred: rendered (soft) silhouette, shape :math:`(B, H, W)`, values in ``[0, 1]``.
        target: target mask, shape :math:`(B, H, W)`, float in ``[0, 1]`` or bool.
        weight: optional per-pixel weight, shape :math:`(B, H, W)` (e.g. 0 outside a crop or
            where the segmentation is unsure). The sum is still divided by :math:`H W`, not by
            the sum of the weights.

    Returns:
        the loss per batch element, shape :math:`(B,)`, dtype of ``pred``, unitless.

    Raises:
        ValueError: if ``pred`` is not :math:`(B, H, W)`, or ``target`` / ``weight`` do not have
            the shape of ``pred``.

    Example:
        >>> pred = torch.zeros(2, 4, 4)
        >>> target = torch.zeros(2, 4, 4, dtype=torch.bool)
        >>> target[1, :2] = True  # 8 of the 16 pixels are hand in frame 1
        >>> silhouette_loss(pred, target)
        tensor([0.0000, 0.5000])
    """
    check_ndim("pred", pred, "(B, H, W)")
    check_like("target", target, "pred", pred, "(B, H, W)")
    if weight is not None:
        check_like("weight", weight, "pred", pred, "(B, H, W)")
    diff2 = (pred - target.to(pred.dtype)) ** 2
    if weight is not None:
        diff2 = diff2 * weight.to(pred.dtype)
    return diff2.sum(dim=(1, 2)) / (pred.shape[1] * pred.shape[2])


def depth_validity(pred_depth: torch.Tensor, target_depth: torch.Tensor, pred_mask=None, target_mask=None,
                   beta: float = 10.0, occlusion_mm: Optional[float] = None) -> torch.Tensor:
    """(B, H, W) bool: the pixels :func:`depth_loss` (and its residuals) compare, after checking
    the arguments: both depths present, inside the given masks, and (with ``occlusion_mm``)
    not observed more than that far in front of the render.

    Raises:
        ValueError: bad shapes (naming the argument), ``beta`` < 0 or ``occlusion_mm`` <= 0.
    """
    check_ndim("pred_depth", pred_depth, "(B, H, W)")
    check_like("target_depth", target_depth, "pred_depth", pred_depth, "(B, H, W)")
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (millimetres), got {beta}")
    if occlusion_mm is not None and not occlusion_mm > 0:
        raise ValueError(f"occlusion_mm must be > 0 (millimetres) or None, got {occlusion_mm}")
    valid = (pred_depth > 0) & (target_depth > 0)
    if occlusion_mm is not None:
        valid = valid & ~(target_depth.to(pred_depth.dtype) < pred_depth.detach() - occlusion_mm)
    if pred_mask is not None:
        check_like("pred_mask", pred_mask, "pred_depth", pred_depth, "(B, H, W)")
        valid = valid & as_mask(pred_mask)
    if target_mask is not None:
        check_like("target_mask", target_mask, "pred_depth", pred_depth, "(B, H, W)")
        valid = valid & as_mask(target_mask)
    return valid


def depth_loss(
    pred_depth: torch.Tensor,
    target_depth: torch.Tensor,
    pred_mask: Optional[torch.Tensor] = None,
    target_mask: Optional[torch.Tensor] = None,
    beta: float = 10.0,
    occlusion_mm: Optional[float] = None,
) -> torch.Tensor:
    r"""Masked smooth-L1 distance between a rendered and an observed depth map, in millimetres.

    .. math::

        L_{depth}(b) = \frac{\sum_{p} \delta_{b,p} \, \mathrm{smoothL1}_\beta(D_{b,p} - D^*_{b,p})}
                            {\max(1, \sum_p \delta_{b,p})},
        \qquad
        \mathrm{smoothL1}_\beta(x) =
            \begin{cases} 0.5 x^2 / \beta & |x| < \beta \\ |x| - 0.5 \beta & \text{otherwise}\end{cases}

    The depth map loss of DeepHandMesh (Moon et al. 2020, Sec. 6, "Depth map loss", following
    Ge et al.): :math:`\delta` is 1 on pixels where *both* maps have hand, here
    ``(pred_depth > 0) & (target_depth > 0)`` and, when given, ``pred_mask`` and ``target_mask``.
    The smooth-L1 is :func:`torch.nn.functional.smooth_l1_loss` with the same ``beta`` (in mm):
    quadratic for residuals below ``beta`` and linear above, so a few wrong depth pixels (sensor
    noise, the arm, flying pixels at the silhouette border) do not dominate. The sum is averaged
    over the valid pixels of each element.

    Pixels outside the valid set contribute nothing and get zero gradient, even if their depth is
    NaN or infinite (missing sensor depth may be stored that way; ``NaN > 0`` is False). An element
    with no valid pixel gets exactly 0, not NaN, with zero gradient. The valid set itself is not
    differentiable: pulling the rendered hand onto the observed one is the silhouette loss's job.

    Occluders: with ``occlusion_mm``, a pixel whose observed depth lies more than
    ``occlusion_mm`` *in front of* the rendered one is left out of :math:`\delta` (something
    between the camera and the model, e.g. a held object, is seen there; model-based trackers
    such as Tagliasacchi et al.'s robust articulated ICP (2015) likewise treat such pixels as
    occluded instead of pulling the model forward onto them). Observed depth *behind* the
    model still counts in full.

    Args:
        pred_depth: rendered depth, shape :math:`(B, H, W)`, millimetres, 0 where empty.
        target_depth: observed depth, shape :math:`(B, H, W)`, millimetres, 0 (or NaN) where
            missing or not hand.
        pred_mask: optional extra mask on the rendered side, shape :math:`(B, H, W)`, bool, or
            float thresholded at 0.5 (e.g. a soft silhouette).
        target_mask: optional hand segmentation of the observation, shape :math:`(B, H, W)`,
            bool, or float thresholded at 0.5.
        beta: the smooth-L1 threshold in millimetres, ``>= 0``; ``0`` gives plain L1.
        occlusion_mm: optional, > 0: observed depth this far (mm) or more in front of the
            render counts as an occluder (see above); None counts every pixel.

    Returns:
        the mean smooth-L1 residual per batch element, shape :math:`(B,)`, dtype of
        ``pred_depth``; millimetres for residuals above ``beta`` (and mm / 2 scale below).

    Raises:
        ValueError: if ``pred_depth`` is not :math:`(B, H, W)`, another map does not have its
            shape, or ``beta`` is negative.

    Example:
        >>> pred = torch.full((1, 2, 2), 500.0)
        >>> target = torch.tensor([[[500.0, 520.0], [0.0, 505.0]]])  # one pixel has no depth
        >>> depth_loss(pred, target, beta=10.0)  # (0 + (20 - 5) + 0.5 * 5**2 / 10) / 3
        tensor([5.4167])
    """
    valid = depth_validity(pred_depth, target_depth, pred_mask, target_mask, beta, occlusion_mm)
    # Mask the residual before the smooth-L1, not after: 0 * NaN would leak NaN into the loss
    # and its gradient, torch.where does not.
    residual = torch.where(valid, pred_depth - target_depth.to(pred_depth.dtype), 0.0)
    per_pixel = F.smooth_l1_loss(residual, torch.zeros_like(residual), reduction="none", beta=beta)
    count = valid.sum(dim=(1, 2)).clamp_min(1).to(pred_depth.dtype)
    return per_pixel.sum(dim=(1, 2)) / count
