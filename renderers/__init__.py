"""Cameras and differentiable renderers (mm, OpenCV camera axes, see ``renderers.camera``).

Three renderers share one interface, ``renderer(verts (B, V, 3) mm, faces, camera,
**overrides) -> RenderOutput``, and can be chosen by name with :func:`make_renderer`:

* ``"pytorch3d"``: :class:`PyTorch3DRenderer`, PyTorch3D's rasterizer + SoftRas blend;
* ``"soft"``: :class:`SoftRasterizer`, a SoftRas-style soft rasterizer in plain PyTorch;
* ``"splat"``: :class:`SplatRenderer`, the splat depth renderer of seed 001.
"""

from .base import RenderOutput, check_mesh_inputs
from .camera import Camera
from .pytorch3d_renderer import PyTorch3DRenderer, PyTorch3DRenderSettings
from .soft_rasterizer import SoftRasterizer, SoftRasterizerSettings
from .splat import SplatRenderer, SplatRenderSettings

#: Renderer names accepted by :func:`make_renderer` (and ``handfit --renderer``).
RENDERERS = {
    "pytorch3d": (PyTorch3DRenderer, PyTorch3DRenderSettings),
    "soft": (SoftRasterizer, SoftRasterizerSettings),
    "splat": (SplatRenderer, SplatRenderSettings),
}


def make_renderer(name: str, **settings):
    """A renderer by name, with its settings' fields as keyword arguments.

    Args:
        name: one of :data:`RENDERERS` (``"pytorch3d"``, ``"soft"``, ``"splat"``).
        **settings: fields of that renderer's settings dataclass.

    Raises:
        ValueError: an unknown name, an unknown setting or an out-of-range value.
    """
    if name not in RENDERERS:
        raise ValueError(f"renderer must be one of {sorted(RENDERERS)}, got {name!r}")
    cls, settings_cls = RENDERERS[name]
    try:
        return cls(settings_cls(**settings))
    except TypeError as err:  # an unknown keyword
        raise ValueError(f"renderer {name!r}: {err}") from None


__all__ = [
    "Camera",
    "RenderOutput",
    "RENDERERS",
    "make_renderer",
    "PyTorch3DRenderer",
    "PyTorch3DRenderSettings",
    "SoftRasterizer",
    "SoftRasterizerSettings",
    "SplatRenderer",
    "SplatRenderSettings",
    "check_mesh_inputs",
]
