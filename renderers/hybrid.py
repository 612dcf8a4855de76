"""The hybrid renderer: PyTorch3D's ``rasterize_meshes`` for candidate fragments, our own
z-buffer and sigmoid blend with analytic-distance gradients.

What it is
----------
Not PyTorch3D's rendering pipeline (that is :class:`renderers.PyTorch3DRenderer`, registry
name ``"pytorch3d"``) but a hybrid, registry name ``"hybrid"``: PyTorch3D's C++
``rasterize_meshes`` is called, without autograd, only to find each pixel's K nearest faces
within the blur radius; the hard z-buffer, the depth and the SoftSilhouetteShader-style
sigmoid blend are then computed here, in plain PyTorch and with the helpers of
:mod:`renderers._raster` that the ``"soft"`` rasterizer shares, and the gradients come from
the analytic pixel-to-face distances and the perspective-correct depth of those helpers,
not from PyTorch3D's backward pass. It exists because it is much faster on the CPU than
PyTorch3D's own (naive) CPU rasterizer and backward: the tests and benches render their
synthetic frames with it. With ``blend_covering_face=False`` and the same
``faces_per_pixel`` its silhouette is PyTorch3D's to 1e-4 and its mask the same
(``tests/test_hybrid_renderer.py``). At its defaults (K = 16 plus the covering face), on
the default hand in three poses (``bench/renderer_parity.py``), its silhouette differs from
PyTorch3D's K = 64 render by a mean 0.021 / 0.0047 / 0.00057 at 64 / 128 / 256 px, its
masks are PyTorch3D's (IoU 1.0000) and its depth is PyTorch3D's to 2.6e-5 mm (float32
rounding). Unlike PyTorch3D it counts a pixel centre exactly on an edge as covered.

How it works
------------
1. The vertices are projected with :meth:`Camera.project` to pixel coordinates
   ``(u, v)`` (OpenCV: pixel centres at integers) and kept with their depth ``z``.
2. One PyTorch3D ``rasterize_meshes`` pass, *without autograd*, with a blur radius
   and ``faces_per_pixel`` (K), finds for every pixel the K nearest faces (in z) whose
   blurred footprint reaches the pixel centre. On the CPU the image is cut into
   square tiles, each rasterized against only the faces whose blurred bounding box
   overlaps it; the fragments are the same as those of one full-image pass
   (PyTorch3D's CPU rasterizer has no coarse-to-fine binning and otherwise tests
   every face at every pixel).
3. A hard z-buffer in plain PyTorch (work proportional to the pixels the faces
   cover, no autograd) finds the nearest face covering each pixel centre.
4. The per-fragment quantities are recomputed *with autograd* in plain PyTorch from
   the projected vertices: the signed squared distance from the pixel centre to the
   face and the perspective-correct depth. PyTorch3D's own CPU backward pass is
   about 200 to 400 times slower than this one (0.9 / 2.5 / 6.1 s at 64 / 128 / 256 px
   for the hand, against 4 / 8 / 15 ms); these gradients match finite differences and
   are the same on CPU and GPU.

Outputs:

* ``silhouette``: the sigmoid alpha blend of PyTorch3D's ``SoftSilhouetteShader``
  (Liu et al., "Soft Rasterizer", ICCV 2019, Eqs. 1 and 4 for alpha):
  ``1 - prod_k (1 - sigmoid(-d_k / sigma))``, ``d_k`` the signed squared distance
  (NDC units, negative inside) from the pixel centre to face ``k``, over the K
  faces of step 2 plus, with ``blend_covering_face`` (default), the covering face
  of step 3 when it is not among them. Without it, a mesh whose faces are smaller
  than the blur radius (the 3196-face hand at 64-128 px) often loses the covering
  face from the K nearest in z, and ``silhouette < 0.5`` on covered pixels: 45 %
  of them at K = 4, 9 % at K = 8, 1 % at K = 16 with the default sigma.
* ``mask``: True where the pixel centre lies inside or on the edge of a face.
* ``depth``: the perspective-correct z (mm) of the nearest face covering the pixel
  centre (step 3), 0 elsewhere. (Reading it from the blurred pass instead, as
  ``zbuf[..., 0]`` where ``dists[..., 0] <= 0``, misses every pixel whose covering
  face is not the nearest kept one: 97 % of the hand's covered pixels at 64 and
  128 px with the default sigma, because neighbouring faces within the blur radius
  are usually nearer; even the nearest covering face among all K misses 17 % at
  K = 8.)

Units of ``sigma``
------------------
PyTorch3D measures distances in NDC, where the shorter image side spans 2 units, so
one pixel is ``2 / min(H, W)`` NDC units, and ``d_k`` is a *squared* distance. A fixed
``sigma`` therefore means a different blur in pixels at each resolution::

    sigma = (2 * sigma_px / min(H, W)) ** 2
    coverage of one face at r px outside its edge = sigmoid(-(r / sigma_px) ** 2)

``sigma_px`` is the distance in pixels outside an edge at which one face's coverage
has fallen to ``sigmoid(-1) = 0.27``. ``sigma = 1e-4`` is ``sigma_px = 0.32`` at 64 px,
``0.64`` at 128 px and ``1.28`` at 256 px. Set ``HybridRenderSettings.sigma_px`` for
the same blur in pixels at any resolution. Faces are considered up to ``blur_radius =
log(1 / blur_eps - 1) * sigma`` (PyTorch3D's rule; squared NDC), i.e. up to
``sigma_px * sqrt(log(1 / blur_eps - 1))`` pixels (3.03 sigma_px for ``blur_eps =
1e-4``), where one face's coverage is still above ``blur_eps``.

Speed on the CPU
----------------
Forward + backward of one frame of the 3196-face hand filling most of the image, sigma
0.5 px, K = 16, 2 cores, median of 5 runs (``bench/renderer_parity.py``): 67 ms at 64 px,
75 ms at 128 px and 122 ms at 256 px (backward 4-15 ms of it), against 1.2 / 2.7 / 7.0 s
for PyTorch3D's own pipeline (:class:`renderers.PyTorch3DRenderer`, same K). The floor is
PyTorch3D's CPU preprocessing, about 10 us per face (and per face copy in a second tile)
before any pixel is touched: 33 ms for 3196 faces; ``cull_backfaces`` halves it for closed
meshes.

Pixel centres
-------------
OpenCV's, as everywhere in this package (centre of pixel ``[i, j]`` at ``(u, v) = (j, i)``,
see :mod:`renderers.camera`): the vertices are projected with :meth:`Camera.project` and
each tile's NDC places its pixel centres at those integers, so a point that
:meth:`Camera.project` sends to ``(u, v) = (j, i)`` lights pixel ``[i, j]`` of every output
map, exactly as :class:`renderers.PyTorch3DRenderer` does through its camera conversion.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
from pytorch3d.structures import Meshes

from ._raster import (
    COVER_TOL_PX,
    box_pixel_pairs,
    covers,
    front_facing,
    interp_depth,
    nearest_per_pixel,
    point_triangle_dist2,
    project_faces,
)
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

__all__ = ["HybridRenderSettings", "HybridRenderer"]

@dataclass
class HybridRenderSettings(NDCBlurMixin):
    """Settings of :class:`HybridRenderer`; every field can be overridden per call.

    Members:
        sigma: SoftSilhouetteShader blend sigma in PyTorch3D's units (squared NDC
            distance; see the module docstring for pixels). > 0. Ignored when
            ``sigma_px`` is set.
        sigma_px: if not None, the blur in pixels, the same at every resolution:
            ``sigma = (2 * sigma_px / min(H, W)) ** 2``. > 0.
        blur_eps: coverage below which a face is ignored; the rasterizer's
            ``blur_radius = log(1 / blur_eps - 1) * sigma`` (PyTorch3D's rule). In
            (0, 0.5).
        faces_per_pixel: K, the number of nearest faces (in z) within the blur
            radius that each pixel blends into the silhouette. Positive int.
        blend_covering_face: also blend the face that covers the pixel centre (from
            the z-buffer) when it is not among the K: then ``silhouette >= 0.5``
            wherever ``mask`` is True, whatever K (see the module docstring). False
            gives exactly PyTorch3D's SoftSilhouetteShader on its K faces.
        tile_size: side in pixels of the square tiles rasterized separately, each
            against the faces overlapping it; 0 = one pass over the whole image;
            None = automatic: on the CPU 16 when min(H, W) <= 64, else 32 (the
            fastest for the 3196-face hand at 64, 128 and 256 px); 0 on other
            devices (where PyTorch3D bins).
        bin_size: PyTorch3D's coarse-to-fine bin size (GPU only); 0 = naive, None
            = PyTorch3D's heuristic. Must be 0 or None on the CPU.
        max_faces_per_bin: PyTorch3D's limit per bin when ``bin_size`` > 0; None =
            its heuristic.
        perspective_correct: perspective-correct barycentrics, so that ``depth`` is
            the true z of the surface (True), not z interpolated linearly in the
            image (False).
        cull_backfaces: ignore the faces seen from behind: those whose normal
            ``(v1 - v0) x (v2 - v0)`` (camera coordinates) points away from the
            camera, i.e. that appear clockwise in the image as displayed (u right,
            v down). Right for closed meshes whose faces run counter-clockwise seen
            from outside; it halves the faces PyTorch3D must process (its CPU cost
            is about 10 us per face before any pixel is touched).
        znear, zfar: if not None, the depth range in mm: fragments (candidate
            surface points of a pixel) with z < znear or z > zfar are discarded from
            the silhouette, the mask and the depth. This is no geometric clipping:
            a surface behind a discarded fragment shows only if it is among the kept
            faces of that pixel. Vertices must have z > 0 in any case.

    Raises (from :meth:`validate`):
        ValueError: naming the field that is out of range.
    """

    sigma: float = 1e-4
    sigma_px: Optional[float] = None
    blur_eps: float = 1e-4
    faces_per_pixel: int = 16
    blend_covering_face: bool = True
    tile_size: Optional[int] = None
    bin_size: Optional[int] = None
    max_faces_per_bin: Optional[int] = None
    perspective_correct: bool = True
    cull_backfaces: bool = False
    znear: Optional[float] = None
    zfar: Optional[float] = None

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""

        check_positive(self, "sigma")
        for name in ("sigma_px", "znear", "zfar"):
            check_positive(self, name, optional=True)
        check_open_interval(self, "blur_eps", 0.0, 0.5)
        for name, lo, optional in (
            ("faces_per_pixel", 1, False),
            ("tile_size", 0, True),
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
        for name in ("perspective_correct", "cull_backfaces", "blend_covering_face"):
            check_bool(self, name)
        if self.znear is not None and self.zfar is not None and self.zfar <= self.znear:
            raise ValueError(f"zfar ({self.zfar}) must be > znear ({self.znear})")


class _Fragments:
    """Valid fragments of a rasterization, flattened: index ``m`` is pixel
    ``(b[m], y[m], x[m])``, slot ``k[m]``, face ``f[m]``; ``dist`` is PyTorch3D's
    signed squared distance from the pixel centre to the face in *squared pixels*
    (negative inside), ``z`` PyTorch3D's depth of the fragment (no autograd)."""

    __slots__ = ("b", "y", "x", "k", "f", "dist", "z")

    def __init__(self, b, y, x, k, f, dist, z):
        self.b, self.y, self.x, self.k, self.f, self.dist, self.z = b, y, x, k, f, dist, z

    def select(self, keep: torch.Tensor) -> "_Fragments":
        return _Fragments(*(getattr(self, n)[keep] for n in self.__slots__))


def _rasterize(
    face_px: torch.Tensor,
    H: int,
    W: int,
    blur_px: float,
    K: int,
    tile: int,
    settings: HybridRenderSettings,
    visible: Optional[torch.Tensor] = None,
) -> _Fragments:
    """Find the fragments of every pixel with PyTorch3D's rasterizer (no autograd).

    Args:
        face_px: (B, F, 3, 3) detached float32 face corners as (u px, v px, z mm).
        H, W: image size in px.
        blur_px: blur radius in px (0 for a hard rasterization).
        K: faces per pixel.
        tile: tile side in px, 0 for the whole image in one pass.
        settings: for bin_size, max_faces_per_bin, perspective_correct.
        visible: optional (B, F) bool, faces to consider (None = all).

    Returns:
        _Fragments of the pixels' K nearest faces (in z) within ``blur_px``.
    """
    B, nF = face_px.shape[:2]
    device = face_px.device
    th, tw = (tile, tile) if tile > 0 else (H, W)
    TY, TX = -(-H // th), -(-W // tw)
    s = 2.0 / min(th, tw)  # NDC units per pixel inside one tile
    margin = blur_px + 1e-3

    # Which tiles each face's blurred bounding box overlaps (conservatively).
    fu, fv = face_px[..., 0], face_px[..., 1]
    tx0 = torch.floor((fu.amin(-1) - margin) / tw).clamp_(0, TX - 1).long()
    tx1 = torch.floor((fu.amax(-1) + margin) / tw).clamp_(-1, TX - 1).long()
    ty0 = torch.floor((fv.amin(-1) - margin) / th).clamp_(0, TY - 1).long()
    ty1 = torch.floor((fv.amax(-1) + margin) / th).clamp_(-1, TY - 1).long()
    nx = (tx1 - tx0 + 1).clamp_(min=0)
    ny = (ty1 - ty0 + 1).clamp_(min=0)
    # Off-screen faces get nx or ny = 0 (the clamps make tx1 < tx0).
    nx = torch.where((fu.amax(-1) + margin < 0) | (fu.amin(-1) - margin > W - 1), 0, nx)
    ny = torch.where((fv.amax(-1) + margin < 0) | (fv.amin(-1) - margin > H - 1), 0, ny)
    counts = nx * ny
    if visible is not None:
        counts = counts * visible
    counts = counts.reshape(-1)  # (B*F,)
    total = int(counts.sum())
    if total == 0:
        e = torch.zeros(0, dtype=torch.long, device=device)
        z = torch.zeros(0, device=device)
        return _Fragments(e, e, e, e, e, z, z)

    # Expand to (face, tile) pairs and group them by tile.
    pair_face = torch.repeat_interleave(torch.arange(B * nF, device=device), counts)
    start = torch.cumsum(counts, 0) - counts
    offset = torch.arange(total, device=device) - start[pair_face]
    nx_f, tx0_f, ty0_f = nx.reshape(-1)[pair_face], tx0.reshape(-1)[pair_face], ty0.reshape(-1)[pair_face]
    pair_tx = tx0_f + offset % nx_f
    pair_ty = ty0_f + torch.div(offset, nx_f, rounding_mode="floor")
    pair_b = torch.div(pair_face, nF, rounding_mode="floor")
    pair_tile = (pair_b * TY + pair_ty) * TX + pair_tx
    order = torch.argsort(pair_tile, stable=True)
    pair_tile, pair_face = pair_tile[order], pair_face[order]
    tiles, per_tile = torch.unique_consecutive(pair_tile, return_counts=True)
    T, Fmax = tiles.shape[0], int(per_tile.max())
    first = torch.cumsum(per_tile, 0) - per_tile
    tile_of_pair = torch.repeat_interleave(torch.arange(T, device=device), per_tile)
    rank = torch.arange(total, device=device) - first[tile_of_pair]

    # Face corners in each tile's NDC (PyTorch3D: +x left, +y up, pixel centres at
    # s * (tw / 2 - 0.5 - col)), z kept in mm. One "vertex soup" mesh per tile.
    tile_b = torch.div(tiles, TY * TX, rounding_mode="floor")
    tile_y = torch.div(tiles, TX, rounding_mode="floor") % TY
    tile_x = tiles % TX
    ox = (tile_x * tw).to(face_px.dtype)[tile_of_pair][:, None]
    oy = (tile_y * th).to(face_px.dtype)[tile_of_pair][:, None]
    corners = face_px.reshape(B * nF, 3, 3)[pair_face]  # (P, 3, 3)
    ndc = torch.stack(
        [
            s * (tw / 2.0 - 0.5 - (corners[..., 0] - ox)),
            s * (th / 2.0 - 0.5 - (corners[..., 1] - oy)),
            corners[..., 2],
        ],
        dim=-1,
    )
    verts_pad = torch.zeros(T, Fmax, 3, 3, device=device, dtype=face_px.dtype)
    verts_pad[tile_of_pair, rank] = ndc
    faces_pad = torch.full((T, Fmax, 3), -1, dtype=torch.long, device=device)
    faces_pad[tile_of_pair, rank] = (
        torch.arange(3, device=device) + 3 * rank[:, None]
    )
    meshes = Meshes(verts=verts_pad.reshape(T, Fmax * 3, 3), faces=faces_pad)
    bin_size = settings.bin_size
    if device.type == "cpu":
        bin_size = 0
    p2f, zbuf, _, dists = rasterize_meshes(
        meshes,
        image_size=(th, tw),
        blur_radius=(blur_px * s) ** 2,
        faces_per_pixel=K,
        bin_size=bin_size,
        max_faces_per_bin=settings.max_faces_per_bin,
        perspective_correct=settings.perspective_correct,
        clip_barycentric_coords=blur_px > 0,
    )  # (T, th, tw, K); packed face index = index into the tile-sorted pairs

    t, yy, xx, kk = (p2f >= 0).nonzero(as_tuple=True)
    y = tile_y[t] * th + yy
    x = tile_x[t] * tw + xx
    on_image = (y < H) & (x < W)
    t, yy, xx, kk, y, x = (a[on_image] for a in (t, yy, xx, kk, y, x))
    packed = p2f[t, yy, xx, kk]
    face = pair_face[packed] % nF
    return _Fragments(
        b=tile_b[t],
        y=y,
        x=x,
        k=kk,
        f=face,
        dist=dists[t, yy, xx, kk] / (s * s),
        z=zbuf[t, yy, xx, kk],
    )


def _zbuffer(
    face_px: torch.Tensor,
    H: int,
    W: int,
    settings: HybridRenderSettings,
    visible: Optional[torch.Tensor] = None,
) -> _Fragments:
    """Hard z-buffer (no autograd): for every pixel centre, the nearest face covering it.

    Vectorised over (face, pixel) pairs, each face paired with the pixel centres of
    its bounding box, so the work is proportional to the pixels the faces cover. A
    centre within ``COVER_TOL_PX`` of a face counts as covered.

    Args:
        face_px: (B, F, 3, 3) detached face corners as (u px, v px, z mm).
        H, W: image size in px.
        settings: for perspective_correct, znear, zfar (candidates outside
            [znear, zfar] are dropped before the depth test).
        visible: optional (B, F) bool, faces to consider (None = all).

    Returns:
        _Fragments with one fragment (k = 0) per covered pixel.
    """
    B, nF = face_px.shape[:2]
    flat = face_px.reshape(B * nF, 3, 3)
    fu, fv = flat[..., 0], flat[..., 1]
    tol = COVER_TOL_PX
    pf, x, y = box_pixel_pairs(fu.amin(-1) - tol, fu.amax(-1) + tol, fv.amin(-1) - tol,
                               fv.amax(-1) + tol, H, W,
                               None if visible is None else visible.reshape(-1))
    tri = flat.index_select(0, pf)
    p = torch.stack([x, y], dim=-1).to(tri.dtype)
    covered = covers(p, tri[..., :2])
    z = interp_depth(p, tri, settings.perspective_correct)
    if settings.znear is not None:
        covered &= z >= settings.znear
    if settings.zfar is not None:
        covered &= z <= settings.zfar
    keep = covered.nonzero(as_tuple=True)[0]
    pf, x, y, z = (t.index_select(0, keep) for t in (pf, x, y, z))
    bb = torch.div(pf, nF, rounding_mode="floor")
    win = nearest_per_pixel((bb * H + y) * W + x, z, B * H * W)
    zero = torch.zeros_like(win)
    bb, y, x, pf, z = (t.index_select(0, win) for t in (bb, y, x, pf, z))
    return _Fragments(bb, y, x, zero, pf % nF, face_px.new_zeros(win.shape), z)


class HybridRenderer(nn.Module):
    """The hybrid soft-silhouette + depth renderer (registry name ``"hybrid"``).

    PyTorch3D's ``rasterize_meshes`` (no autograd) only selects the candidate fragments
    (the K nearest faces within the blur radius of each pixel); our own z-buffer finds
    the covering face, and the silhouette, the sigmoid alpha blend of
    ``SoftSilhouetteShader`` (Liu et al., ICCV 2019, Eqs. 1 and 4), and the
    perspective-correct depth of the covering face are recomputed in plain PyTorch, with
    analytic-distance gradients. Not PyTorch3D's pipeline (that is
    :class:`renderers.PyTorch3DRenderer`), but much faster on the CPU. See the module
    docstring for the details, the units of ``sigma`` and pixel centres.

    Args:
        settings: a :class:`HybridRenderSettings`; default settings if None.

    Raises:
        ValueError: if ``settings`` is not a HybridRenderSettings or is out of range.

    Example:
        >>> from pytorch3d.utils import ico_sphere
        >>> sphere = ico_sphere(2)
        >>> verts = sphere.verts_padded() * 50 + torch.tensor([0.0, 0.0, 500.0])
        >>> faces = sphere.faces_padded()[0]
        >>> cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
        >>> out = HybridRenderer()(verts, faces, cam)
        >>> out.silhouette.shape, out.depth.shape, out.mask.dtype
        (torch.Size([1, 64, 64]), torch.Size([1, 64, 64]), torch.bool)
    """

    def __init__(self, settings: Optional[HybridRenderSettings] = None) -> None:
        super().__init__()
        self.settings = checked_settings(settings, HybridRenderSettings)

    def extra_repr(self) -> str:
        return repr(self.settings)

    def forward(
        self,
        verts: torch.Tensor,
        faces: torch.Tensor,
        camera: Camera,
        **overrides,
    ) -> RenderOutput:
        """Render soft silhouettes, depth maps and hard masks.

        Args:
            verts: (B, V, 3) vertices in mm, OpenCV camera coordinates (x right, y down,
                z forward), all with z > 0. Any floating dtype (the rasterizer runs in
                float32; the outputs take ``verts``' dtype).
            faces: (F, 3) long vertex indices shared by the batch, or (B, F, 3).
            camera: :class:`Camera` of batch size 1 or B; gives the image size (H, W).
            **overrides: any :class:`HybridRenderSettings` field, for this call only.

        Returns:
            RenderOutput with ``silhouette`` (B, H, W) in [0, 1], ``depth`` (B, H, W) in
            mm (0 where ``mask`` is False) and ``mask`` (B, H, W) bool. Gradients flow
            from ``silhouette`` and ``depth`` to ``verts`` (and to the camera
            intrinsics if they require grad).

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
        B, V, _ = verts.shape
        H, W = camera.height, camera.width
        device = verts.device
        tile = settings.tile_size
        if tile is None:
            tile = (16 if min(H, W) <= 64 else 32) if device.type == "cpu" else 0

        # Projected corners of every face: (B, F, 3, 3) as (u px, v px, z mm).
        face_px = project_faces(verts, faces, camera)
        face_px_32 = face_px.detach().float()

        sigma = settings.sigma_ndc(H, W)
        px2ndc2 = (2.0 / min(H, W)) ** 2  # squared px -> squared NDC
        with torch.no_grad():
            visible = front_facing(verts, faces) if settings.cull_backfaces else None
            soft = _rasterize(
                face_px_32, H, W, settings.blur_radius_px(H, W), settings.faces_per_pixel,
                tile, settings, visible,
            )
            soft = self._depth_range(soft, settings)
            hard = _zbuffer(face_px_32, H, W, settings, visible)
            pix_s = (soft.b * H + soft.y) * W + soft.x
            pix_h = (hard.b * H + hard.y) * W + hard.x
            inside_s = soft.dist < 0
            f_s = soft.f
            if settings.blend_covering_face and pix_h.numel() > 0:
                n_faces = face_px.shape[1]
                extra = ~torch.isin(pix_h * n_faces + hard.f, pix_s * n_faces + soft.f)
                pix_s = torch.cat([pix_s, pix_h[extra]])
                f_s = torch.cat([f_s, hard.f[extra]])
                inside_s = torch.cat([inside_s, torch.ones_like(pix_h[extra], dtype=torch.bool)])

        # Silhouette: 1 - prod_k sigmoid(d_k / sigma), d_k signed squared NDC distance.
        b_s = torch.div(pix_s, H * W, rounding_mode="floor")
        tri = face_px[b_s, f_s]  # (M, 3, 3), differentiable
        p = torch.stack([pix_s % W, torch.div(pix_s, W, rounding_mode="floor") % H], dim=-1)
        d2 = point_triangle_dist2(p.to(tri.dtype), tri[..., :2]) * px2ndc2
        d = torch.where(inside_s, -d2, d2)
        log_bg = torch.zeros(B * H * W, device=device, dtype=tri.dtype)
        log_bg = log_bg.index_add(0, pix_s, F.logsigmoid(d / sigma))
        silhouette = (-torch.expm1(log_bg)).reshape(B, H, W)

        # Depth and mask from the covering face of each pixel.
        tri_h = face_px[hard.b, hard.f]
        p_h = torch.stack([hard.x, hard.y], dim=-1).to(tri_h.dtype)
        z = interp_depth(p_h, tri_h, settings.perspective_correct)
        depth = torch.zeros(B * H * W, device=device, dtype=tri_h.dtype).index_put((pix_h,), z)
        mask = torch.zeros(B * H * W, device=device, dtype=torch.bool)
        mask[pix_h] = True

        dtype = verts.dtype
        return RenderOutput(
            silhouette=silhouette.to(dtype),
            depth=depth.reshape(B, H, W).to(dtype),
            mask=mask.reshape(B, H, W),
        )

    @staticmethod
    def _depth_range(frags: _Fragments, settings: HybridRenderSettings) -> _Fragments:
        if settings.znear is None and settings.zfar is None:
            return frags
        keep = torch.ones_like(frags.z, dtype=torch.bool)
        if settings.znear is not None:
            keep &= frags.z >= settings.znear
        if settings.zfar is not None:
            keep &= frags.z <= settings.zfar
        return frags.select(keep)
