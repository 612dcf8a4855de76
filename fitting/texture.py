"""Texture extraction: a hand's colour texture from RGB frames and the fitted meshes.

RealisticHands (Seeber et al., seed 003, Sec. 3.2 "Texturing"): the fitted mesh's UVs are
rasterized to map colours from the image into the texture map, in every frame, and the
texture is updated with exponential smoothing ("we average the current texture with the
previous"): ``T_t = T_{t-1} + a (C_t - T_{t-1})`` with ``a = 0.5`` (:data:`SMOOTHING`) for the
texels the frame sees, ``T_t = C_t`` where a texel is seen for the first time, ``T_t = T_{t-1}``
where the frame does not see it. With independent noise of standard deviation ``s`` per frame,
a texel seen in ``n`` frames keeps a noise of
``s * sqrt((1 - a)^(2 (n - 1)) + a^2 (1 - (1 - a)^(2 (n - 1))) / (1 - (1 - a)^2))``
(:func:`smoothed_noise`): ``s / sqrt(3)`` for ``a = 0.5`` and many frames.

How one view is unwrapped (:func:`unwrap_texture`):

1. PyTorch3D's ``MeshRasterizer`` (one face per pixel, no blur, through
   :meth:`renderers.PyTorch3DRenderer.to_pytorch3d_cameras`, in a window around the hand's
   projection) gives the z-buffer and the hand's pixels; kornia's ``distance_transform`` their
   distance to the silhouette and occlusion edges, px.
2. Every covered texel of the atlas (:meth:`fitting.uv_atlas.UVAtlas.texel_map`: its face and
   barycentric coordinates) is placed on the posed mesh and projected with the
   :class:`renderers.Camera`; its colour is the image sampled there (``grid_sample``, bilinear).
   Each texel gathers its colour instead of each pixel splatting into the texture, so a
   texture with more texels than the image has hand pixels has no holes, and the colour is
   differentiable in the vertices (the NCC energy of :mod:`losses.texture` uses it).
3. Its weight is ``visible * max(0, cos) * clamp((d - 1) / edge_px, 0, 1)``: visible when in the image,
   on a hand pixel and not behind the z-buffer by more than ``depth_tolerance_mm``; ``cos``
   the cosine between the (interpolated vertex) normal and the ray to the camera; ``d`` the
   distance of its pixel to the nearest edge, less one pixel: the silhouette's or an occlusion
   boundary's (neighbouring z-buffer values more than ``occlusion_jump_mm`` apart), where the
   bilinear lookup would mix in the background or the occluder. Weights below ``min_weight``
   count as unseen.

The views of one frame (a batch) are averaged with these weights; the frame then updates the
texture by the smoothing above. The confidence map is ``1 - prod_t (1 - min(1, W_t))`` over
frames (``W_t`` the frame's summed weight): 0 exactly for texels never seen, near 1 for texels
seen well and often. :meth:`TextureAccumulator.texture` fills never-seen texels from their
neighbours per chart (scikit-image's ``inpaint_biharmonic`` from that chart's seen texels only,
at up to 128 blocks per side: so no colour crosses a seam) and pads a band of the gutter
around the charts from the nearest chart texel (for filtered lookups); :func:`fill_texture`.

:func:`extract_texture` runs it over a recording: the output folder is checked first, a tqdm
bar runs over the frames, the accumulator's state is saved every ``save_every`` frames
(``texture_state.npz``) and a rerun continues from it. It writes ``texture.png``,
``confidence.png``, ``hand.obj`` + ``hand.mtl`` + ``hand_texture.png`` (mm, the first frame's
camera coordinates, like a fit's ``mesh.obj``), ``hand.glb`` (metres, glTF's y up: the
camera coordinates turned 180 degrees about x; both meshes by trimesh) and ``texture.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from renderers import Camera

from .errors import InputError
from .uv_atlas import TexelMap, UVAtlas

__all__ = [
    "SMOOTHING",
    "TextureAccumulator",
    "TextureFrame",
    "TextureReference",
    "TextureReport",
    "TextureSettings",
    "UnwrappedTexture",
    "extract_texture",
    "read_rgb",
    "smoothed_noise",
    "texture_energy",
    "textured_mesh",
    "unwrap_texture",
    "write_textured_mesh",
]

#: RealisticHands' exponential smoothing factor (seed 003, Sec. 3.2: the current texture is
#: averaged with the previous one): the weight of a new frame's colour.
SMOOTHING = 0.5
STATE_FILE = "texture_state.npz"


@dataclasses.dataclass
class TextureSettings:
    """How views are unwrapped and weighted (see the module docstring).

    Members:
        depth_tolerance_mm: a texel is visible when its z is at most this far behind the
            z-buffer at its pixel (mm, > 0).
        edge_px: the weight ramps from 0 one pixel inside an edge (where the bilinear lookup
            would mix in what lies beyond it) to 1 at ``1 + edge_px`` px (px, > 0).
        occlusion_jump_mm: neighbouring pixels whose z-buffer differs by more than this are an
            occlusion edge (a finger over the palm), treated like the silhouette edge (mm, > 0).
        min_weight: weights below this count as unseen, in [0, 1).
        smoothing: the exponential smoothing factor over frames, in (0, 1]
            (:data:`SMOOTHING`; 1 keeps only the latest frame).
        rasterizer: what gives the z-buffer and the hand's pixels: ``"pytorch3d"``, one hard
            ``MeshRasterizer`` pass in a window around the hand; or a renderer of
            :data:`renderers.RENDERERS` (``"soft"``: its exact z-buffer and hard mask, the same
            to 1 pixel in 20,000 and 0.001 mm, about 7x faster on the CPU: ``bench/texture.py``).
    """

    depth_tolerance_mm: float = 3.0
    edge_px: float = 3.0
    occlusion_jump_mm: float = 10.0
    min_weight: float = 0.05
    smoothing: float = SMOOTHING
    rasterizer: str = "pytorch3d"

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        for name in ("depth_tolerance_mm", "edge_px", "occlusion_jump_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(self.min_weight, (int, float)) and 0 <= self.min_weight < 1):
            raise ValueError(f"min_weight must be in [0, 1), got {self.min_weight!r}")
        if not (isinstance(self.smoothing, (int, float)) and 0 < self.smoothing <= 1):
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing!r}")
        from renderers import RENDERERS

        if self.rasterizer not in ("pytorch3d", *RENDERERS):
            raise ValueError(f"rasterizer must be 'pytorch3d' or one of {', '.join(sorted(RENDERERS))}, "
                             f"got {self.rasterizer!r}")


def smoothed_noise(sigma: float, frames: int, smoothing: float = SMOOTHING) -> float:
    """Noise left by the exponential smoothing of ``frames`` frames of independent noise ``sigma``.

    ``T_1 = C_1`` then ``T_t = (1 - a) T_{t-1} + a C_t``:
    ``std(T_n) = sigma * sqrt((1 - a)^(2 (n - 1)) + a^2 (1 - (1 - a)^(2 (n - 1))) / (1 - (1 - a)^2))``.
    """
    a, n = float(smoothing), int(frames)
    q = (1 - a) ** 2
    geometric = (1 - q ** (n - 1)) / (1 - q) if q < 1 else 0.0
    return sigma * math.sqrt(q ** (n - 1) + a * a * geometric)


class UnwrappedTexture(NamedTuple):
    """One unwrapping of B views into an ``S x S`` texture.

    Attributes:
        colour: (B, C, S, S), the image colours at each covered texel (0 elsewhere);
            differentiable in the vertices and the image.
        weight: (B, S, S) in [0, 1], visibility x viewing angle x edge distance (no grad);
            0 for texels the view does not see.
    """

    colour: torch.Tensor
    weight: torch.Tensor


def _check_views(image: torch.Tensor, vertices: torch.Tensor, camera: Camera, atlas: UVAtlas) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point():
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"rgb must be a floating (B, C, H, W) tensor in [0, 1], got {got}")
    if not isinstance(vertices, torch.Tensor) or vertices.dim() != 3 or vertices.shape[-1] != 3:
        got = tuple(vertices.shape) if isinstance(vertices, torch.Tensor) else type(vertices).__name__
        raise InputError(f"vertices must be a (B, V, 3) tensor in mm, got {got}")
    if not isinstance(camera, Camera):
        raise InputError(f"camera must be a renderers.Camera, got {type(camera).__name__}")
    H, W = image.shape[-2:]
    if (camera.height, camera.width) != (H, W):
        raise InputError(f"the RGB image is {W}x{H} but its camera is for a {camera.width}x{camera.height} image")
    B = image.shape[0]
    if vertices.shape[0] != B or camera.batch_size not in (1, B):
        raise InputError(f"rgb has {B} views, vertices {vertices.shape[0]} and the camera {camera.batch_size}; "
                         "give one (or, for the camera, a shared) per view")
    if int(atlas.faces.max()) >= vertices.shape[1]:
        raise InputError(f"the mesh has {vertices.shape[1]} vertices but the atlas's faces index "
                         f"{int(atlas.faces.max()) + 1}: a fit of another hand model?")


def _texel_tensors(atlas: UVAtlas, size: int, device, dtype):
    """Covered texel indices, their faces' vertex ids and barycentrics on ``device``/``dtype`` (cached)."""
    key = ("device", size, str(device), dtype)
    cache = atlas._texel_maps
    if key not in cache:
        tm: TexelMap = atlas.texel_map(size)
        idx = tm.index
        face = tm.face.reshape(-1)[idx]
        cache[key] = (idx.to(device), atlas.faces[face].to(device),
                      tm.bary.reshape(-1, 3)[idx].to(device=device, dtype=dtype))
    return cache[key]


def _rasterize(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera, margin: int = 3):
    """z-buffer (B, h, w) mm and hand pixels (B, h, w) bool from PyTorch3D's MeshRasterizer, in a
    window around the mesh's projection (PyTorch3D's CPU rasterizer tests every face at every
    pixel: the window makes it as fast as the hand is small), and each view's window origin
    ``(x0, y0)`` (B,) long: window pixel ``[i, j]`` is frame pixel ``[y0 + i, x0 + j]``."""
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes

    from renderers import PyTorch3DRenderer

    B = vertices.shape[0]
    camera = camera.expand(B) if camera.batch_size == 1 else camera
    with torch.no_grad():
        uv = camera.project(vertices.detach())
        uv = torch.where(torch.isfinite(uv), uv, torch.zeros_like(uv))
        lo = uv.amin(1).floor().long() - margin                                   # (B, 2)
        hi = uv.amax(1).ceil().long() + margin
        lo = torch.maximum(lo, torch.zeros_like(lo))
        hi = torch.minimum(hi, torch.tensor([camera.width - 1, camera.height - 1], device=hi.device))
        side = (hi - lo + 1).clamp(min=1)
    w, h = int(side[:, 0].max()), int(side[:, 1].max())
    x0, y0 = lo[:, 0], lo[:, 1]
    if (w, h) != (camera.width, camera.height):
        # the window's camera: principal point moved by the origin, same focal lengths (1:1)
        camera = Camera(camera.fx, camera.fy, camera.cx - x0.to(camera.dtype), camera.cy - y0.to(camera.dtype), w, h)
    cameras = PyTorch3DRenderer.to_pytorch3d_cameras(camera, device=vertices.device)
    settings = RasterizationSettings(image_size=(h, w), blur_radius=0.0, faces_per_pixel=1,
                                     bin_size=0 if vertices.device.type == "cpu" else None,
                                     perspective_correct=True)
    meshes = Meshes(verts=vertices.detach().float(), faces=faces.expand(B, -1, -1))
    fragments = MeshRasterizer(cameras, settings)(meshes)
    mask = fragments.pix_to_face[..., 0] >= 0
    return fragments.zbuf[..., 0].to(vertices.dtype), mask, x0, y0


@functools.lru_cache(maxsize=None)
def _renderer(name: str):
    from renderers import make_renderer

    return make_renderer(name)


def unwrap_texture(image: torch.Tensor, vertices: torch.Tensor, camera: Camera, atlas: UVAtlas, size: int,
                   settings: Optional[TextureSettings] = None) -> UnwrappedTexture:
    """Unwrap B views into the atlas: each covered texel's colour and weight (module docstring).

    Args:
        image: (B, C, H, W) floating, colours in [0, 1] (kornia's layout), one view each.
        vertices: (B, V, 3) mm, the posed mesh in each view's camera coordinates (OpenCV axes).
        camera: :class:`renderers.Camera` of batch 1 or B, for (H, W) images.
        atlas: the :class:`~fitting.uv_atlas.UVAtlas` of the mesh.
        size: S, texels per side.
        settings: :class:`TextureSettings` (default ones if None).

    Returns:
        :class:`UnwrappedTexture` on ``vertices``' device, in ``image``'s dtype; the colour's
        gradient reaches ``vertices`` (through the projection) and ``image``.

    Raises:
        InputError: shapes that disagree (the image's size and its camera's, the number of
            views, a mesh with fewer vertices than the atlas indexes).
        ValueError: ``settings`` out of range.
    """
    settings = settings or TextureSettings()
    settings.validate()
    _check_views(image, vertices, camera, atlas)
    import kornia

    B, C, H, W = image.shape
    device, dtype = vertices.device, image.dtype
    camera = camera.to(device=device, dtype=vertices.dtype)
    idx, corner_vertices, bary = _texel_tensors(atlas, size, device, vertices.dtype)
    faces = atlas.faces.to(device)
    if settings.rasterizer == "pytorch3d":
        zbuf, mask, x0, y0 = _rasterize(vertices, faces, camera)
    else:
        with torch.no_grad():
            render = _renderer(settings.rasterizer)(vertices.detach(), faces, camera)
        zbuf, mask = render.depth, render.mask
        x0 = y0 = torch.zeros(B, dtype=torch.long, device=device)
    h, w = mask.shape[-2:]

    points = (vertices[:, corner_vertices] * bary[None, :, :, None]).sum(2)            # (B, N, 3)
    with torch.no_grad():
        from pytorch3d.structures import Meshes

        normals = Meshes(verts=vertices.detach(), faces=faces.expand(B, -1, -1)).verts_normals_padded()
        n = F.normalize((normals[:, corner_vertices] * bary[None, :, :, None]).sum(2), dim=-1)
        ray = F.normalize(points.detach(), dim=-1)
        cos = (-(n * ray).sum(-1)).clamp(min=0)
    uv = camera.project(points)                                                        # (B, N, 2)
    grid = torch.stack([(2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1], -1).to(dtype)
    colour = F.grid_sample(image, grid[:, None], mode="bilinear", padding_mode="border", align_corners=False)
    colour = colour[:, :, 0]                                                            # (B, C, N)

    with torch.no_grad():
        z = points[..., 2].detach()
        col, row = uv[..., 0].detach().round().long(), uv[..., 1].detach().round().long()
        inside = (col >= 0) & (col < W) & (row >= 0) & (row < H) & (z > 0)
        col, row = col - x0[:, None], row - y0[:, None]                       # in the window
        inside = inside & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        flat = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))
        hand = mask.reshape(B, -1).gather(1, flat)
        depth = zbuf.reshape(B, -1).gather(1, flat)
        visible = inside & hand & (z <= depth + settings.depth_tolerance_mm)
        # edges: the silhouette's and the occlusion boundaries' (z jumps between neighbours)
        far = torch.where(mask, zbuf, torch.full_like(zbuf, 1e6))[:, None]
        zmax, zmin = F.max_pool2d(far, 3, 1, 1), -F.max_pool2d(-far, 3, 1, 1)
        jump = ((zmax - far) > settings.occlusion_jump_mm) | ((far - zmin) > settings.occlusion_jump_mm)
        sources = (~mask[:, None]) | jump
        edge = kornia.contrib.distance_transform(sources.to(dtype), kernel_size=3)[:, 0]
        edge = ((edge.reshape(B, -1).gather(1, flat) - 1) / settings.edge_px).clamp(0, 1)
        weight = visible.to(dtype) * cos.to(dtype) * edge
        weight = torch.where(weight >= settings.min_weight, weight, torch.zeros((), dtype=dtype, device=device))

    S = size
    full = torch.zeros(B, C, S * S, device=device, dtype=dtype)
    full = full.index_copy(2, idx, colour)
    full_weight = torch.zeros(B, S * S, device=device, dtype=dtype).index_copy(1, idx, weight)
    return UnwrappedTexture(colour=full.reshape(B, C, S, S), weight=full_weight.reshape(B, S, S))


class TextureAccumulator:
    """Accumulates a hand's texture over frames (RealisticHands Sec. 3.2; module docstring).

    Args:
        atlas: the mesh's :class:`~fitting.uv_atlas.UVAtlas`.
        size: S, texels per side (e.g. 512 or 1024).
        settings: :class:`TextureSettings`; ``settings.smoothing`` is the factor over frames.
        channels: colour channels C (3 for RGB).

    The state (colour (C, S, S), seen (S, S) bool, confidence (S, S), frames) is made on
    the first :meth:`add`, on its vertices' device and in its image's dtype.

    Raises:
        ValueError: ``size`` not an int >= 8, settings out of range.

    Example:
        >>> acc = TextureAccumulator(atlas, 512)                        # doctest: +SKIP
        >>> for rgb, camera, vertices in frames:                        # doctest: +SKIP
        ...     acc.add(rgb, camera, vertices)   # (3, H, W) or (B, 3, H, W) views of one frame
        >>> texture, confidence = acc.texture(), acc.confidence()       # doctest: +SKIP
    """

    def __init__(self, atlas: UVAtlas, size: int = 512, settings: Optional[TextureSettings] = None,
                 channels: int = 3) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an int >= 8 texels, got {size!r}")
        self.atlas, self.size, self.channels = atlas, size, channels
        self.settings = settings or TextureSettings()
        self.settings.validate()
        self.colour: Optional[torch.Tensor] = None
        self.seen: Optional[torch.Tensor] = None
        self._confidence: Optional[torch.Tensor] = None
        self.frames = 0

    def _init_state(self, device, dtype) -> None:
        S = self.size
        self.colour = torch.zeros(self.channels, S, S, device=device, dtype=dtype)
        self.seen = torch.zeros(S, S, dtype=torch.bool, device=device)
        self._confidence = torch.zeros(S, S, device=device, dtype=dtype)

    def add(self, rgb: torch.Tensor, camera: Camera, vertices: torch.Tensor) -> torch.Tensor:
        """Add one frame: its views' colours, averaged by weight, update the texture by smoothing.

        Args:
            rgb: (C, H, W) or (B, C, H, W) floating colours in [0, 1], the frame's B views
                (see :func:`read_rgb` for image files).
            camera: :class:`renderers.Camera` of batch 1 or B.
            vertices: (V, 3) or (B, V, 3) mm, the fitted mesh in each view's camera coordinates.

        Returns:
            (S, S), the frame's summed weight per texel (0 where unseen).

        Raises:
            InputError: as :func:`unwrap_texture`.
        """
        if isinstance(rgb, torch.Tensor) and rgb.dim() == 3:
            rgb = rgb[None]
        if isinstance(vertices, torch.Tensor) and vertices.dim() == 2:
            vertices = vertices[None]
        with torch.no_grad():
            view = unwrap_texture(rgb, vertices, camera, self.atlas, self.size, self.settings)
            if self.colour is None:
                self._init_state(view.colour.device, view.colour.dtype)
            w = view.weight.sum(0)
            seen_now = w > 0
            frame = (view.weight[:, None] * view.colour).sum(0) / w.clamp(min=1e-12)
            a = torch.where(self.seen, torch.full_like(w, self.settings.smoothing), torch.ones_like(w))
            a = torch.where(seen_now, a, torch.zeros_like(w))
            self.colour = self.colour + a * (frame - self.colour)
            self._confidence = 1 - (1 - self._confidence) * (1 - w.clamp(max=1))
            self.seen = self.seen | seen_now
        self.frames += 1
        return w

    def confidence(self) -> torch.Tensor:
        """(S, S) in [0, 1]: ``1 - prod_t (1 - min(1, W_t))``; 0 exactly where never seen.

        Raises:
            RuntimeError: no frame was added.
        """
        self._require()
        return self._confidence

    def _require(self) -> None:
        if self.colour is None:
            raise RuntimeError("no frame was added to the TextureAccumulator yet")

    def texture(self, fill: bool = True) -> torch.Tensor:
        """(C, S, S) in [0, 1]: the smoothed texture, row 0 at ``v = 1``.

        Args:
            fill: fill never-seen texels per chart from that chart's seen texels
                (:func:`fill_texture`: ``skimage.restoration.inpaint_biharmonic``, so no
                colour crosses a seam), a chart never seen with the mean seen colour, and pad
                a band of the gutter with the nearest chart texel; on the CPU (numpy), the
                result back on the state's device. ``False``: unseen texels stay 0.

        Raises:
            RuntimeError: no frame was added.
        """
        self._require()
        if not fill:
            return self.colour.clamp(0, 1)
        tm = self.atlas.texel_map(self.size)
        filled = fill_texture(self.colour.detach().cpu().double().numpy().transpose(1, 2, 0),
                              self.seen.cpu().numpy(), tm.chart.numpy())
        return torch.from_numpy(filled.transpose(2, 0, 1).copy()).to(self.colour).clamp(0, 1)

    # -- state (resuming) -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """numpy arrays of the state: ``colour``, ``seen``, ``confidence``, ``frames``, ``size``."""
        self._require()
        return {"colour": self.colour.cpu().numpy(), "seen": self.seen.cpu().numpy(),
                "confidence": self._confidence.cpu().numpy(), "frames": np.array(self.frames),
                "size": np.array(self.size)}

    def load_state_dict(self, state: dict, device=None, dtype=None) -> None:
        """Restore :meth:`state_dict`'s arrays (on ``device``, in ``dtype``; default CPU float32).

        Raises:
            InputError: the state is for another texture size or channel count.
        """
        if int(state["size"]) != self.size or state["colour"].shape[0] != self.channels:
            raise InputError(f"the saved texture state is {int(state['size'])} texels with "
                             f"{state['colour'].shape[0]} channels, not {self.size} with {self.channels}")
        dtype = dtype or torch.float32
        self.colour = torch.as_tensor(state["colour"], device=device, dtype=dtype)
        self.seen = torch.as_tensor(state["seen"], device=device, dtype=torch.bool)
        self._confidence = torch.as_tensor(state["confidence"], device=device, dtype=dtype)
        self.frames = int(state["frames"])


def fill_texture(colour: np.ndarray, seen: np.ndarray, chart: np.ndarray, coarse: int = 128,
                 gutter: int = 4) -> np.ndarray:
    """Fill never-seen texels per chart and pad the gutter (see :meth:`TextureAccumulator.texture`).

    Per chart: its seen texels are averaged into blocks of at most ``coarse`` per side, the
    rest of the chart's box at that resolution is filled by ``skimage.restoration.inpaint_biharmonic``
    from them alone (no other chart's colour enters), and the result, resized back
    (``skimage.transform.resize``, bilinear), fills the chart's unseen texels; a chart never seen
    takes the mean seen colour. Then the gutter texels within ``gutter`` texels (at 512; scaled
    with the size) of a chart take the nearest chart texel's colour (for filtered lookups).

    Args:
        colour: (S, S, C) float; seen: (S, S) bool; chart: (S, S) int, -1 outside every chart.

    Returns:
        (S, S, C) float: seen texels unchanged, every other chart texel filled.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.restoration import inpaint_biharmonic
    from skimage.transform import resize

    out = colour.copy()
    seen = seen & (chart >= 0)
    mean = colour[seen].mean(0) if seen.any() else np.full(colour.shape[-1], 0.5)
    S, C = chart.shape[0], colour.shape[-1]
    for c in np.unique(chart[chart >= 0]):
        region = chart == c
        holes = region & ~seen
        if not holes.any():
            continue
        known = region & seen
        if not known.any():
            out[holes] = mean
            continue
        rows, cols = np.nonzero(region)
        r0, c0 = rows.min(), cols.min()
        h, w = rows.max() + 1 - r0, cols.max() + 1 - c0
        k = max(1, -(-max(h, w) // coarse))                         # block side
        hb, wb = -(-h // k), -(-w // k)
        box = np.zeros((hb * k, wb * k, C))
        m = np.zeros((hb * k, wb * k))
        box[:h, :w] = colour[r0:r0 + h, c0:c0 + w] * known[r0:r0 + h, c0:c0 + w, None]
        m[:h, :w] = known[r0:r0 + h, c0:c0 + w]
        total = box.reshape(hb, k, wb, k, C).sum((1, 3))
        count = m.reshape(hb, k, wb, k).sum((1, 3))
        low = total / np.maximum(count, 1)[..., None]
        if (count == 0).any():
            low = inpaint_biharmonic(low, count == 0, channel_axis=-1)
        up = resize(low, (hb * k, wb * k), order=1, mode="edge", anti_aliasing=False)[:h, :w]
        sub = holes[r0:r0 + h, c0:c0 + w]
        out[r0:r0 + h, c0:c0 + w][sub] = up[sub]
    covered = chart >= 0
    if covered.any() and not covered.all():
        dist, (ii, jj) = distance_transform_edt(~covered, return_indices=True)
        pad = ~covered & (dist <= max(1, gutter * S // 512))
        out[pad] = out[ii[pad], jj[pad]]
    return out


# -- meshes ------------------------------------------------------------------------------------
def textured_mesh(vertices: torch.Tensor, atlas: UVAtlas, texture: torch.Tensor, name: str = "hand_texture"):
    """A ``trimesh.Trimesh`` with the texture: vertices split at UV seams (one per vertex-UV pair).

    Args:
        vertices: (V, 3) the mesh, in the units and axes wanted in the file.
        atlas: the :class:`~fitting.uv_atlas.UVAtlas`; texture: (3, S, S) in [0, 1].
        name: the material's name (trimesh names the OBJ's image ``<name>.png`` after it).

    Returns:
        trimesh.Trimesh with ``TextureVisuals`` (a white, rough, non-metallic material whose
        base colour is the texture).
    """
    import trimesh
    from PIL import Image

    faces, face_uvs = atlas.faces.numpy(), atlas.face_uvs.numpy()
    pairs = np.stack([faces.ravel(), face_uvs.ravel()], -1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    v = vertices.detach().cpu().double().numpy()[unique[:, 0]]
    uv = atlas.uv.double().numpy()[unique[:, 1]]
    image = Image.fromarray(_to_uint8(texture.detach().cpu().numpy().transpose(1, 2, 0)))
    material = trimesh.visual.material.PBRMaterial(name=name, baseColorTexture=image, baseColorFactor=[255] * 4,
                                                   metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(v, inverse.reshape(-1, 3), visual=visual, process=False)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


#: OpenCV camera axes (x right, y down, z forward) -> glTF's (y up, z towards the viewer).
_TO_GLTF = np.diag([1.0, -1.0, -1.0])


def write_textured_mesh(out_dir: Union[str, Path], vertices: torch.Tensor, atlas: UVAtlas,
                        texture: torch.Tensor) -> dict[str, Path]:
    """Write ``hand.obj`` + ``hand.mtl`` + ``hand_texture.png`` and ``hand.glb`` into ``out_dir``.

    Args:
        vertices: (V, 3) mm, camera coordinates (OpenCV axes). The OBJ keeps them (like a fit's
            ``mesh.obj``); the GLB holds them in metres with glTF's axes (``(x, -y, -z) / 1000``,
            a rotation: the faces keep their orientation).
        atlas: the mesh's atlas; texture: (3, S, S) in [0, 1].

    Returns:
        file name -> path of the four files.
    """
    out = Path(out_dir)
    mesh = textured_mesh(vertices, atlas, texture)
    obj_text = mesh.export(file_type="obj", mtl_name="hand.mtl", return_texture=True)
    text, textures = obj_text if isinstance(obj_text, tuple) else (obj_text, {})
    for file_name, data in textures.items():
        (out / file_name).write_bytes(data)
    (out / "hand.obj").write_text(text)
    v = vertices.detach().cpu().double().numpy() @ _TO_GLTF.T / 1000.0
    glb = textured_mesh(torch.from_numpy(v), atlas, texture).export(file_type="glb")
    (out / "hand.glb").write_bytes(glb)
    return {n: out / n for n in ("hand.obj", "hand.mtl", "hand_texture.png", "hand.glb")}


# -- runs over recordings ------------------------------------------------------------------------
@dataclasses.dataclass
class TextureFrame:
    """One frame of a texture run.

    Attributes:
        name: the frame's name (resuming skips names already done).
        rgb: (H, W, 3) uint8 / (C, H, W) or (B, C, H, W) float in [0, 1], or an image file
            read when the frame's turn comes (:func:`read_rgb`).
        camera: :class:`renderers.Camera` (batch 1 or B).
        vertices: (V, 3) or (B, V, 3) mm, the fitted mesh in the camera's coordinates.
    """

    name: str
    rgb: Union[torch.Tensor, np.ndarray, str, Path]
    camera: Camera
    vertices: torch.Tensor


@dataclasses.dataclass
class TextureReport:
    """What :func:`extract_texture` did: frames added now and earlier (resumed), files, coverage.

    Attributes:
        added, resumed: frame names; files: file name -> path; seen_fraction: share of the
        atlas's texels seen; mean_confidence: over the seen texels; seconds_per_frame: of the
        frames added now (reading included).
    """

    added: list
    resumed: list
    files: dict
    seen_fraction: float
    mean_confidence: float
    seconds_per_frame: float


def read_rgb(path: Union[str, Path]) -> torch.Tensor:
    """An RGB image file (PNG, JPG, ...: imageio) as a (3, H, W) float32 tensor in [0, 1].

    Grey images are repeated to three channels, alpha dropped; 16-bit images scaled by 65535.

    Raises:
        InputError: a missing or unreadable file, or not an image of 1, 3 or 4 channels.
    """
    from .io import _read_image

    img = _read_image(path)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] not in (3, 4):
        raise InputError(f"{path}: expected an RGB image, got {img.shape[2]} channels")
    img = img[..., :3]
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        raise InputError(f"{path}: expected an 8- or 16-bit RGB image, got {img.dtype} values")
    return torch.from_numpy((img.astype(np.float32) / scale).transpose(2, 0, 1).copy())


def _as_views(rgb) -> torch.Tensor:
    if isinstance(rgb, (str, Path)):
        return read_rgb(rgb)
    if isinstance(rgb, np.ndarray):
        if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
            raise InputError(f"a numpy RGB image must be (H, W, 3), got {rgb.shape}")
        scale = 255.0 if rgb.dtype == np.uint8 else 1.0
        return torch.from_numpy((rgb[..., :3].astype(np.float32) / scale).transpose(2, 0, 1).copy())
    return rgb


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atlas_signature(atlas: UVAtlas) -> str:
    return f"{atlas.source}:{atlas.uv.shape[0]}:{atlas.faces.shape[0]}:{float(atlas.uv.double().sum()):.6f}"


def extract_texture(frames: Sequence[TextureFrame], out_dir: Union[str, Path], atlas: UVAtlas, size: int = 512,
                    settings: Optional[TextureSettings] = None, save_every: int = 1, progress: bool = True,
                    mesh_vertices: Optional[torch.Tensor] = None) -> TextureReport:
    """Extract a texture from a recording into ``out_dir`` (resumable; see the module docstring).

    Args:
        frames: the :class:`TextureFrame` s, in order.
        out_dir: the output folder (checked writable before any work; created).
        atlas: the mesh's atlas; size: texels per side.
        settings: :class:`TextureSettings`.
        save_every: save the accumulator's state every this many frames (and after the last).
        progress: show a tqdm bar over the frames.
        mesh_vertices: (V, 3) mm, the mesh written to ``hand.obj`` / ``hand.glb``; default:
            the first frame's (its first view's).

    Returns:
        a :class:`TextureReport`.

    Raises:
        InputError: no frames, two frames of one name, ``out_dir`` not writable, a saved state
            of another atlas or size (choose a new folder or remove ``texture_state.npz``), or a
            frame's bad input (:func:`unwrap_texture`, :func:`read_rgb`; the message names it).
    """
    import time

    from tqdm import tqdm

    from .writers import check_output_dir

    frames = list(frames)
    if not frames:
        raise InputError("no frames to extract a texture from")
    names = [f.name for f in frames]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"two frames are named {dup!r}; frame names must be unique (they make the run resumable)")
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
        raise InputError(f"save_every must be a positive int of frames, got {save_every!r}")
    out = check_output_dir(out_dir, "out_dir", results=False)
    acc = TextureAccumulator(atlas, size, settings)
    state_path = out / STATE_FILE
    done: list = []
    first = frames[0]
    dtype = torch.float32
    device = first.vertices.device
    if state_path.exists():
        with np.load(state_path) as z:
            state = {k: z[k] for k in z.files}
        if str(state.get("atlas", "")) != _atlas_signature(atlas) or int(state["size"]) != size:
            raise InputError(f"{state_path} is the state of another run (another hand model, atlas or --size); "
                             "choose a new output folder or remove it")
        acc.load_state_dict(state, device=device, dtype=dtype)
        done = [str(n) for n in state["names"]]

    def save():
        import io

        buf = io.BytesIO()
        np.savez(buf, **acc.state_dict(), names=np.array(done, dtype=str), atlas=np.array(_atlas_signature(atlas)))
        _atomic(state_path, buf.getvalue())

    added, t0 = [], time.perf_counter()
    bar = tqdm(frames, desc="texture", unit="frame", disable=not progress)
    try:
        for frame in bar:
            if frame.name in done:
                continue
            try:
                acc.add(_as_views(frame.rgb).to(device=device, dtype=dtype), frame.camera, frame.vertices)
            except InputError as err:
                raise InputError(f"frame {frame.name}: {err}") from None
            done.append(frame.name)
            added.append(frame.name)
            if len(added) % save_every == 0:
                save()
    finally:
        bar.close()
    seconds = (time.perf_counter() - t0) / max(len(added), 1)
    if acc.colour is None:
        raise InputError("no frame could be added")
    if added:
        save()

    texture = acc.texture()
    confidence = acc.confidence()
    files = {}
    png = iio.imwrite("<bytes>", _to_uint8(texture.cpu().numpy().transpose(1, 2, 0)), extension=".png")
    _atomic(out / "texture.png", png)
    png = iio.imwrite("<bytes>", _to_uint8(confidence.cpu().numpy()), extension=".png")
    _atomic(out / "confidence.png", png)
    files.update({"texture.png": out / "texture.png", "confidence.png": out / "confidence.png"})
    if mesh_vertices is None:
        v = first.vertices
        mesh_vertices = v[0] if v.dim() == 3 else v
    files.update(write_textured_mesh(out, mesh_vertices, atlas, texture))
    covered = atlas.texel_map(size).covered.to(acc.seen.device)
    seen = acc.seen & covered
    report = TextureReport(added=added, resumed=[n for n in done if n not in added], files=files,
                           seen_fraction=float(seen.sum()) / max(int(covered.sum()), 1),
                           mean_confidence=float(confidence[seen].mean()) if seen.any() else 0.0,
                           seconds_per_frame=seconds)
    doc = {"frames": done, "size": size, "atlas": atlas.source, "charts": atlas.num_charts,
           "smoothing": acc.settings.smoothing, "settings": dataclasses.asdict(acc.settings),
           "seen_fraction": report.seen_fraction, "mean_confidence": report.mean_confidence,
           "units": "hand.obj: mm, the first frame's camera coordinates (OpenCV axes); hand.glb: metres, glTF axes"}
    _atomic(out / "texture.json", json.dumps(doc, indent=1).encode())
    files["texture.json"] = out / "texture.json"
    return report


# -- the texture energy in a fit --------------------------------------------------------------------
def texture_energy(image: torch.Tensor, vertices: torch.Tensor, camera: Camera, atlas: UVAtlas,
                   reference: torch.Tensor, reference_confidence: Optional[torch.Tensor] = None,
                   settings: Optional[TextureSettings] = None, patch_size: int = 8,
                   blur_size: int = 3) -> torch.Tensor:
    """The NCC texture energy of the current fit (DeepHandMesh supplementary, Eq. 5), (B,).

    The views are unwrapped differentiably at the current vertices (:func:`unwrap_texture`, at
    the reference's size) and compared with the reference texture by
    :func:`losses.texture_ncc_loss`, masked (``delta``) by the texels the views see and the
    reference has (``reference_confidence > 0``). Add it to a fit's energy; its gradient
    reaches the vertices through the projection of the texels.

    Args:
        image: (B, C, H, W) in [0, 1]; vertices: (B, V, 3) mm; camera: batch 1 or B.
        atlas: the mesh's atlas; reference: (C, S, S) or (B, C, S, S) in [0, 1], e.g.
            :meth:`TextureAccumulator.texture`; reference_confidence: (S, S) or (B, S, S),
            e.g. :meth:`TextureAccumulator.confidence`; default: every texel.
        patch_size, blur_size: as :func:`losses.texture_ncc_loss`.

    Raises:
        InputError: as :func:`unwrap_texture`; ValueError: as :func:`losses.texture_ncc_loss`.
    """
    from losses import texture_ncc_loss

    if reference.dim() == 3:
        reference = reference[None]
    view = unwrap_texture(image, vertices, camera, atlas, int(reference.shape[-1]), settings)
    mask = view.weight > 0
    if reference_confidence is not None:
        mask = mask & (reference_confidence.to(mask.device) > 0)
    return texture_ncc_loss(view.colour, reference.to(view.colour), mask, patch_size=patch_size, blur_size=blur_size)


#: The unwrapping of the fit's ``texture`` energy: the soft renderer's exact z-buffer instead
#: of PyTorch3D's rasterizer (the same visibility, about 7x faster on the CPU, and usable
#: under the forward-mode derivatives of Levenberg-Marquardt).
FIT_TEXTURE_SETTINGS = TextureSettings(rasterizer="soft")


@dataclasses.dataclass
class TextureReference:
    """A reference texture for the ``texture`` energy of a fit (``Fitter(..., texture=...)``).

    The fit then adds ``w_texture * texture_energy(...)`` (:func:`texture_energy`, the NCC
    energy of DeepHandMesh supplementary Eq. 5) for every frame that has an RGB image
    (:attr:`fitting.Observation.rgb`, registered to the depth camera).

    Attributes:
        atlas: the hand model's :class:`~fitting.uv_atlas.UVAtlas` (:func:`fitting.uv_atlas.uv_atlas`).
        texture: (3, S, S) in [0, 1], e.g. :meth:`TextureAccumulator.texture` or a texture PNG
            read by :func:`read_rgb`; S a multiple of ``patch_size``.
        confidence: optional (S, S) >= 0, e.g. :meth:`TextureAccumulator.confidence`; texels
            with 0 (never seen) are left out of the energy. None: every texel counts.
        settings: how the current frame is unwrapped (:class:`TextureSettings`); None:
            :data:`FIT_TEXTURE_SETTINGS` (the soft renderer's z-buffer).
        patch_size, blur_size: as :func:`losses.texture_ncc_loss` (8 and 3: the paper's).

    Raises:
        InputError: a texture that is not a floating (3, S, S) tensor, a confidence that is not
            (S, S), an S that ``patch_size`` does not divide, an atlas that is not a UVAtlas.
    """

    atlas: UVAtlas
    texture: torch.Tensor
    confidence: Optional[torch.Tensor] = None
    settings: Optional[TextureSettings] = None
    patch_size: int = 8
    blur_size: int = 3

    def __post_init__(self):
        if not isinstance(self.atlas, UVAtlas):
            raise InputError(f"TextureReference: atlas must be a fitting.uv_atlas.UVAtlas, got "
                             f"{type(self.atlas).__name__}")
        t = self.texture
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] != 3 or t.shape[1] != t.shape[2] \
                or not t.is_floating_point():
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"TextureReference: texture must be a floating (3, S, S) tensor in [0, 1], got {got}")
        S = int(t.shape[-1])
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int) or self.patch_size < 2 \
                or S % self.patch_size:
            raise InputError(f"TextureReference: patch_size must be an int >= 2 that divides the texture's "
                             f"side {S}, got {self.patch_size!r}")
        c = self.confidence
        if c is not None and (not isinstance(c, torch.Tensor) or tuple(c.shape) != (S, S)):
            got = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
            raise InputError(f"TextureReference: confidence must be an (S, S) = ({S}, {S}) tensor, got {got}")
        if self.settings is None:
            self.settings = dataclasses.replace(FIT_TEXTURE_SETTINGS)
        self.settings.validate()

    @classmethod
    def from_accumulator(cls, accumulator: "TextureAccumulator", **options) -> "TextureReference":
        """The reference of a :class:`TextureAccumulator`'s texture (filled) and confidence map."""
        return cls(accumulator.atlas, accumulator.texture(), accumulator.confidence(), **options)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "TextureReference":
        """A copy with the texture and confidence on ``device`` in ``dtype`` (the atlas is shared)."""
        move = lambda x: None if x is None else x.to(device=device, dtype=dtype)  # noqa: E731
        moved = dataclasses.replace(self, texture=move(self.texture), confidence=move(self.confidence))
        # the texel map is built (NumPy) here, not inside the fit's forward-mode transforms
        _texel_tensors(self.atlas, int(self.texture.shape[-1]), moved.texture.device, moved.texture.dtype)
        return moved

    def energy(self, rgb: torch.Tensor, vertices: torch.Tensor, camera: Camera) -> torch.Tensor:
        """(B,) :func:`texture_energy` of B views ((B, 3, H, W), (B, V, 3) mm, camera) against this reference."""
        return texture_energy(rgb, vertices, camera, self.atlas, self.texture, self.confidence, self.settings,
                              self.patch_size, self.blur_size)


# -- frames and fits from files (the command line) -----------------------------------------------
#: RGB image files :func:`texture_frames_from_fits` reads.
RGB_SUFFIXES = (".png", ".jpg", ".jpeg")


def _fit_vertices(folder: Path) -> tuple[torch.Tensor, dict]:
    """(V, 3) mm vertices of a fit output folder's ``result.npz`` and its ``params.json`` camera."""
    from .io import _read_json

    try:
        with np.load(folder / "result.npz") as z:
            vertices = torch.from_numpy(np.asarray(z["vertices"], dtype=np.float32))
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"{folder / 'result.npz'}: cannot read the fitted vertices ({err})") from None
    if vertices.dim() != 2 or vertices.shape[1] != 3 or not torch.isfinite(vertices).all():
        raise InputError(f"{folder / 'result.npz'}: vertices must be finite (V, 3) mm, got {tuple(vertices.shape)}")
    doc = _read_json(folder / "params.json", "params.json of a fit")
    camera = doc.get("camera") if isinstance(doc, dict) else None
    return vertices, camera if isinstance(camera, dict) else {}


def texture_frames_from_fits(frames: Union[str, Path], fits: Union[str, Path], camera_json=None,
                             num_vertices: Optional[int] = None) -> list[TextureFrame]:
    """The :class:`TextureFrame` s of RGB image files and the fits of a ``fit`` / ``fit-sequence`` run.

    Args:
        frames: an RGB image (PNG / JPG) or a folder of them (natural order).
        fits: a ``handfit fit`` output folder (``params.json`` + ``result.npz``: one frame; a
            single image matches it whatever its name, several must include the fit's ``name``)
            or a ``handfit fit-sequence`` output folder (``<name>/result.npz``, matched by the
            image's name: ``17.png`` takes ``fits/17/``).
        camera_json: the RGB camera (``fx, fy, cx, cy, width, height``); default: each fit's
            own camera from its ``params.json`` (RGB registered to the depth frames).
        num_vertices: the hand model's vertex count, checked against every fit.

    Returns:
        one frame per image, its ``rgb`` the path (read when its turn comes).

    Raises:
        InputError: no images, a missing fits folder, an image without its fit, a fit of another
            model (vertex count), an unreadable fit, an image whose size differs from its camera's.
    """
    from .io import camera_from_args, natural_key

    frames, fits = Path(frames), Path(fits)
    if frames.is_dir():
        paths = sorted((p for p in frames.iterdir() if p.is_file() and p.suffix.lower() in RGB_SUFFIXES),
                       key=lambda p: natural_key(p.name))
    elif frames.is_file():
        paths = [frames]
    else:
        raise InputError(f"{frames}: no such RGB image or folder")
    if not paths:
        raise InputError(f"no RGB images ({', '.join(RGB_SUFFIXES)}) in {frames}")
    if not fits.is_dir():
        raise InputError(f"--fits {fits}: not a folder of fits (the --out of 'handfit fit' or 'fit-sequence')")
    single = (fits / "result.npz").is_file()
    if single:
        from .io import _read_json

        name = str(_read_json(fits / "params.json", "params.json of a fit").get("name", ""))
        if len(paths) > 1:
            paths = [p for p in paths if p.stem == name]
            if not paths:
                raise InputError(f"--fits {fits} is the fit of one frame, {name!r}, and no image in {frames} has "
                                 "that name")
        folders = {paths[0].stem: fits}
    else:
        missing = [p.stem for p in paths if not (fits / p.stem / "result.npz").is_file()]
        if missing:
            raise InputError(f"--fits {fits}: no fit for frame {missing[0]} (looked for {fits / missing[0]}/"
                             f"result.npz); {len(missing)} of {len(paths)} frames have none")
        folders = {p.stem: fits / p.stem for p in paths}
    out = []
    for path in paths:
        vertices, fit_camera = _fit_vertices(folders[path.stem])
        if num_vertices is not None and vertices.shape[0] != num_vertices:
            raise InputError(f"{folders[path.stem]}: the fit has {vertices.shape[0]} vertices but the hand model has "
                             f"{num_vertices}; give the model flags (--model ...) the fit used")
        try:
            shape = iio.improps(path).shape
        except Exception as err:  # imageio raises many types for unreadable files
            raise InputError(f"{path}: cannot read the image ({str(err).splitlines()[0] if str(err) else err})") from None
        H, W = int(shape[0]), int(shape[1])
        if camera_json is not None:
            camera = camera_from_args(camera_json=camera_json, width=W, height=H)
        else:
            if not fit_camera:
                raise InputError(f"{folders[path.stem]}/params.json has no camera; give --camera CAMERA.json")
            camera = camera_from_args(*(fit_camera.get(k) for k in ("fx", "fy", "cx", "cy")),
                                      width=fit_camera.get("width", W), height=fit_camera.get("height", H))
        if (camera.width, camera.height) != (W, H):
            source = camera_json or f"{folders[path.stem]}/params.json"
            raise InputError(f"{path}: the RGB image is {W}x{H} but its camera ({source}) is for a "
                             f"{camera.width}x{camera.height} image")
        out.append(TextureFrame(name=path.stem, rgb=path, camera=camera, vertices=vertices))
    return out
