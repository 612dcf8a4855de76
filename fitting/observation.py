"""What a camera saw of a hand: one frame's depth (and optionally mask, RGB, keypoints)."""

from __future__ import annotations

import dataclasses

import torch

from renderers import Camera

from .errors import InputError


@dataclasses.dataclass
class Observation:
    """One frame.

    Attributes:
        depth: (H, W) float, mm, 0 = no measurement.
        camera: the frame's :class:`renderers.Camera` (batch 1), size W x H.
        mask: optional (H, W) bool, the hand (default: segmented from the depth).
        rgb: optional (3, H, W) float in [0, 1].
        keypoints: optional (21, 2) px or (21, 3) mm ground truth / detections.
        name: a label for logs and outputs.

    Raises:
        InputError: depth not 2-D, negative or non-finite, with no valid pixel, or a camera /
            mask whose size differs from the depth's.
    """

    depth: torch.Tensor
    camera: Camera
    mask: torch.Tensor | None = None
    rgb: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None
    name: str = "frame"

    def __post_init__(self):
        d = self.depth
        if d.ndim != 2:
            raise InputError(f"{self.name}: depth must be a 2-D (H, W) image, got shape {tuple(d.shape)}")
        if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
            raise InputError(f"{self.name}: depth must be finite and non-negative (mm, 0 = no measurement)")
        if not bool((d > 0).any()):
            raise InputError(f"{self.name}: the depth frame has no valid pixel (all zero)")
        H, W = d.shape
        if (self.camera.height, self.camera.width) != (H, W):
            raise InputError(
                f"{self.name}: the intrinsics are for a {self.camera.width}x{self.camera.height} image "
                f"but the depth frame is {W}x{H}"
            )
        if self.mask is not None and tuple(self.mask.shape) != (H, W):
            raise InputError(f"{self.name}: mask is {tuple(self.mask.shape)}, the depth frame is {(H, W)}")
