r"""Penetration and collision energies on sphere and cylinder proxies of a body.

All functions take plain tensors (sphere centres, radii, segment end points, vertices) in
millimetres and return one value per batch element, shape ``(B,)``. They know nothing about
hands: which spheres belong to which bone, and which pairs may touch, is the caller's business
(for the default hand, :func:`hands.collision.CollisionProxies`). Every term is vectorized
over all pairs: no Python loop runs over spheres or pairs.

- :func:`sphere_penetration_loss`: rigid parts as chains of spheres, hinge on the overlap
  of every allowed pair (DeepHandMesh, Moon et al. ECCV 2020, Eq. 2).
- :func:`fingertip_palm_penetration_loss`: fingertip spheres against the vertices of a
  non-rigid palm (DeepHandMesh Eqs. 3-4).
- :func:`cylinder_collision_loss`: points inside cylinders around segments (Dibra et al.
  3DV 2017, supplementary Eqs. 14-18).
- :func:`sphere_overlap_stats`: the largest overlap and the number of overlapping pairs, a
  metric rather than an energy.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import check_ndim, check_one_of

__all__ = [
    "sphere_penetration_loss",
    "fingertip_palm_penetration_loss",
    "cylinder_collision_loss",
    "sphere_overlap_stats",
    "penetration_residuals",
    "cylinder_collision_residuals",
]


def _check_spheres(centers: torch.Tensor, radii: torch.Tensor, allowed: torch.Tensor) -> int:
    check_ndim("centers", centers, "(B, S, 3)", last=3)
    S = centers.shape[1]
    check_one_of("radii", radii, [(S,)], "(S,) like centers' second dimension")
    check_one_of("allowed", allowed, [(S, S)], "(S, S) boolean")
    if allowed.dtype != torch.bool:
        raise ValueError(f"allowed must be a bool tensor, got {allowed.dtype}")
    return S


def _pair_overlap(centers: torch.Tensor, radii: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, S, S) overlap ``r_i + r_j - |c_i - c_j|`` on allowed pairs (upper triangle), else 0."""
    S = centers.shape[1]
    upper = torch.triu(allowed & allowed.T, diagonal=1)
    diff = centers[:, :, None, :] - centers[:, None, :, :]  # (B, S, S, 3)
    # Mask the diagonal and the pairs left out before the square root: its gradient at a zero
    # distance is NaN and would leak through the hinge.
    sq = (diff**2).sum(-1)
    sq = torch.where(upper, sq, torch.ones_like(sq))
    dist = sq.sqrt()
    overlap = radii[:, None] + radii[None, :] - dist
    return torch.where(upper, overlap, torch.zeros_like(overlap)).view(-1, S, S)


def sphere_penetration_loss(centers: torch.Tensor, radii: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    r"""Rigid penetration energy: hinge on the overlap of every allowed pair of spheres.

    .. math::

        L^r_{penet}(b) = \sum_{i < j,\ A_{ij}} \max\left(r_i + r_j - \lVert c_{b,i} - c_{b,j} \rVert_2,\ 0\right)

    DeepHandMesh (Moon et al., ECCV 2020), Eq. 2: each rigid part is a chain of spheres, and
    pairs of spheres on the same or on adjacent parts are left out (``allowed`` is False
    there). Each unordered pair counts once (``allowed`` is symmetrised). The energy is 0 with
    zero gradient when no allowed pair overlaps; its gradient pushes overlapping centres apart
    along the line joining them.

    Args:
        centers: sphere centres :math:`c`, shape :math:`(B, S, 3)`, mm.
        radii: sphere radii :math:`r`, shape :math:`(S,)`, mm.
        allowed: :math:`(S, S)` bool, True for pairs that must not overlap.

    Returns:
        the summed overlap per batch element, shape :math:`(B,)`, mm.

    Raises:
        ValueError: ``centers`` is not :math:`(B, S, 3)`, ``radii`` not :math:`(S,)`, or
            ``allowed`` not an :math:`(S, S)` bool tensor.

    Example:
        >>> centers = torch.tensor([[[0.0, 0.0, 0.0], [15.0, 0.0, 0.0], [40.0, 0.0, 0.0]]])
        >>> radii = torch.tensor([10.0, 10.0, 5.0])
        >>> allowed = ~torch.eye(3, dtype=torch.bool)
        >>> sphere_penetration_loss(centers, radii, allowed)  # only the first two overlap, by 5 mm
        tensor([5.])
    """
    _check_spheres(centers, radii, allowed)
    overlap = _pair_overlap(centers, radii.to(centers.dtype), allowed)
    return torch.relu(overlap).flatten(1).sum(-1)


def sphere_overlap_stats(centers: torch.Tensor, radii: torch.Tensor, allowed: torch.Tensor,
                         tolerance_mm: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Penetration metric: the largest overlap and the number of overlapping allowed pairs.

    Args:
        centers: :math:`(B, S, 3)` mm; ``radii`` :math:`(S,)` mm; ``allowed`` :math:`(S, S)` bool,
            as in :func:`sphere_penetration_loss`.
        tolerance_mm: a pair counts as overlapping when its overlap exceeds this, mm.

    Returns:
        ``(largest, count)``: the largest overlap :math:`\max_{i<j} (r_i + r_j - \lVert c_i - c_j \rVert)`
        clipped at 0, shape :math:`(B,)`, mm; and the number of allowed pairs overlapping by
        more than ``tolerance_mm``, shape :math:`(B,)`, long.

    Raises:
        ValueError: as :func:`sphere_penetration_loss`.

    Example:
        >>> centers = torch.tensor([[[0.0, 0.0, 0.0], [15.0, 0.0, 0.0], [40.0, 0.0, 0.0]]])
        >>> sphere_overlap_stats(centers, torch.tensor([10.0, 10.0, 5.0]), ~torch.eye(3, dtype=torch.bool))
        (tensor([5.]), tensor([1]))
    """
    _check_spheres(centers, radii, allowed)
    with torch.no_grad():
        overlap = _pair_overlap(centers, radii.to(centers.dtype), allowed).flatten(1)
        upper = torch.triu(allowed & allowed.T, diagonal=1).flatten()
        largest = torch.where(upper, overlap, torch.full_like(overlap, -torch.inf)).amax(-1).clamp(min=0) \
            if bool(upper.any()) else torch.zeros(centers.shape[0], dtype=centers.dtype, device=centers.device)
        count = ((overlap > tolerance_mm) & upper).sum(-1)
    return largest, count


def fingertip_palm_penetration_loss(tip_centers: torch.Tensor, tip_radii: torch.Tensor,
                                    palm_vertices: torch.Tensor) -> torch.Tensor:
    r"""Non-rigid penetration energy between fingertip spheres and the palm's vertices.

    For each fingertip chain :math:`t` of :math:`K` spheres ordered from the parent joint
    (:math:`k = 1`) to the tip (:math:`k = K`), :math:`d_k` is the distance from the centre
    :math:`c_k` to the nearest palm vertex. The first sphere with :math:`d_k < r_k` is where
    the finger enters the palm, :math:`l_t`; from there to the tip every sphere is held at the
    palm's surface (DeepHandMesh, Moon et al. ECCV 2020, Eqs. 3-4):

    .. math::

        L^{nr}_{penet}(b) = \sum_t g(t), \quad
        g(t) = \begin{cases} \sum_{k=l_t}^{K} |d_k - r_k| & \text{if } l_t \text{ exists} \\
                             0 & \text{otherwise} \end{cases}

    The gradient moves both the fingertip spheres and the nearest palm vertices (the palm is
    the non-rigid part: with free per-vertex offsets the palm's surface can give way). A hand
    whose fingertips are outside the palm gets exactly 0 with zero gradient. DeepHandMesh
    weights this term by :math:`\lambda_{nr} = 5` against Eq. 2.

    Args:
        tip_centers: sphere centres of the T fingertip chains, shape :math:`(B, T, K, 3)`, mm,
            ordered from the parent joint to the tip along ``K``.
        tip_radii: their radii, shape :math:`(T, K)`, mm.
        palm_vertices: the palm's vertices, shape :math:`(B, P, 3)`, mm.

    Returns:
        the energy per batch element, shape :math:`(B,)`, mm.

    Raises:
        ValueError: ``tip_centers`` is not :math:`(B, T, K, 3)`, ``tip_radii`` not
            :math:`(T, K)`, or ``palm_vertices`` not :math:`(B, P, 3)` with the same B.

    Example:
        >>> palm = torch.tensor([[[0.0, 0.0, 0.0], [50.0, 0.0, 0.0]]])
        >>> tips = torch.tensor([[[[0.0, 20.0, 0.0], [0.0, 4.0, 0.0], [0.0, 7.0, 0.0]]]])
        >>> fingertip_palm_penetration_loss(tips, torch.full((1, 3), 5.0), palm)  # enters at k=2: |4-5| + |7-5|
        tensor([3.])
    """
    check_ndim("tip_centers", tip_centers, "(B, T, K, 3)", last=3)
    B, T, K, _ = tip_centers.shape
    check_one_of("tip_radii", tip_radii, [(T, K)], "(T, K) like tip_centers")
    check_ndim("palm_vertices", palm_vertices, "(B, P, 3)", last=3)
    if palm_vertices.shape[0] != B:
        raise ValueError(f"palm_vertices must have shape (B, P, 3) with B = {B} like tip_centers, "
                         f"got {tuple(palm_vertices.shape)}")
    if palm_vertices.shape[1] == 0 or T * K == 0:
        return tip_centers.new_zeros(B) + 0.0 * tip_centers.sum()
    return _fingertip_palm_terms(tip_centers, tip_radii, palm_vertices).flatten(1).sum(-1)


def _fingertip_palm_terms(tip_centers, tip_radii, palm_vertices) -> torch.Tensor:
    """(B, T, K) the summands ``|d_k - r_k|`` (0 before the entry sphere) of Eqs. 3-4."""
    B, T, K, _ = tip_centers.shape
    r = tip_radii.to(tip_centers.dtype)
    sq = ((tip_centers.reshape(B, T * K, 1, 3) - palm_vertices[:, None]) ** 2).sum(-1)  # (B, TK, P)
    nearest = sq.min(-1).values.view(B, T, K)
    # sqrt only where the distance is not 0 (a centre on a vertex): its gradient would be NaN
    d = torch.where(nearest > 0, nearest, torch.ones_like(nearest)).sqrt()
    d = torch.where(nearest > 0, d, torch.zeros_like(d))
    inside = d < r
    from_entry = torch.cumsum(inside.long(), dim=-1) > 0  # k >= l_t
    return torch.where(from_entry, (d - r).abs(), torch.zeros_like(d))


def penetration_residuals(centers: torch.Tensor, radii: torch.Tensor, allowed: torch.Tensor,
                          tip_centers: torch.Tensor, tip_radii: torch.Tensor, palm_vertices: torch.Tensor,
                          nonrigid_weight: float = 5.0) -> torch.Tensor:
    r"""Residuals of ``sphere_penetration_loss + nonrigid_weight * fingertip_palm_penetration_loss``.

    One residual per allowed sphere pair, :math:`\sqrt{\max(o_{ij}, 0)}` (DeepHandMesh Eq. 2),
    and one per fingertip sphere, :math:`\sqrt{\lambda_{nr} |d_k - r_k|}` from the entry
    sphere on (Eqs. 3-4), so the squared norm is the combined energy exactly (mm). The
    derivative is 0 where a summand is 0 (a subgradient of the hinge).

    Args:
        centers, radii, allowed: as :func:`sphere_penetration_loss`; tip_centers, tip_radii,
            palm_vertices: as :func:`fingertip_palm_penetration_loss`; nonrigid_weight: >= 0.

    Returns:
        (B, S * S + T * K), sqrt(mm).

    Raises:
        ValueError: as the two energies.
    """
    from .residuals import hinge_residuals

    _check_spheres(centers, radii, allowed)
    check_ndim("tip_centers", tip_centers, "(B, T, K, 3)", last=3)
    rigid = _pair_overlap(centers, radii.to(centers.dtype), allowed)
    parts = [hinge_residuals(rigid)]
    if palm_vertices.shape[1] and tip_centers.shape[1] * tip_centers.shape[2]:
        parts.append(hinge_residuals(_fingertip_palm_terms(tip_centers, tip_radii, palm_vertices), nonrigid_weight))
    return torch.cat(parts, dim=1)


def cylinder_collision_loss(points: torch.Tensor, seg_start: torch.Tensor, seg_end: torch.Tensor,
                            radii: torch.Tensor, allowed: Optional[torch.Tensor] = None,
                            _terms: bool = False) -> torch.Tensor:
    r"""Collision energy of points inside cylinders around segments (squared mm).

    For a cylinder with end points :math:`a, b`, height :math:`h = \lVert b - a \rVert`,
    centre :math:`\mu = (a + b) / 2` and radius :math:`r`, and a point :math:`p`
    (Dibra et al., 3DV 2017, supplementary Eqs. 14-18):

    .. math::

        f(a, b, p) = \max(0, \min(f_1, f_2)), \quad f_1 = (h/2)^2 - dist_h, \quad f_2 = r^2 - dist_r

        dist_h = \left(\tfrac{2}{h} (b - \mu)^\top (p - \mu)\right)^2, \quad
        dist_r = \lVert p - \mu \rVert^2 - dist_h

    so :math:`f > 0` exactly when :math:`p` is inside the cylinder, and grows with the depth of
    the penetration. The energy is the sum over allowed (cylinder, point) pairs divided by the
    number of points :math:`N` (the :math:`1/m` of Eq. 19, with :math:`g` the identity). In the
    paper the points are the joints and the cylinders the bones, with the bone's own end
    points left out; here the caller gives any points and says which pairs count
    (``allowed``), e.g. the sphere centres of a hand against its bones. Degenerate segments
    (:math:`h = 0`) contribute nothing.

    Args:
        points: :math:`(B, N, 3)` mm.
        seg_start: cylinder end points :math:`a`, :math:`(B, C, 3)` mm.
        seg_end: cylinder end points :math:`b`, :math:`(B, C, 3)` mm.
        radii: cylinder radii :math:`r`, :math:`(C,)` mm.
        allowed: optional :math:`(C, N)` bool, the (cylinder, point) pairs tested; all if None.

    Returns:
        the energy per batch element, shape :math:`(B,)`, mm^2.

    Raises:
        ValueError: a shape does not match the layouts above.

    Example:
        >>> a, b = torch.tensor([[[0.0, 0.0, -10.0]]]), torch.tensor([[[0.0, 0.0, 10.0]]])
        >>> points = torch.tensor([[[1.0, 0.0, 0.0], [20.0, 0.0, 0.0]]])  # inside, outside
        >>> cylinder_collision_loss(points, a, b, torch.tensor([3.0]))  # min(100, 9 - 1) / 2
        tensor([4.])
    """
    check_ndim("points", points, "(B, N, 3)", last=3)
    check_ndim("seg_start", seg_start, "(B, C, 3)", last=3)
    B, N, _ = points.shape
    C = seg_start.shape[1]
    if seg_start.shape[0] != B:
        raise ValueError(f"seg_start must have shape (B, C, 3) with B = {B} like points, got {tuple(seg_start.shape)}")
    check_one_of("seg_end", seg_end, [tuple(seg_start.shape)], "(B, C, 3) like seg_start")
    check_one_of("radii", radii, [(C,)], "(C,) like seg_start's second dimension")
    if allowed is not None:
        check_one_of("allowed", allowed, [(C, N)], "(C, N) boolean")
        if allowed.dtype != torch.bool:
            raise ValueError(f"allowed must be a bool tensor, got {allowed.dtype}")
    if N == 0 or C == 0:
        return points.new_zeros(B) + 0.0 * points.sum()
    mu = 0.5 * (seg_start + seg_end)  # (B, C, 3)
    axis = seg_end - mu  # (B, C, 3), length h / 2
    half_sq = (axis**2).sum(-1)  # (h/2)^2
    ok = half_sq > 0
    half_sq_safe = torch.where(ok, half_sq, torch.ones_like(half_sq))
    rel = points[:, None, :, :] - mu[:, :, None, :]  # (B, C, N, 3)
    proj = (axis[:, :, None, :] * rel).sum(-1)  # (h/2) * axial coordinate
    dist_h = proj**2 / half_sq_safe[:, :, None]
    dist_r = (rel**2).sum(-1) - dist_h
    f1 = half_sq[:, :, None] - dist_h
    f2 = radii.to(points.dtype)[None, :, None] ** 2 - dist_r
    f = torch.relu(torch.minimum(f1, f2))
    keep = ok[:, :, None]
    if allowed is not None:
        keep = keep & allowed[None]
    f = torch.where(keep, f, torch.zeros_like(f))
    if _terms:
        return f
    return f.flatten(1).sum(-1) / N


def cylinder_collision_residuals(points: torch.Tensor, seg_start: torch.Tensor, seg_end: torch.Tensor,
                                 radii: torch.Tensor, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Residuals of :func:`cylinder_collision_loss`: :math:`\sqrt{f(a, b, p) / N}` per
    (cylinder, point) pair, (B, C * N), mm; the squared norm is the energy (mm^2).

    Raises:
        ValueError: as :func:`cylinder_collision_loss`.
    """
    from .residuals import hinge_residuals

    N = points.shape[1] if points.dim() == 3 else 0
    f = cylinder_collision_loss(points, seg_start, seg_end, radii, allowed, _terms=True)
    if f.dim() == 1:  # nothing to test
        return f[:, None] * 0.0
    return hinge_residuals(f, 1.0 / max(N, 1))
