r"""Data-to-model distance: observed 3D points to the model surface.

Returns one value per batch element, shape ``(B,)``; positions in millimetres.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from pytorch3d.ops import knn_points

from ._checks import check_ndim, shape_str

__all__ = ["point_to_vertex_loss", "nearest_vertex"]

#: Largest (points x vertices) distance block the CPU search holds at once: 512 KiB of float32,
#: so that the block ``addmm`` writes is still in cache when ``min`` reads it (2.8x faster than
#: one 32 MiB block for 1500 points and 1609 vertices).
_CPU_BLOCK = 1 << 17

#: Vertex groups of the CPU search's two-level minimum: vertex ``s * G + g`` is in group ``g``.
#: The minimum over the groups' members is a vectorised ``amin`` over a (points, S, G) view
#: (contiguous in G), kept per point; then one index ``argmin`` per frame over the G group
#: minima, and the exact squared distances to the S members of the winning group only, from a
#: (3, G, S) copy of the vertices where each group's members are contiguous. ``Tensor.min(dim)``
#: with indices is not vectorised on the CPU (7x slower than ``amin`` on a (81, 1609) block);
#: the search is 1.2-1.5x faster than with one indexed ``min`` over the V vertices, of which
#: picking the member once per frame instead of once per block (3 ops a block instead of 10)
#: is 1.02-1.3x, depending on the load (``bench/nearest_vertex.py``, same indices).
_CPU_GROUPS = 64


@torch.no_grad()
def nearest_vertex(points: torch.Tensor, verts: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Index of the nearest vertex of each point (brute force, exact up to rounding ties).

    On a GPU this is ``pytorch3d.ops.knn_points`` with K = 1. On the CPU it is a matrix
    product per frame, 3.3-5x faster than PyTorch3D's CPU kernel for 1500 points and 1609
    vertices (``argmin_v ||v||^2 - 2 p.v``, one K = 4 product ``[p, 1] @ [-2 v; ||v||^2]`` per
    block of points, with both sets centred on the vertices' mean, so
    that float32 keeps about 1e-3 mm^2 of the squared distances), in the inputs' dtype
    (PyTorch3D's CPU kernel has no float64); ``bench/nearest_vertex.py`` measures both. The
    minimum over the vertices is taken in two levels (the least of each group of vertices
    ``s * G + g``, then the least member of the winning group by its exact squared distance
    ``|p - v|^2``, :data:`_CPU_GROUPS`): the same index as one minimum over all of them,
    except that a near-tie between two vertices (within float rounding of the expanded form,
    about 1e-3 mm^2 in float32) may go to either.

    Args:
        points: (B, N, 3); verts: (B, V, 3), same units and frame.
        lengths: optional (B,) valid points per frame (indices of padding points are
            meaningless but valid).

    Returns:
        (B, N) long, indices into ``verts``' V.
    """
    if points.device.type != "cpu":
        return knn_points(points, verts, lengths1=lengths, K=1, return_nn=False).idx[..., 0]
    centre = verts.mean(1, keepdim=True)  # not the points': padding would move it
    p, v = points - centre, verts - centre
    B, N, V = points.shape[0], points.shape[1], verts.shape[1]
    # V padded to S x G columns with vertices at infinity (||v||^2 = inf, v = 0)
    G = _CPU_GROUPS
    S = max(1, -(-V // G))
    # ||v||^2 - 2 p.v as one product with K = 4: [p, 1] @ [-2 v; ||v||^2] (no bias copy per block)
    rows = torch.cat([p, torch.ones_like(p[..., :1])], -1)  # (B, N, 4)
    cols = torch.cat([F.pad(v * -2.0, (0, 0, 0, S * G - V)).transpose(1, 2),
                      F.pad((v * v).sum(-1), (0, S * G - V), value=math.inf)[:, None]], 1)  # (B, 4, S * G)
    step = max(1, _CPU_BLOCK // (S * G))
    # each group's members contiguous, (B, 3, G, S); padding vertices infinitely far
    members = F.pad(verts, (0, 0, 0, S * G - V), value=math.inf).view(B, S, G, 3).permute(0, 3, 2, 1).contiguous()
    q = points.transpose(1, 2)[..., None]  # (B, 3, N, 1)
    block = torch.empty(min(step, N), S * G, dtype=p.dtype, device=points.device)
    group_min = torch.empty(N, G, dtype=p.dtype, device=points.device)
    idx = torch.empty(B, N, dtype=torch.long, device=points.device)
    for b in range(B):
        rows_b, cols_b = rows[b], cols[b]
        for start in range(0, N, step):
            n = min(step, N - start)
            torch.mm(rows_b[start:start + n], cols_b, out=block[:n])
            torch.amin(block[:n].view(n, S, G), 1, out=group_min[start:start + n])
        # the group holding the minimum, then the exact squared distances to its S members
        group = group_min.argmin(-1)  # (N,)
        diff = q[b] - members[b].index_select(1, group)  # (3, N, S)
        d2 = (diff * diff).sum(0)
        idx[b] = d2.argmin(-1) * G + group
    return idx


def point_to_vertex_loss(points: torch.Tensor, verts: torch.Tensor,
                         lengths: Optional[torch.Tensor] = None, beta: float = 5.0,
                         truncation: Optional[float] = None) -> torch.Tensor:
    r"""Mean robust distance from each observed point to its nearest model vertex.

    .. math::

        L_{d2m}(b) = \frac{1}{N_b} \sum_{i=1}^{N_b} \mathrm{SmoothL1}_\beta
                     \Big(\min_v \lVert p_{b,i} - v_{b,v} \rVert\Big)

    The data-to-model term of model-based depth trackers (e.g. the point-to-model term of
    Taylor et al., SIGGRAPH 2016), with the surface sampled at its vertices (about 3 mm apart
    on the default hand), which keeps it a fast nearest-neighbour search
    (``pytorch3d.ops.knn_points``). Unlike a rendered-depth comparison it also pulls parts
    of the model that do not overlap the observation in the image. The nearest vertex is
    re-chosen at every call (ICP-style); the gradient flows to both points and vertices.
    The search only picks indices (no gradient, :func:`nearest_vertex`).

    Robust (truncated) form: with ``truncation`` :math:`\tau`, each distance is clamped to
    :math:`\tau` before the smooth-L1 (a truncated penalty: the truncated quadratic /
    outlier process of Black & Rangarajan 1996, used in the robust data terms of
    model-based hand trackers such as Tagliasacchi et al.'s robust articulated ICP, 2015):
    points farther than :math:`\tau` from the model (an
    object held in the hand, the background kept by the mask) cost a constant and pull
    nothing, points within it (hand surface the model does not yet cover) pull as before.

    Args:
        points: (B, N, 3) observed surface points, mm.
        verts: (B, V, 3) model vertices, mm, same frame.
        lengths: optional (B,) long, the number of valid points per element (the rest is
            padding); default all N.
        beta: smooth-L1 transition, mm.
        truncation: optional, > 0: distances are clamped to this (mm) first; None: no clamp.

    Returns:
        (B,) mm (smooth-L1 of mm).

    Raises:
        ValueError: bad shapes (names the argument).

    Example:
        >>> pts = torch.zeros(2, 5, 3); verts = torch.ones(2, 4, 3)
        >>> point_to_vertex_loss(pts, verts, beta=1e-6).shape
        torch.Size([2])
    """
    check_ndim("points", points, "(B, N, 3)", last=3)
    check_ndim("verts", verts, "(B, V, 3)", last=3)
    if points.shape[0] != verts.shape[0]:
        raise ValueError(f"verts must have the batch size of points {points.shape[0]}, got {shape_str(verts.shape)}")
    if truncation is not None and not truncation > 0:
        raise ValueError(f"truncation must be > 0 (mm) or None, got {truncation}")
    B, N, _ = points.shape
    if lengths is None:
        lengths = torch.full((B,), N, dtype=torch.long, device=points.device)
    idx = nearest_vertex(points, verts, lengths)
    nearest = verts.gather(1, idx[..., None].expand(-1, -1, 3))
    dist = (((points - nearest) ** 2).sum(-1) + 1e-9).sqrt()
    if truncation is not None:
        dist = dist.clamp(max=truncation)
    per_point = F.smooth_l1_loss(dist, torch.zeros_like(dist), beta=beta, reduction="none")
    valid = torch.arange(N, device=points.device)[None] < lengths[:, None]
    per_point = torch.where(valid, per_point, torch.zeros_like(per_point))
    return per_point.sum(1) / lengths.clamp(min=1).to(per_point.dtype)
