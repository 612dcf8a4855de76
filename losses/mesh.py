r"""Mesh regularizers: Laplacian, normal consistency, edge length and vertex offsets.

These are the regularizers of RealisticHands Eq. 2-5 (:math:`L_v, L_n, L_{lap}, L_{edge}`,
weights :math:`\lambda_2 = \lambda_3 = \lambda_4 = 1`, :math:`\lambda_5 = 0.1`). Laplacian,
normal consistency and edge call :mod:`pytorch3d.loss` once per batch element, because those
functions average over the batch; each function here returns one value per element, shape
``(B,)``.

How the fitter uses them:

- :func:`laplacian_loss` and :func:`edge_loss` are applied to the per-vertex **offset field**
  :math:`\Delta v` (pass ``verts = delta_v``), not to the posed mesh. This is legitimate because
  the uniform Laplacian :math:`\delta_v = v - \frac{1}{|N(v)|}\sum_{k \in N(v)} k` and the edge
  differences :math:`v - k` are linear in the positions: they measure how rough the offsets are,
  independently of the hand's pose and size, and they are 0 for a constant offset field (a pure
  translation). Applied to the posed mesh instead, they would fight the articulated shape itself
  (the edge loss with ``target_length = 0`` would shrink the hand).
- :func:`normal_consistency_loss` is applied to the posed mesh (template + offsets after skinning):
  normals only exist for actual surfaces.
- :func:`offset_loss` takes the offsets themselves.

All positions are in millimetres.
"""

from __future__ import annotations

from typing import Callable

import torch
from pytorch3d.loss import mesh_edge_loss, mesh_laplacian_smoothing, mesh_normal_consistency
from pytorch3d.structures import Meshes

from ._checks import check_ndim

__all__ = ["laplacian_loss", "normal_consistency_loss", "edge_loss", "offset_loss"]

_LAPLACIAN_METHODS = ("uniform", "cot", "cotcurv")


def _check_mesh(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Check ``verts`` (B, V, 3) and ``faces`` (F, 3) integer; return faces as int64."""
    check_ndim("verts", verts, "(B, V, 3)", last=3)
    check_ndim("faces", faces, "(F, 3)", last=3)
    if faces.dtype.is_floating_point or faces.dtype.is_complex or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor (vertex indices), got dtype {faces.dtype}")
    return faces.long()


def _per_mesh(
    verts: torch.Tensor,
    faces: torch.Tensor,
    loss_fn: Callable[[Meshes], torch.Tensor],
    laplacian: bool = False,
) -> torch.Tensor:
    """Evaluate a batch-averaging ``pytorch3d.loss`` function on each element of a batch.

    The topology (edges, face-to-edge map and, when asked, the uniform Laplacian) is computed once
    on a template and shared with every element through ``Meshes.update_padded``, which is about
    twice as fast as building one ``Meshes`` per element.
    """
    B = verts.shape[0]
    if B == 0 or faces.shape[0] == 0 or verts.shape[1] == 0:
        return verts.new_zeros(B)
    template = Meshes(verts=verts[:1].detach(), faces=faces[None])
    template.edges_packed()
    if laplacian:
        L = template.laplacian_packed()
        if L.dtype != verts.dtype:
            # pytorch3d builds the uniform Laplacian in float32 whatever the vertex dtype, and
            # then fails on float64 vertices; the matrix is constant, so cast it once.
            template._laplacian_packed = L.to(verts.dtype)
    out = [loss_fn(template.update_padded(verts[b : b + 1])) for b in range(B)]
    return torch.stack([o.reshape(()) for o in out]).to(verts.dtype)


def laplacian_loss(verts: torch.Tensor, faces: torch.Tensor, method: str = "uniform") -> torch.Tensor:
    r"""Laplacian smoothing energy per mesh, via :func:`pytorch3d.loss.mesh_laplacian_smoothing`.

    .. math::

        L_{lap}(b) = \frac{1}{V} \sum_v \lVert \delta_v \rVert_2, \qquad
        \delta_v = \frac{1}{|N(v)|} \sum_{k \in N(v)} k - v \quad (\text{uniform})

    RealisticHands Eq. 3 (:math:`L_{lap}`, weight :math:`\lambda_4 = 1`). Two differences from the
    paper, both pytorch3d's: the norm is **not squared** (an L2,1 norm: mean over vertices of the
    Laplacian's length, so the value is in **mm**, not mm^2, and its gradient does not vanish as
    the field gets smooth), and it is a mean over vertices, not a sum, so the weight does not
    depend on the vertex count. The gradient at :math:`\delta_v = 0` is 0, not NaN (safe for an
    offset field initialised to zero).

    The fitter passes the per-vertex offset field ``delta_v`` as ``verts`` (see the module
    docstring). On a posed mesh the uniform Laplacian is not 0 even for a smooth surface
    (every vertex on an open boundary, e.g. the wrist, has an in-plane Laplacian), another reason
    to regularise the offsets. The offset use needs ``method="uniform"``: ``"cot"`` and ``"cotcurv"`` take their
    cotangent weights from the geometry of ``verts`` and are only meaningful on an actual surface
    (the posed mesh). ``"cot"``/``"cotcurv"`` run in float32 for other input dtypes (pytorch3d's
    cotangent Laplacian only supports float32); the result is cast back.

    Args:
        verts: vertex positions or offsets, shape :math:`(B, V, 3)`, millimetres.
        faces: triangles, shape :math:`(F, 3)`, integer indices into ``V``, shared by the batch.
        method: ``"uniform"`` (default), ``"cot"`` or ``"cotcurv"``, as in pytorch3d.

    Returns:
        the loss per batch element, shape :math:`(B,)`: millimetres for ``"uniform"`` and
        ``"cot"``, 1/mm (mean curvature) for ``"cotcurv"``.

    Raises:
        ValueError: if ``verts`` is not :math:`(B, V, 3)`, ``faces`` not :math:`(F, 3)` integer, or
            ``method`` unknown.

    Example:
        >>> faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
        >>> offsets = torch.zeros(2, 4, 3)
        >>> offsets[1, 0, 2] = 4.0  # element 1: vertex 0 sticks out by 4 mm
        >>> laplacian_loss(offsets, faces)  # (4 + 2 + 4 / 3 + 2) / 4
        tensor([0.0000, 2.3333])
    """
    faces = _check_mesh(verts, faces)
    if method not in _LAPLACIAN_METHODS:
        raise ValueError(f"method must be one of {_LAPLACIAN_METHODS}, got {method!r}")
    if method != "uniform" and verts.dtype != torch.float32:
        return laplacian_loss(verts.float(), faces, method).to(verts.dtype)
    # pytorch3d builds the Laplacian as a sparse tensor without asking for invariant checks,
    # which torch warns about; its indices are valid by construction, so opt out explicitly.
    with torch.sparse.check_sparse_tensor_invariants(enable=False):
        return _per_mesh(
            verts, faces, lambda m: mesh_laplacian_smoothing(m, method=method), laplacian=method == "uniform"
        )


def normal_consistency_loss(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    r"""Normal consistency per mesh, via :func:`pytorch3d.loss.mesh_normal_consistency`.

    .. math::

        L_n(b) = \frac{1}{|P|} \sum_{(l, r) \in P} \left(1 - \frac{n_l \cdot n_r}{\lVert n_l \rVert \lVert n_r \rVert}\right)

    over the pairs :math:`P` of faces that share an edge. RealisticHands Eq. 4 (:math:`L_n`, weight
    :math:`\lambda_3 = 1`), averaged over face pairs. Unitless, in ``[0, 2]``: 0 for a flat or
    smoothly curved fine mesh, larger for a crumpled one; it does not depend on the mesh's size.
    Apply it to the **posed** mesh (template + offsets), not to the offset field. A degenerate
    (zero-area) face contributes 1 instead of NaN (pytorch3d's cosine uses an epsilon).

    Args:
        verts: posed vertex positions, shape :math:`(B, V, 3)`, millimetres.
        faces: triangles, shape :math:`(F, 3)`, integer indices into ``V``, shared by the batch.

    Returns:
        the loss per batch element, shape :math:`(B,)`, unitless.

    Raises:
        ValueError: if ``verts`` is not :math:`(B, V, 3)` or ``faces`` not :math:`(F, 3)` integer.

    Example:
        >>> faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
        >>> square = torch.tensor([[0.0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]])
        >>> folded = square.clone()
        >>> folded[3, 2] = 10.0  # lift vertex 3: the normals now meet at cos = 1 / sqrt(3)
        >>> normal_consistency_loss(torch.stack([square, folded]), faces)
        tensor([0.0000, 0.4226])
    """
    faces = _check_mesh(verts, faces)
    return _per_mesh(verts, faces, mesh_normal_consistency)


def edge_loss(verts: torch.Tensor, faces: torch.Tensor, target_length: float = 0.0) -> torch.Tensor:
    r"""Edge-length energy per mesh, via :func:`pytorch3d.loss.mesh_edge_loss`.

    .. math::

        L_{edge}(b) = \frac{1}{|E|} \sum_{(v, k) \in E} (\lVert v - k \rVert_2 - t)^2

    RealisticHands Eq. 2 (:math:`L_e = \sum_v \sum_{k \in N(v)} \lVert v - k \rVert_2^2`, weight
    :math:`\lambda_5 = 0.1`) with ``target_length`` :math:`t = 0`, averaged over the unique edges
    instead of summed over both directions (the paper's sum is :math:`2 |E|` times this).

    Units and size dependence: the value is in **mm^2** and, with :math:`t = 0`, it is the mean
    *squared* edge length of whatever is passed. On a posed mesh that is about the squared edge
    length of the hand (a few mm per edge gives tens of mm^2), it grows with the square of the
    hand's size, falls by about 4 for each subdivision of the mesh, and its gradient shrinks the
    hand towards a point; this is why the fitter applies it to the offset field ``delta_v``, where
    it is the mean squared difference of neighbouring offsets (0 for a constant field, independent
    of the hand's size and pose). Its scale still depends on the mesh resolution, so a weight tuned
    on one template needs re-tuning for a much finer or coarser one. A non-zero ``target_length``
    (mm) is only meaningful on a posed mesh (then it pulls all edges towards that length).

    Args:
        verts: vertex offsets (or positions), shape :math:`(B, V, 3)`, millimetres.
        faces: triangles, shape :math:`(F, 3)`, integer indices into ``V``, shared by the batch.
        target_length: the resting edge length :math:`t`, millimetres.

    Returns:
        the loss per batch element, shape :math:`(B,)`, mm^2.

    Raises:
        ValueError: if ``verts`` is not :math:`(B, V, 3)` or ``faces`` not :math:`(F, 3)` integer.

    Example:
        >>> faces = torch.tensor([[0, 1, 2]])
        >>> offsets = torch.zeros(2, 3, 3)
        >>> offsets[1, 0, 0] = 2.0  # moves vertex 0 by 2 mm: 2 of 3 edges change by 2 mm
        >>> edge_loss(offsets, faces)
        tensor([0.0000, 2.6667])
    """
    faces = _check_mesh(verts, faces)
    return _per_mesh(verts, faces, lambda m: mesh_edge_loss(m, target_length=target_length))


def offset_loss(offsets: torch.Tensor) -> torch.Tensor:
    r"""Mean squared norm of per-vertex offsets.

    .. math::

        L_v(b) = \frac{1}{V} \sum_v \lVert \Delta v_{b,v} \rVert_2^2

    RealisticHands Eq. 2 (:math:`L_v = \lVert \Delta v \rVert_2^2`, weight :math:`\lambda_2 = 1`),
    divided by the vertex count :math:`V` so the weight does not depend on the template.

    Args:
        offsets: per-vertex offsets :math:`\Delta v`, shape :math:`(B, V, 3)`, millimetres.

    Returns:
        the loss per batch element, shape :math:`(B,)`, mm^2.

    Raises:
        ValueError: if ``offsets`` is not :math:`(B, V, 3)`.

    Example:
        >>> offsets = torch.zeros(2, 4, 3)
        >>> offsets[1, 0] = torch.tensor([3.0, 4.0, 0.0])  # one of 4 vertices moves 5 mm
        >>> offset_loss(offsets)
        tensor([0.0000, 6.2500])
    """
    check_ndim("offsets", offsets, "(B, V, 3)", last=3)
    return (offsets**2).sum(dim=-1).mean(dim=-1)
