"""Cameras and differentiable renderers (mm, OpenCV camera axes, see ``renderers.camera``)."""

from .base import RenderOutput, check_mesh_inputs
from .camera import Camera
from .pytorch3d_renderer import PyTorch3DRenderer, PyTorch3DRenderSettings

__all__ = [
    "Camera",
    "RenderOutput",
    "PyTorch3DRenderer",
    "PyTorch3DRenderSettings",
    "check_mesh_inputs",
]
