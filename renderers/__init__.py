"""Cameras and differentiable renderers (mm, OpenCV camera axes, see ``renderers.camera``).

Four renderers share one interface, ``renderer(verts (B, V, 3) mm, faces, camera,
**overrides) -> RenderOutput``, and can be chosen by name with :func:`make_renderer`:

* ``"pytorch3d"``: :class:`PyTorch3DRenderer`, PyTorch3D's own pipeline (MeshRenderer +
  SoftSilhouetteShader for the silhouette, the zbuf of a hard MeshRasterizer pass for the
  depth, PyTorch3D's backward); the reference, slow on a CPU;
* ``"hybrid"``: :class:`HybridRenderer`, PyTorch3D's ``rasterize_meshes`` for candidate
  fragments plus our own z-buffer and sigmoid blend with analytic-distance gradients;
* ``"soft"``: :class:`SoftRasterizer`, a SoftRas-style soft rasterizer in plain PyTorch;
* ``"splat"``: :class:`SplatRenderer`, the splat depth renderer of seed 001.
"""

from .base import RenderOutput, check_mesh_inputs
from .camera import Camera
from .hybrid import HybridRenderer, HybridRenderSettings
from .pytorch3d_renderer import PyTorch3DRenderer, PyTorch3DRenderSettings
from .soft_rasterizer import SoftRasterizer, SoftRasterizerSettings
from .splat import SplatRenderer, SplatRenderSettings

#: Renderer names accepted by :func:`make_renderer` (and ``handfit --renderer``).
RENDERERS = {
    "pytorch3d": (PyTorch3DRenderer, PyTorch3DRenderSettings),
    "hybrid": (HybridRenderer, HybridRenderSettings),
    "soft": (SoftRasterizer, SoftRasterizerSettings),
    "splat": (SplatRenderer, SplatRenderSettings),
}


def make_renderer(name: str, **settings):
    """A renderer by name, with its settings' fields as keyword arguments.

    Args:
        name: one of :data:`RENDERERS` (``"pytorch3d"``, ``"hybrid"``, ``"soft"``,
            ``"splat"``).
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
    "HybridRenderer",
    "HybridRenderSettings",
    "SoftRasterizer",
    "SoftRasterizerSettings",
    "SplatRenderer",
    "SplatRenderSettings",
    "check_mesh_inputs",
]
