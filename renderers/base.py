"""Shared types and input checks for the renderers.

Every renderer takes vertices ``(B, V, 3)`` in OpenCV camera coordinates (mm; x right,
y down, z forward), triangle faces and a :class:`~renderers.camera.Camera`, and returns
a :class:`RenderOutput`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .camera import Camera

__all__ = ["RenderOutput", "check_mesh_inputs"]


class RenderOutput(NamedTuple):
    """What a renderer returns; all maps are indexed ``[b, row, col] = [b, v, u]``.

    Members:
        silhouette: (B, H, W) float in [0, 1], the soft (differentiable) coverage.
        depth: (B, H, W) float, z in mm of the nearest surface whose face contains the
            pixel centre; 0 where no face covers the pixel centre.
        mask: (B, H, W) bool, hard coverage: True where a face contains the pixel
            centre (the pixels where ``depth`` is valid).
        soft_depth: optional (B, H, W) float, mm, a renderer's soft (aggregated) depth,
            when it makes one and it was asked for; None otherwise.
    """

    silhouette: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    soft_depth: Optional[torch.Tensor] = None

    def select(self, index) -> "RenderOutput":
        """The maps of the batch elements ``index`` (an int drops the batch dimension)."""
        return RenderOutput(*(None if x is None else x[index] for x in self))


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


def check_mesh_inputs(verts: torch.Tensor, faces: torch.Tensor, camera: Camera) -> None:
    """Validate a renderer's mesh inputs; raise ValueError naming the bad argument.

    Args:
        verts: (B, V, 3) floating, finite, in mm, OpenCV camera coordinates, with
            B >= 1 and V >= 1. Every vertex must lie in front of the camera
            (z > 0): the renderers do not clip triangles that cross the camera plane,
            and perspective projection is undefined there, so z <= 0 is an error
            rather than silently wrong output.
        faces: (F, 3) shared by the batch, or (B, F, 3); integer dtype (int64
            preferred), F >= 1, every index in [0, V).
        camera: a :class:`Camera` with batch size 1 or B, on the same device as
            ``verts``.

    Returns:
        None.

    Raises:
        ValueError: naming ``verts``, ``faces`` or ``camera``, what was expected and what
            came.
    """
    if not isinstance(verts, torch.Tensor) or verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be a tensor of shape (B, V, 3), got {_describe(verts)}")
    if not verts.is_floating_point():
        raise ValueError(f"verts must be a floating tensor, got dtype {verts.dtype}")
    B, V, _ = verts.shape
    if B == 0 or V == 0:
        raise ValueError(f"verts must have B >= 1 and V >= 1, got shape {tuple(verts.shape)}")
    if not bool(torch.isfinite(verts).all()):
        n_bad = int((~torch.isfinite(verts)).any(-1).sum())
        raise ValueError(f"verts must be finite, got {n_bad} vertices with NaN or inf")
    zmin = verts[..., 2].min()
    if not bool(zmin > 0):
        n_bad = int((verts[..., 2] <= 0).sum())
        raise ValueError(
            f"verts must all lie in front of the camera (z > 0 mm), got {n_bad} vertices "
            f"with z <= 0 (min z = {float(zmin):.6g} mm)"
        )

    if not isinstance(faces, torch.Tensor) or faces.dim() not in (2, 3) or faces.shape[-1] != 3:
        raise ValueError(f"faces must be a tensor of shape (F, 3) or (B, F, 3), got {_describe(faces)}")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer (long) tensor, got dtype {faces.dtype}")
    if faces.dim() == 3 and faces.shape[0] != B:
        raise ValueError(
            f"faces of shape (B, F, 3) must have B = {B} like verts, got shape {tuple(faces.shape)}"
        )
    if faces.shape[-2] == 0:
        raise ValueError(f"faces must hold at least one face, got shape {tuple(faces.shape)}")
    if faces.device != verts.device:
        raise ValueError(f"faces is on {faces.device} but verts is on {verts.device}")
    fmin, fmax = int(faces.min()), int(faces.max())
    if fmin < 0 or fmax >= V:
        raise ValueError(
            f"faces must index vertices in [0, {V}) (V = {V}), got indices in [{fmin}, {fmax}]"
        )

    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a renderers.Camera, got {type(camera).__name__}")
    if camera.batch_size not in (1, B):
        raise ValueError(
            f"camera has batch size {camera.batch_size} but verts has B = {B}; "
            f"the camera batch size must be 1 or B"
        )
    if camera.device != verts.device:
        raise ValueError(f"camera is on {camera.device} but verts is on {verts.device}")
