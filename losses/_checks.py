"""Cheap input checks shared by the loss functions (private).

The checks compare shapes and dtypes only: they never read tensor values, so they never force a
host-device synchronisation. Every failure raises :class:`ValueError` naming the argument, what
was expected and what came.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def shape_str(shape: Sequence[int]) -> str:
    """Format a shape the way the error messages print it, e.g. ``(2, 64, 64)``."""
    return str(tuple(int(s) for s in shape))


def check_tensor(name: str, x: object) -> torch.Tensor:
    """Raise ``ValueError`` unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_ndim(name: str, x: object, layout: str, last: Optional[int] = None) -> torch.Tensor:
    """Check that ``x`` is a tensor of ``layout.count(',') + 1`` dimensions.

    Args:
        name: the argument's name, for the message.
        x: the value to check.
        layout: the expected layout, e.g. ``"(B, H, W)"``; its number of entries is the
            expected number of dimensions.
        last: if given, the required size of the last dimension (e.g. 3 for ``(B, K, 3)``).
    """
    check_tensor(name, x)
    ndim = layout.count(",") + 1
    if x.dim() != ndim or (last is not None and x.shape[-1] != last):
        raise ValueError(f"{name} must have shape {layout}, got {shape_str(x.shape)}")
    return x


def check_like(name: str, x: object, other_name: str, other: torch.Tensor, layout: str) -> torch.Tensor:
    """Check that ``x`` is a tensor with exactly the shape of ``other``."""
    check_tensor(name, x)
    if x.shape != other.shape:
        raise ValueError(
            f"{name} must have shape {layout} like {other_name} {shape_str(other.shape)}, "
            f"got {shape_str(x.shape)}"
        )
    return x


def check_one_of(name: str, x: object, shapes: Sequence[Sequence[int]], layouts: str) -> torch.Tensor:
    """Check that ``x`` is a tensor whose shape is one of ``shapes`` (``layouts`` describes them)."""
    check_tensor(name, x)
    if tuple(x.shape) not in [tuple(s) for s in shapes]:
        wanted = " or ".join(shape_str(s) for s in shapes)
        raise ValueError(f"{name} must have shape {layouts}, i.e. {wanted}, got {shape_str(x.shape)}")
    return x


def as_mask(x: torch.Tensor) -> torch.Tensor:
    """A boolean view of a mask: bool as is, numbers where they exceed 0.5."""
    return x if x.dtype == torch.bool else x > 0.5
