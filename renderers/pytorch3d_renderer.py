"""PyTorch3D's own rendering pipeline behind this package's renderer interface.

What it is
----------
:class:`PyTorch3DRenderer` (registry name ``"pytorch3d"``) renders with PyTorch3D itself,
forward and backward: our :class:`~renderers.camera.Camera` becomes
``pytorch3d.renderer.PerspectiveCameras`` (``pytorch3d.utils.cameras_from_opencv_projection``,
see "Pixel centres" below), the vertices a ``pytorch3d.structures.Meshes``, and

* ``silhouette`` is the alpha channel (``images[..., 3]``) of
  ``MeshRenderer(MeshRasterizer(cameras, RasterizationSettings(blur_radius, K)),
  SoftSilhouetteShader(BlendParams(sigma)))``: ``1 - prod_k (1 - sigmoid(-d_k / sigma))``
  over the K nearest faces (in z) within the blur radius of the pixel centre, ``d_k`` the
  signed squared NDC distance (negative inside) from the pixel centre to face ``k``
  (Liu et al., "Soft Rasterizer", ICCV 2019, Eqs. 1 and 4);
* ``depth`` and ``mask`` come from a *second, hard* ``MeshRasterizer`` pass
  (``blur_radius = 0``, ``faces_per_pixel = 1``): ``mask = pix_to_face[..., 0] >= 0`` and
  ``depth = zbuf[..., 0]`` (z in mm, perspective-correct by default) where ``mask``, 0
  elsewhere. A single blurred pass is not enough: its ``zbuf[..., 0]`` is the z of the
  nearest face *within the blur radius*, usually a neighbour of the face that contains the
  pixel centre (on 88-99 % of the default hand's covered pixels at 64 and 128 px with
  sigma 0.3-0.6 px; a mean depth error of 1.6-3.6 mm, up to 50 mm where a finger's outline
  passes nearby in front), and its mask would be grown by the blur radius.

Gradients flow through PyTorch3D's own backward pass of ``rasterize_meshes`` (to the
vertices, and to the camera intrinsics if they require grad). PyTorch3D rasterizes in
float32: the vertices are cast to float32 and the outputs cast back to ``verts``' dtype, on
``verts``' device.

What PyTorch3D does and the other renderers of this package do not
-------------------------------------------------------------------
* Only the K nearest faces (in z) of a pixel are blended. On a mesh whose faces are
  smaller than the blur radius (the 3196-face hand at 64-128 px) the face that covers a
  pixel can be dropped from them, so ``silhouette < 0.5`` on some covered pixels (3-6 % of
  them at 64 px and 0.2-1 % at 128 px with K = 16 and sigma 0.5 px, on three poses of the
  default hand; 0-0.3 % with K = 32).
  ``renderers.HybridRenderer`` adds the covering face back, ``"soft"`` blends every face
  within reach. Raise ``faces_per_pixel`` to get closer to the all-faces aggregate (see
  "Faces per pixel" below for the cost).
* The hard pass counts a pixel centre as covered only strictly inside a face: a centre that
  lies exactly on an edge is in neither face sharing it (a fronto-parallel square whose
  diagonal runs through pixel centres shows a line of empty pixels). For meshes in general
  position this concerns no pixel; ``"soft"`` and ``"hybrid"`` count such centres as covered.
* ``bin_size > 0`` (coarse-to-fine rasterization) exists only on the GPU; on the CPU every
  face is tested at every pixel.

Units of ``sigma``
------------------
PyTorch3D measures distances in NDC, where the shorter image side spans 2 units, so one
pixel is ``2 / min(H, W)`` NDC units, and ``d_k`` is a *squared* distance. A fixed ``sigma``
therefore means a different blur in pixels at each resolution::

    sigma = (2 * sigma_px / min(H, W)) ** 2
    coverage of one face at r px outside its edge = sigmoid(-(r / sigma_px) ** 2)

``sigma_px`` is the distance in pixels outside an edge at which one face's coverage has
fallen to ``sigmoid(-1) = 0.27``. ``sigma = 1e-4`` is ``sigma_px = 0.32`` at 64 px, ``0.64``
at 128 px and ``1.28`` at 256 px. Set ``PyTorch3DRenderSettings.sigma_px`` for the same blur
in pixels at any resolution. Faces are considered up to ``blur_radius = log(1 / blur_eps -
1) * sigma`` (PyTorch3D's rule, see ``SoftSilhouetteShader``; squared NDC), i.e. up to
``sigma_px * sqrt(log(1 / blur_eps - 1))`` pixels (3.03 sigma_px for ``blur_eps = 1e-4``),
where one face's coverage is still above ``blur_eps``.

Pixel centres
-------------
``pytorch3d.utils.cameras_from_opencv_projection`` places pixel centres at ``integer +
0.5`` (pixel ``j`` spans ``[j, j + 1]``), whereas this package follows OpenCV (centre at
the integer, see :mod:`renderers.camera`). :meth:`PyTorch3DRenderer.to_pytorch3d_cameras`
therefore hands PyTorch3D the principal point ``(cx + 0.5, cy + 0.5)``. Either way, a point
that :meth:`Camera.project` sends to ``(u, v) = (j, i)`` lights pixel ``[i, j]`` of every
output map.

Speed on the CPU
----------------
PyTorch3D's CPU rasterizer is naive (every face at every pixel, in each of the two passes)
and its CPU backward pass takes 75-85 % of the time: this is the reference, not the
renderer to fit with on a CPU. Forward + backward of one frame of the default hand (3196
faces) filling most of a square image, sigma 0.5 px, 2 cores, median of 5 runs
(``bench/renderer_parity.py``): 1.2 s at 64 px, 2.7 s at 128 px and 7.0 s at 256 px with
the default K = 16 (1.9 / 3.3 / 7.3 s with K = 64), 17 / 36 / 58 times the ``"hybrid"``
renderer and 64 / 140 / 185 times ``"soft"``.

Faces per pixel
---------------
On that hand the default K = 16 leaves a mean silhouette difference to the K = 64 render
(which blends every face within reach almost everywhere, and is what ``"soft"`` matches to
3.4e-4 or better) of 0.028 at 64 px, 0.0057 at 128 px and 0.00065 at 256 px; depth and mask
do not depend on K.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from pytorch3d.renderer import (
    BlendParams,
    MeshRasterizer,
    MeshRenderer,
    RasterizationSettings,
    SoftSilhouetteShader,
)
from pytorch3d.structures import Meshes
from pytorch3d.utils import cameras_from_opencv_projection

from .base import RenderOutput, check_mesh_inputs
from .camera import Camera
from .settings import (
    NDCBlurMixin,
    check_bool,
    check_open_interval,
    check_positive,
    checked_settings,
    resolve_settings,
)

__all__ = ["PyTorch3DRenderSettings", "PyTorch3DRenderer"]


@dataclass
class PyTorch3DRenderSettings(NDCBlurMixin):
    """Settings of :class:`PyTorch3DRenderer`; every field can be overridden per call.

    Members:
        sigma: ``BlendParams.sigma`` of the SoftSilhouetteShader, in PyTorch3D's units
            (squared NDC distance; see the module docstring for pixels). > 0. Ignored
            when ``sigma_px`` is set.
        sigma_px: if not None, the blur in pixels, the same at every resolution:
            ``sigma = (2 * sigma_px / min(H, W)) ** 2``. > 0.
        blur_eps: coverage below which a face is ignored; the soft pass's
            ``blur_radius = log(1 / blur_eps - 1) * sigma`` (PyTorch3D's rule). In
            (0, 0.5).
        faces_per_pixel: K, the number of nearest faces (in z) within the blur radius
            that each pixel blends into the silhouette (the soft pass's
            ``RasterizationSettings.faces_per_pixel``; the hard pass uses 1). Positive int.
        bin_size: PyTorch3D's coarse-to-fine bin size, GPU only; 0 = naive, None =
            PyTorch3D's heuristic (which is 0 on the CPU). Must be 0 or None on the CPU.
        max_faces_per_bin: PyTorch3D's limit of faces per bin when ``bin_size`` > 0;
            None = its heuristic. Positive int or None.
        perspective_correct: perspective-correct barycentrics, so that ``depth`` is the
            true z of the surface (True), not z interpolated linearly in the image
            (False).
        cull_backfaces: PyTorch3D's ``cull_backfaces``: ignore the faces seen from
            behind, those whose normal ``(v1 - v0) x (v2 - v0)`` (camera coordinates)
            points away from the camera, i.e. that appear clockwise in the image as
            displayed (u right, v down). Right for closed meshes whose faces run
            counter-clockwise seen from outside.

    Raises (from :meth:`validate`):
        ValueError: naming the field that is out of range.
    """

    sigma: float = 1e-4
    sigma_px: Optional[float] = None
    blur_eps: float = 1e-4
    faces_per_pixel: int = 16
    bin_size: Optional[int] = None
    max_faces_per_bin: Optional[int] = None
    perspective_correct: bool = True
    cull_backfaces: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        check_positive(self, "sigma")
        check_positive(self, "sigma_px", optional=True)
        check_open_interval(self, "blur_eps", 0.0, 0.5)
        for name, lo, optional in (
            ("faces_per_pixel", 1, False),
            ("bin_size", 0, True),
            ("max_faces_per_bin", 1, True),
        ):
            v = getattr(self, name)
            if v is None and optional:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise ValueError(
                    f"{name} must be an int >= {lo}{' or None' if optional else ''}, got {v!r}"
                )
        for name in ("perspective_correct", "cull_backfaces"):
            check_bool(self, name)


class PyTorch3DRenderer(nn.Module):
    """PyTorch3D's MeshRenderer + SoftSilhouetteShader (silhouette) and zbuf (depth).

    The renderer of the ``"pytorch3d"`` registry name: PyTorch3D's own rasterizer, shader
    and backward pass, with our camera and axes (OpenCV, mm). See the module docstring for
    the two rasterization passes, the units of ``sigma``, pixel centres and speed.

    Args:
        settings: a :class:`PyTorch3DRenderSettings`; default settings if None.

    Raises:
        ValueError: if ``settings`` is not a PyTorch3DRenderSettings or is out of range.

    Example:
        >>> from pytorch3d.utils import ico_sphere
        >>> sphere = ico_sphere(2)
        >>> verts = sphere.verts_padded() * 50 + torch.tensor([0.0, 0.0, 500.0])
        >>> faces = sphere.faces_padded()[0]
        >>> cam = Camera(200.0, 200.0, 15.5, 15.5, 32, 32)
        >>> out = PyTorch3DRenderer()(verts, faces, cam)
        >>> out.silhouette.shape, out.depth.shape, out.mask.dtype
        (torch.Size([1, 32, 32]), torch.Size([1, 32, 32]), torch.bool)
        >>> bool(out.mask[0, 15, 15]), round(float(out.depth[0, 15, 15]))
        (True, 450)
    """

    def __init__(self, settings: Optional[PyTorch3DRenderSettings] = None) -> None:
        super().__init__()
        self.settings = checked_settings(settings, PyTorch3DRenderSettings)

    def extra_repr(self) -> str:
        return repr(self.settings)

    @staticmethod
    def to_pytorch3d_cameras(camera: Camera, device=None):
        """Convert a :class:`Camera` to ``pytorch3d.renderer.PerspectiveCameras``.

        Uses ``pytorch3d.utils.cameras_from_opencv_projection`` with R = I, T = 0 (our
        camera coordinates are PyTorch3D's world coordinates) and the principal point
        shifted by +0.5 px, from OpenCV's pixel centres (at integers) to PyTorch3D's (at
        integer + 0.5). Differentiable in the intrinsics.

        Args:
            camera: Camera of batch size Bc (fx, fy, cx, cy in px).
            device: target device; default ``camera.device``.

        Returns:
            float32 PerspectiveCameras of batch size Bc (NDC, image_size = (H, W)).
        """
        device = camera.device if device is None else device
        Bc = camera.batch_size
        K = camera.K.to(device=device, dtype=torch.float32)
        K = K + torch.tensor(
            [[0.0, 0.0, 0.5], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]], device=device
        )
        R = torch.eye(3, device=device, dtype=torch.float32).expand(Bc, 3, 3)
        T = torch.zeros(Bc, 3, device=device, dtype=torch.float32)
        size = torch.tensor([[camera.height, camera.width]], device=device).expand(Bc, 2)
        return cameras_from_opencv_projection(R=R, tvec=T, camera_matrix=K, image_size=size)

    def forward(
        self,
        verts: torch.Tensor,
        faces: torch.Tensor,
        camera: Camera,
        **overrides,
    ) -> RenderOutput:
        """Render soft silhouettes, depth maps and hard masks with PyTorch3D.

        Args:
            verts: (B, V, 3) vertices in mm, OpenCV camera coordinates (x right, y down,
                z forward), all with z > 0. Any floating dtype (PyTorch3D rasterizes in
                float32; the outputs take ``verts``' dtype and device).
            faces: (F, 3) long vertex indices shared by the batch, or (B, F, 3).
            camera: :class:`Camera` of batch size 1 or B; gives the image size (H, W).
            **overrides: any :class:`PyTorch3DRenderSettings` field, for this call only.

        Returns:
            RenderOutput with ``silhouette`` (B, H, W) in [0, 1] (SoftSilhouetteShader's
            alpha), ``depth`` (B, H, W) in mm (the hard pass's ``zbuf[..., 0]``; 0 where
            ``mask`` is False) and ``mask`` (B, H, W) bool (``pix_to_face[..., 0] >= 0``).
            Gradients flow from ``silhouette`` and ``depth`` to ``verts`` (and to the
            camera intrinsics if they require grad) through PyTorch3D's backward.

        Raises:
            ValueError: for bad inputs (see :func:`renderers.base.check_mesh_inputs`),
                unknown override names, out-of-range settings, or ``bin_size`` > 0 on
                the CPU.
        """
        settings = resolve_settings(self.settings, overrides)
        check_mesh_inputs(verts, faces, camera)
        if verts.device.type == "cpu" and settings.bin_size not in (None, 0):
            raise ValueError(
                f"bin_size must be 0 or None on the CPU (PyTorch3D has no binned CPU "
                f"rasterizer), got {settings.bin_size}"
            )
        B = verts.shape[0]
        H, W = camera.height, camera.width
        faces = faces.long()
        if faces.dim() == 2:
            faces = faces.expand(B, -1, -1)
        meshes = Meshes(verts=verts.float(), faces=faces)
        cameras = self.to_pytorch3d_cameras(camera, device=verts.device)
        common = dict(
            image_size=(H, W),
            bin_size=settings.bin_size,
            max_faces_per_bin=settings.max_faces_per_bin,
            perspective_correct=settings.perspective_correct,
            cull_backfaces=settings.cull_backfaces,
        )

        soft = MeshRenderer(
            MeshRasterizer(cameras, RasterizationSettings(
                blur_radius=settings.blur_radius(H, W),
                faces_per_pixel=settings.faces_per_pixel,
                **common,
            )),
            SoftSilhouetteShader(BlendParams(sigma=settings.sigma_ndc(H, W))),
        )
        silhouette = soft(meshes)[..., 3]

        hard = MeshRasterizer(cameras, RasterizationSettings(
            blur_radius=0.0, faces_per_pixel=1, **common,
        ))(meshes)
        mask = hard.pix_to_face[..., 0] >= 0
        depth = torch.where(mask, hard.zbuf[..., 0], torch.zeros((), dtype=hard.zbuf.dtype,
                                                                  device=hard.zbuf.device))

        dtype = verts.dtype
        return RenderOutput(silhouette=silhouette.to(dtype), depth=depth.to(dtype), mask=mask)
