r"""Temporal smoothness of a trajectory: the acceleration against the previous frames.

Returns one value per batch element, shape ``(B,)``; positions in millimetres (or any unit:
the energy is in that unit squared).
"""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import check_like, check_tensor

__all__ = ["temporal_smoothness_loss"]


def temporal_smoothness_loss(current: torch.Tensor, previous: torch.Tensor,
                             before_previous: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Mean squared deviation from a constant-velocity prediction.

    With two previous frames the prediction is :math:`2 x_{t-1} - x_{t-2}` and the energy is
    the mean squared acceleration; with one, it is :math:`x_{t-1}` (the mean squared
    velocity):

    .. math::

        L_{temp}(b) = \frac{1}{M} \sum_m \lVert x_{b,t,m} - 2 x_{b,t-1,m} + x_{b,t-2,m} \rVert^2

    over the :math:`M` entries of one element (e.g. 21 keypoints x 3 coordinates, then
    divided by 21: the sum runs over the last dimension and the mean over the others). The
    jitter of a fitted sequence (the mean keypoint acceleration in mm/frame^2) is the
    square root of the per-keypoint value of this energy, averaged.

    Args:
        current: :math:`x_t`, shape :math:`(B, ..., C)` (e.g. :math:`(B, 21, 3)` keypoints, mm).
        previous: :math:`x_{t-1}`, the same shape, no gradient needed.
        before_previous: :math:`x_{t-2}`, the same shape, or None.

    Returns:
        the energy per batch element, shape :math:`(B,)`, in the unit of ``current`` squared.

    Raises:
        ValueError: ``current`` has fewer than 2 dimensions or the others differ in shape.

    Example:
        >>> x = torch.tensor([[[3.0, 0.0, 0.0]]])
        >>> temporal_smoothness_loss(x, torch.tensor([[[2.0, 0.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]]))
        tensor([0.])
        >>> temporal_smoothness_loss(x, torch.tensor([[[1.0, 0.0, 0.0]]]))
        tensor([4.])
    """
    check_tensor("current", current)
    if current.dim() < 2:
        raise ValueError(f"current must have shape (B, ..., C), got {tuple(current.shape)}")
    check_like("previous", previous, "current", current, "(B, ..., C)")
    prediction = previous.to(current.dtype)
    if before_previous is not None:
        check_like("before_previous", before_previous, "current", current, "(B, ..., C)")
        prediction = 2.0 * prediction - before_previous.to(current.dtype)
    sq = ((current - prediction) ** 2).sum(-1)
    return sq.flatten(1).mean(-1) if sq.dim() > 1 else sq
