"""What a camera saw of a hand: one frame's depth (and optionally mask, RGB, keypoints)."""

from __future__ import annotations

import dataclasses

import torch

from hands import KEYPOINT_NAMES
from renderers import Camera

from .errors import InputError

__all__ = ["Observation"]


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


@dataclasses.dataclass
class Observation:
    """One frame of one camera.

    Attributes:
        depth: (H, W) float, mm (z along the optical axis), 0 = no measurement. Integer
            tensors are converted to float32.
        camera: the frame's :class:`renderers.Camera` (batch 1), image size W x H.
        mask: optional (H, W) bool, the hand (None: segment it from the depth with
            :func:`fitting.preprocess.segment_hand`). Numeric masks become ``mask != 0``.
        rgb: optional (3, H, W) float in [0, 1] (uint8 tensors are divided by 255).
        keypoints_2d: optional (21, 2) px in this frame (u = column, v = row; OpenCV pixel
            centres at integers), ``hands.KEYPOINT_NAMES`` order, e.g. a 2D detector's output;
            NaN rows for missing keypoints. Fitted by the ``keypoints_2d`` energy.
        keypoints_3d: optional (21, 3) mm in this camera's coordinates, same order, NaN rows
            for missing ones. Fitted by the ``keypoints_3d`` energy and reported as
            ``FitResult.metrics["mpjpe_mm"]``.
        keypoint_confidence: optional (21,) non-negative weights of the keypoints in both
            keypoint energies (e.g. detector confidences; 0 ignores a keypoint).
        name: a label for logs and outputs.

    Raises:
        InputError: depth that is not a 2-D tensor, has NaN / inf or negative values, or no
            valid pixel at all; a camera that is not a batch-1 Camera of the depth's size; a
            mask, RGB image or keypoints of the wrong shape, RGB with NaN or inf, keypoints
            with inf, confidences that are negative or not finite.
    """

    depth: torch.Tensor
    camera: Camera
    mask: torch.Tensor | None = None
    rgb: torch.Tensor | None = None
    keypoints_2d: torch.Tensor | None = None
    keypoints_3d: torch.Tensor | None = None
    keypoint_confidence: torch.Tensor | None = None
    name: str = "frame"

    def __post_init__(self) -> None:
        name = str(self.name)
        self.name = name
        d = self.depth
        if not isinstance(d, torch.Tensor) or d.ndim != 2:
            raise InputError(f"{name}: depth must be a 2-D (H, W) tensor of mm, got {_shape(d)}")
        if not d.is_floating_point():
            if d.dtype == torch.bool or d.is_complex():
                raise InputError(f"{name}: depth must hold real numbers (mm), got dtype {d.dtype}")
            d = self.depth = d.float()
        if not bool(torch.isfinite(d).all()):
            raise InputError(f"{name}: depth must be finite (mm, 0 = no measurement); it holds NaN or inf")
        if bool((d < 0).any()):
            raise InputError(f"{name}: depth must be non-negative (mm, 0 = no measurement); "
                             f"its minimum is {float(d.min()):g}")
        if not bool((d > 0).any()):
            raise InputError(f"{name}: the depth frame has no valid pixel (all zero)")
        H, W = d.shape
        if not isinstance(self.camera, Camera):
            raise InputError(f"{name}: camera must be a renderers.Camera, got {type(self.camera).__name__}")
        if self.camera.batch_size != 1:
            raise InputError(f"{name}: camera must have batch size 1, got {self.camera.batch_size}")
        if (self.camera.height, self.camera.width) != (H, W):
            raise InputError(
                f"{name}: the camera intrinsics are for a {self.camera.width}x{self.camera.height} "
                f"image but the depth frame is {W}x{H}"
            )
        if self.mask is not None:
            m = self.mask
            if not isinstance(m, torch.Tensor) or tuple(m.shape) != (H, W):
                raise InputError(f"{name}: mask must be an (H, W) = {(H, W)} tensor like the depth, "
                                 f"got {_shape(m)}")
            self.mask = m if m.dtype == torch.bool else m != 0
        if self.rgb is not None:
            c = self.rgb
            if not isinstance(c, torch.Tensor) or tuple(c.shape) != (3, H, W):
                raise InputError(f"{name}: rgb must be a (3, H, W) = {(3, H, W)} tensor, got {_shape(c)}")
            if c.dtype == torch.uint8:
                c = c.float() / 255.0
            elif not c.is_floating_point():
                raise InputError(f"{name}: rgb must be float in [0, 1] or uint8, got dtype {c.dtype}")
            if not bool(torch.isfinite(c).all()):
                raise InputError(f"{name}: rgb holds NaN or inf")
            self.rgb = c
        K = len(KEYPOINT_NAMES)
        for field, dim, unit in (("keypoints_2d", 2, "px"), ("keypoints_3d", 3, "mm")):
            k = getattr(self, field)
            if k is None:
                continue
            if not isinstance(k, torch.Tensor) or tuple(k.shape) != (K, dim) or k.is_complex():
                raise InputError(f"{name}: {field} must be a ({K}, {dim}) tensor in {unit} "
                                 f"(hands.KEYPOINT_NAMES order), got {_shape(k)}")
            k = k.to(d.dtype)
            if bool(torch.isinf(k).any()):
                raise InputError(f"{name}: {field} hold inf (use NaN rows for missing keypoints)")
            setattr(self, field, k)
        c = self.keypoint_confidence
        if c is not None:
            if not isinstance(c, torch.Tensor) or tuple(c.shape) != (K,) or c.is_complex():
                raise InputError(f"{name}: keypoint_confidence must be a ({K},) tensor, got {_shape(c)}")
            c = c.to(d.dtype)
            if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
                raise InputError(f"{name}: keypoint_confidence must be finite and >= 0")
            self.keypoint_confidence = c

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return tuple(self.depth.shape)
