"""SoftRas-style soft rasterizer in plain PyTorch (Liu et al., "Soft Rasterizer", ICCV 2019).

How it works
------------
1. The vertices are projected with :meth:`Camera.project` (OpenCV pixel centres at
   integers) and every face gets its corners ``(u px, v px, z mm)``.
2. **Cull** (no autograd): each face is paired with the pixel centres of its screen
   bounding box grown by the blur support ``sigma_px * sqrt(log(1 / blur_eps - 1))``; pairs
   whose centre lies farther than the support from the face are dropped. The work and the
   memory are proportional to these pairs, i.e. to the pixels each face can reach, never to
   pixels x faces.
3. **Scatter** (with autograd, on the kept pairs only): the squared distance ``d^2`` from
   the pixel centre to the face's edges gives the face's probability at the pixel (Liu et
   al., Eq. 1, with ``delta = +1`` inside and ``-1`` outside)::

       D = sigmoid(delta * d^2 / sigma_px^2)

   and the silhouette is their aggregate over *all* faces (Liu et al., Eq. 4)::

       silhouette = 1 - prod_j (1 - D_j)

   summed as logs with ``index_add`` over the pairs. Occluded and far faces contribute
   like any other, so they receive gradients (RealisticHands, Sec. 3.2, fits with this).
4. ``depth`` and ``mask`` are exact: the hard z-buffer of the pairs whose face contains the
   pixel centre, with the perspective-correct z of the nearest covering face (gradients to
   its three vertices). With ``soft_depth=True`` the output also has SoftRas's aggregated
   depth (Liu et al., Eqs. 5-6, depth as the "colour")::

       soft_depth = sum_j w_j z_j,
       w_j = D_j exp(-z_j / gamma) / (sum_k D_k exp(-z_k / gamma) + exp(-z_far / gamma))

   with ``z_j`` the face's perspective-correct depth at the nearest point of the face and
   the background a surface at ``z_far`` of colour 0 (so empty pixels give 0 as in
   ``depth``). ``gamma_mm`` is SoftRas's ``gamma`` times the depth range: a smaller value
   makes the nearest face win more sharply.

Units of ``sigma_px``
---------------------
Pixels: one face's probability is ``sigmoid(-1) = 0.27`` at ``sigma_px`` outside its edge.
PyTorch3D's ``SoftSilhouetteShader`` sigma (squared NDC, where the shorter image side spans
2) is the same blur for ``sigma = (2 * sigma_px / min(H, W)) ** 2``; with that sigma and
enough ``faces_per_pixel`` the two silhouettes agree (``tests/test_soft_and_splat_renderers.py``,
``bench/renderer_parity.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._raster import (
    FacePixelDistances,
    box_pixel_pairs,
    front_facing,
    interp_depth,
    nearest_per_pixel,
    project_faces,
)
from .base import RenderOutput, check_mesh_inputs
from .camera import Camera
from .settings import check_bool, check_open_interval, check_positive, checked_settings, resolve_settings

__all__ = ["SoftRasterizerSettings", "SoftRasterizer"]


@dataclass
class SoftRasterizerSettings:
    """Settings of :class:`SoftRasterizer`; every field can be overridden per call.

    Members:
        sigma_px: the blur in pixels (> 0): a face's probability is ``sigmoid(-(d /
            sigma_px) ** 2)`` at ``d`` px outside it. SoftRas's default ``sigma = 1e-4``
            (squared NDC) is ``sigma_px = 0.005 * min(H, W)``.
        blur_eps: probability below which a face is ignored at a pixel, in (0, 0.5): the
            support is ``sigma_px * sqrt(log(1 / blur_eps - 1))`` px (3.03 ``sigma_px`` for
            the default 1e-4), PyTorch3D's rule for its blur radius.
        perspective_correct: ``depth`` is the true z of the surface (True) rather than z
            interpolated linearly in the image.
        cull_backfaces: ignore faces seen from behind (clockwise in the image as
            displayed); halves the work for closed meshes, but those faces then get no
            gradient and the soft outline loses their share.
        soft_depth: also return SoftRas's aggregated depth in ``RenderOutput.soft_depth``.
        gamma_mm: temperature of the soft depth's softmax over faces, mm (> 0).
        zfar: depth (mm) of the soft depth's background; None = 1 mm behind each frame's
            farthest vertex.

    Raises (from :meth:`validate`):
        ValueError: naming the field that is out of range.
    """

    sigma_px: float = 0.5
    blur_eps: float = 1e-4
    perspective_correct: bool = True
    cull_backfaces: bool = False
    soft_depth: bool = False
    gamma_mm: float = 1.0
    zfar: Optional[float] = None

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        check_positive(self, "sigma_px")
        check_open_interval(self, "blur_eps", 0.0, 0.5)
        check_positive(self, "gamma_mm")
        check_positive(self, "zfar", optional=True)
        for name in ("perspective_correct", "cull_backfaces", "soft_depth"):
            check_bool(self, name)

    def support_px(self) -> float:
        """Distance (px) outside a face at which its probability falls to ``blur_eps``."""
        return self.sigma_px * math.sqrt(math.log(1.0 / self.blur_eps - 1.0))


class SoftRasterizer(nn.Module):
    """Differentiable soft silhouette (SoftRas) + exact depth, in plain PyTorch.

    See the module docstring for the algorithm, its cost and the units. Batched: B meshes
    (shared or per-element faces) and a camera of batch size 1 or B.

    Args:
        settings: a :class:`SoftRasterizerSettings`; default settings if None.

    Raises:
        ValueError: if ``settings`` is not a SoftRasterizerSettings or is out of range.

    Example:
        >>> from pytorch3d.utils import ico_sphere
        >>> sphere = ico_sphere(2)
        >>> verts = sphere.verts_padded() * 50 + torch.tensor([0.0, 0.0, 500.0])
        >>> cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
        >>> out = SoftRasterizer()(verts, sphere.faces_padded()[0], cam, sigma_px=0.3)
        >>> out.silhouette.shape, out.depth.shape, out.mask.dtype
        (torch.Size([1, 64, 64]), torch.Size([1, 64, 64]), torch.bool)
    """

    def __init__(self, settings: Optional[SoftRasterizerSettings] = None) -> None:
        super().__init__()
        self.settings = checked_settings(settings, SoftRasterizerSettings)

    def extra_repr(self) -> str:
        return repr(self.settings)

    def forward(self, verts: torch.Tensor, faces: torch.Tensor, camera: Camera, **overrides) -> RenderOutput:
        """Render soft silhouettes, depth maps and hard masks.

        Args:
            verts: (B, V, 3) vertices in mm, OpenCV camera coordinates (x right, y down,
                z forward), finite, all with z > 0. Any floating dtype (outputs take it).
            faces: (F, 3) long vertex indices shared by the batch, or (B, F, 3).
            camera: :class:`Camera` of batch size 1 or B; gives the image size (H, W).
            **overrides: any :class:`SoftRasterizerSettings` field, for this call only.

        Returns:
            RenderOutput with ``silhouette`` (B, H, W) in [0, 1], ``depth`` (B, H, W) mm (0
            where ``mask`` is False), ``mask`` (B, H, W) bool (a face contains the pixel
            centre) and, with ``soft_depth=True``, ``soft_depth`` (B, H, W) mm. Gradients
            flow to ``verts`` (and to the camera intrinsics if they require grad).

        Raises:
            ValueError: bad inputs (see :func:`renderers.base.check_mesh_inputs`: wrong
                shapes, NaN or inf vertices, vertices with z <= 0, faces indexing past the
                vertices, empty meshes), unknown override names or out-of-range settings.
        """
        settings = resolve_settings(self.settings, overrides)
        check_mesh_inputs(verts, faces, camera)
        B = verts.shape[0]
        H, W = camera.height, camera.width
        n_pix = B * H * W
        face_px = project_faces(verts, faces, camera)  # (B, F, 3, 3) differentiable
        nF = face_px.shape[1]
        flat = face_px.reshape(B * nF, 3, 3)
        sigma2 = settings.sigma_px ** 2
        support = settings.support_px()

        with torch.no_grad():
            fp = flat.detach()
            visible = front_facing(verts, faces).reshape(-1) if settings.cull_backfaces else None
            fu, fv = fp[..., 0], fp[..., 1]
            pf, x, y = box_pixel_pairs(fu.amin(-1) - support, fu.amax(-1) + support,
                                       fv.amin(-1) - support, fv.amax(-1) + support, H, W, visible)
            pairs = FacePixelDistances(fp[..., :2], pf, (x.to(fp.dtype), y.to(fp.dtype)))
            keep = (pairs.inside | (pairs.d2 < support * support)).nonzero(as_tuple=True)[0]
            pairs = pairs.select(keep)
            pf, inside = pf.index_select(0, keep), pairs.inside
            y, x = y.index_select(0, keep), x.index_select(0, keep)
            p = torch.stack([x, y], dim=-1).to(fp.dtype)  # (K, 2) the kept pairs' centres
            pix = (torch.div(pf, nF, rounding_mode="floor") * H + y) * W + x
            # hard z-buffer over the pairs whose face contains the pixel centre
            cover = inside.nonzero(as_tuple=True)[0]
            z_cover = interp_depth(p.index_select(0, cover), fp.index_select(0, pf.index_select(0, cover)),
                                   settings.perspective_correct)
            win = cover.index_select(0, nearest_per_pixel(pix.index_select(0, cover), z_cover, n_pix))
            pix_win = pix.index_select(0, win)

        # silhouette: 1 - prod_j (1 - D_j), D_j = sigmoid(delta d^2 / sigma^2) (Eqs. 1, 4)
        d2 = pairs.dist2(flat[..., :2])
        logit = torch.where(inside, d2, -d2) / sigma2
        log_empty = torch.zeros(n_pix, device=verts.device, dtype=d2.dtype)
        log_empty = log_empty.index_add(0, pix, F.logsigmoid(-logit))
        silhouette = (-torch.expm1(log_empty)).reshape(B, H, W)

        # exact depth of the nearest covering face
        z_win = interp_depth(p.index_select(0, win), flat.index_select(0, pf.index_select(0, win)),
                             settings.perspective_correct)
        depth = torch.zeros(n_pix, device=verts.device, dtype=z_win.dtype).index_put((pix_win,), z_win)
        mask = torch.zeros(n_pix, device=verts.device, dtype=torch.bool)
        mask[pix_win] = True

        soft_depth = None
        if settings.soft_depth:
            soft_depth = self._aggregate_depth(verts, flat, pf, p, pix, logit, n_pix, settings)
            soft_depth = soft_depth.reshape(B, H, W).to(verts.dtype)

        return RenderOutput(
            silhouette=silhouette.to(verts.dtype),
            depth=depth.reshape(B, H, W).to(verts.dtype),
            mask=mask.reshape(B, H, W),
            soft_depth=soft_depth,
        )

    @staticmethod
    def _aggregate_depth(verts, flat, pf, p, pix, logit, n_pix, settings) -> torch.Tensor:
        """SoftRas's aggregation (Liu et al., Eqs. 5-6) of the faces' depths, (B*H*W,) mm."""
        B = verts.shape[0]
        H_W = n_pix // B
        gamma = settings.gamma_mm
        z = interp_depth(p, flat.index_select(0, pf), settings.perspective_correct)
        if settings.zfar is not None:
            zfar = torch.full((B,), float(settings.zfar), device=verts.device, dtype=z.dtype)
        else:
            zfar = verts.detach()[..., 2].amax(-1).to(z.dtype) + 1.0
        bg = (-zfar / gamma).repeat_interleave(H_W)  # (B*H*W,) background log-weight
        log_w = F.logsigmoid(logit) - z / gamma
        with torch.no_grad():
            shift = bg.clone().scatter_reduce_(0, pix, log_w.detach(), reduce="amax")
        e = torch.exp(log_w - shift[pix])
        den = torch.exp(bg - shift).index_add(0, pix, e)
        num = torch.zeros_like(den).index_add(0, pix, e * z)
        return num / den
