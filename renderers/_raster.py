"""Rasterization building blocks shared by the renderers (plain PyTorch, any device).

Conventions: faces are given as their projected corners ``face_px`` (B, F, 3, 3) with
rows ``(u px, v px, z mm)`` (OpenCV pixel centres at integers, see :mod:`renderers.camera`).
Pixel ``(b, y, x)`` is flattened as ``(b * H + y) * W + x``. Everything that selects pixels
or faces runs without autograd; the differentiable quantities (distances, depths) are then
recomputed on the selected pairs only, so the autograd graph and the memory grow with the
pairs, not with pixels x faces.
"""

from __future__ import annotations

import torch

# A pixel centre within this distance (px) of a face counts as covered by it, so that
# centres exactly on an edge shared by two faces are covered (a strict inside test would
# count them in neither).
COVER_TOL_PX = 1e-4


def project_faces(verts: torch.Tensor, faces: torch.Tensor, camera) -> torch.Tensor:
    """Projected face corners (B, F, 3, 3) as ``(u px, v px, z mm)``, differentiable.

    Args:
        verts: (B, V, 3) mm, camera coordinates (checked by the caller).
        faces: (F, 3) or (B, F, 3) long.
        camera: a :class:`~renderers.camera.Camera` of batch size 1 or B.
    """
    screen = torch.cat([camera.project(verts), verts[..., 2:]], dim=-1)
    return gather_faces(screen, faces)


def gather_faces(per_vertex: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-vertex rows (B, V, C) gathered per face corner: (B, F, 3, C)."""
    faces = faces.long()
    if faces.dim() == 2:
        return per_vertex[:, faces]
    C = per_vertex.shape[-1]
    return torch.gather(
        per_vertex[:, None].expand(-1, faces.shape[1], -1, -1),
        2,
        faces[..., None].expand(-1, -1, -1, C),
    )


def front_facing(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, F) bool: faces whose normal ``(v1 - v0) x (v2 - v0)`` points at the camera
    (counter-clockwise in the image as displayed, u right and v down). No autograd."""
    with torch.no_grad():
        corners = gather_faces(verts.detach(), faces)
        normal = torch.cross(corners[:, :, 1] - corners[:, :, 0],
                             corners[:, :, 2] - corners[:, :, 0], dim=-1)
        return (normal * corners[:, :, 0]).sum(-1) < 0


def box_pixel_pairs(
    lo_u: torch.Tensor,
    hi_u: torch.Tensor,
    lo_v: torch.Tensor,
    hi_v: torch.Tensor,
    H: int,
    W: int,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (item, pixel centre) pair with the centre inside the item's box (no autograd).

    Args:
        lo_u, hi_u, lo_v, hi_v: (N,) the boxes in pixel coordinates (inclusive bounds);
            boxes are clipped to the image.
        H, W: image size in pixels.
        keep: optional (N,) bool, items to enumerate (others get no pair).

    Returns:
        ``(item, x, y)``, each (P,) long, grouped by item; P is the sum of the clipped box
        areas, so the cost is proportional to the pixels the boxes reach.
    """
    c0 = torch.ceil(lo_u).clamp(min=0)
    c1 = torch.floor(hi_u).clamp(max=W - 1)
    r0 = torch.ceil(lo_v).clamp(min=0)
    r1 = torch.floor(hi_v).clamp(max=H - 1)
    ncol = (c1 - c0 + 1).clamp(min=0).long()
    nrow = (r1 - r0 + 1).clamp(min=0).long()
    counts = ncol * nrow
    if keep is not None:
        counts = counts * keep
    total = int(counts.sum())
    device = lo_u.device
    if total == 0:
        e = torch.zeros(0, dtype=torch.long, device=device)
        return e, e, e
    item = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts,
                                   output_size=total)
    offset = torch.arange(total, device=device) - (torch.cumsum(counts, 0) - counts)[item]
    nc = ncol[item]
    x = c0.long()[item] + offset % nc
    y = r0.long()[item] + torch.div(offset, nc, rounding_mode="floor")
    return item, x, y


def cross2(o: torch.Tensor, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """z of the 2D cross product ``(q - o) x (r - o)``; all (M, 2) -> (M,)."""
    return (q[:, 0] - o[:, 0]) * (r[:, 1] - o[:, 1]) - (q[:, 1] - o[:, 1]) * (r[:, 0] - o[:, 0])


def edge_functions(p: torch.Tensor, tri: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed edge functions of points p (M, 2) against triangles tri (M, 3, 2).

    Returns ``(e, area)``: e (M, 3) is twice the signed area of the sub-triangle opposite
    each corner, oriented so that all three are >= 0 inside whatever the winding; area (M,)
    is twice the signed area of the triangle.
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = cross2(a, b, c)
    e = torch.stack([cross2(b, c, p), cross2(c, a, p), cross2(a, b, p)], dim=-1)
    return e * torch.sign(area)[:, None], area


def covers(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """(M,) bool: pixel centre p (M, 2) lies inside triangle tri (M, 3, 2) or within
    :data:`COVER_TOL_PX` of its edges; degenerate triangles cover nothing."""
    e, area = edge_functions(p, tri)
    lengths = torch.stack([(tri[:, 2] - tri[:, 1]).norm(dim=-1), (tri[:, 0] - tri[:, 2]).norm(dim=-1),
                           (tri[:, 1] - tri[:, 0]).norm(dim=-1)], dim=-1)
    return (e >= -COVER_TOL_PX * lengths).all(-1) & (area.abs() > 1e-12)


def edge_dist2(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance from points p to segments ab; all (M, 2) -> (M,)."""
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)
    q = a + t.clamp(0.0, 1.0)[:, None] * ab
    return ((p - q) ** 2).sum(-1)


def point_triangle_dist2(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Squared 2D distance from points p (M, 2) to the boundary of triangles tri (M, 3, 2)."""
    d = torch.stack(
        [edge_dist2(p, tri[:, 0], tri[:, 1]), edge_dist2(p, tri[:, 1], tri[:, 2]),
         edge_dist2(p, tri[:, 2], tri[:, 0])],
        dim=-1,
    )
    return d.amin(-1)


def interp_depth(p: torch.Tensor, tri: torch.Tensor, perspective_correct: bool = True) -> torch.Tensor:
    """Depth (mm) at points p (M, 2) on triangles tri (M, 3, 3) = (u, v, z).

    The barycentric coordinates are clipped to the triangle, so a point outside gets the
    depth of a nearby point of the face (SoftRas does the same for points in a face's blur).
    With ``perspective_correct`` the depth is the true z of the surface (``1 / z`` is linear
    in the image), otherwise z is interpolated linearly in the image.
    """
    e, _ = edge_functions(p, tri[..., :2])
    w = e.clamp_min(0.0)  # centres on an edge may come out at -1e-7
    total = w.sum(-1, keepdim=True)
    # a degenerate (zero-area) face has no barycentrics: take its corners' mean
    w = torch.where(total > 0, w / total.clamp_min(1e-30), torch.full_like(w, 1.0 / 3.0))
    z = tri[:, :, 2]
    if perspective_correct:
        return 1.0 / (w / z).sum(-1)
    return (w * z).sum(-1)


def nearest_per_pixel(pix: torch.Tensor, z: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Indices into ``pix`` of the nearest candidate (smallest z) of each pixel.

    Args:
        pix: (M,) long flattened pixel of each candidate; z: (M,) its depth.
        n_pixels: B * H * W.

    Returns:
        (P,) long, one candidate per pixel that has any; exact ties go to the lowest index.
    """
    if pix.numel() == 0:
        return pix
    zmin = torch.full((n_pixels,), float("inf"), device=z.device, dtype=z.dtype)
    zmin.scatter_reduce_(0, pix, z, reduce="amin")
    win = (z <= zmin[pix]).nonzero(as_tuple=True)[0]
    first = torch.full((n_pixels,), pix.numel(), device=pix.device, dtype=torch.long)
    first.scatter_reduce_(0, pix[win], win, reduce="amin")
    return win[first[pix[win]] == win]
