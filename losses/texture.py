r"""The texture consistency energy: normalized cross-correlation of patches (DeepHandMesh).

DeepHandMesh (Moon et al., ECCV 2020), supplementary Sec. 11, Eq. 5:

.. math::

    L_{tex} = \delta \, \lVert NCC(\mathbf{T}) - NCC(\mathbf{T}^*) \rVert_1

between the texture :math:`\mathbf{T}` unwrapped from the images at the current mesh and a
reference texture :math:`\mathbf{T}^*`, "NCC on each 8 x 8 patch after applying the average
blur" (to normalize the illumination), :math:`\delta` one where the texel has a visible colour.
"""

from __future__ import annotations

import torch

from ._checks import check_ndim, shape_str

__all__ = ["texture_ncc_loss"]


def _masked_box_blur(x: torch.Tensor, m: torch.Tensor, k: int) -> torch.Tensor:
    """Average blur over the masked texels only (texels outside the mask do not darken edges)."""
    import kornia

    if k <= 1:
        return x
    num = kornia.filters.box_blur(x * m, (k, k), border_type="replicate")
    den = kornia.filters.box_blur(m, (k, k), border_type="replicate")
    return num / den.clamp(min=1e-6)


def texture_ncc_loss(texture: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, patch_size: int = 8,
                     blur_size: int = 3, eps: float = 1e-4) -> torch.Tensor:
    r"""Masked L1 distance between patch-normalized textures (DeepHandMesh supp. Eq. 5), (B,).

    Both textures get an average blur (``blur_size`` x ``blur_size``, kornia's ``box_blur``,
    over the masked texels only); then in every ``patch_size`` x ``patch_size`` patch and
    channel each texture is normalized to zero mean and unit deviation over the patch's
    masked texels, :math:`\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}` (the normalized
    cross-correlation of the two patches is the mean product of these), and the energy is the
    mean absolute difference of the normalized values over the masked texels of the patches
    that have at least two (``delta``), averaged over channels:

    .. math::

        L(b) = \frac{1}{C \sum \delta} \sum_{c, t} \delta_{b,t}\,
               \lvert \hat T_{b,c,t} - \hat T^*_{b,c,t} \rvert

    Insensitive to a per-patch gain and offset of the colours (illumination); 0 for a frame
    with no masked patch.

    Args:
        texture: :math:`(B, C, S, S)`, the current unwrapped texture (e.g.
            :func:`fitting.texture.unwrap_texture`), colours in [0, 1].
        reference: :math:`(B, C, S, S)` or :math:`(1, C, S, S)`, the reference texture.
        mask: :math:`(B, S, S)` or :math:`(B, 1, S, S)`, bool or {0, 1}: the texels with a
            visible colour in both (``delta``).
        patch_size: side of the patches (8 in the paper); must divide S.
        blur_size: side of the average blur (odd; 1: none).
        eps: variance floor of the normalization (colour units squared), > 0.

    Returns:
        the loss per batch element, :math:`(B,)`, dtype of ``texture``, unitless.

    Raises:
        ValueError: naming the argument: wrong shapes, a patch size that does not divide S,
            an even blur size, a non-positive ``eps``.

    Example:
        >>> t = torch.rand(1, 3, 16, 16)
        >>> m = torch.ones(1, 16, 16, dtype=torch.bool)
        >>> float(texture_ncc_loss(0.5 * t + 0.2, t, m)) < 0.05   # a gain and an offset: ~no loss
        True
        >>> float(texture_ncc_loss(torch.rand(1, 3, 16, 16), t, m)) > 0.5
        True
    """
    check_ndim("texture", texture, "(B, C, S, S)")
    check_ndim("reference", reference, "(B, C, S, S)")
    B, C, S, S2 = texture.shape
    if S != S2:
        raise ValueError(f"texture must be square, (B, C, S, S), got {shape_str(texture.shape)}")
    if reference.shape[1:] != texture.shape[1:] or reference.shape[0] not in (1, B):
        raise ValueError(f"reference must have shape (B, C, S, S) or (1, C, S, S) like texture "
                         f"{shape_str(texture.shape)}, got {shape_str(reference.shape)}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != (B, S, S):
        raise ValueError(f"mask must have shape (B, S, S) = {shape_str((B, S, S))}, got {shape_str(mask.shape)}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 2 or S % patch_size:
        raise ValueError(f"patch_size must be an int >= 2 that divides the texture side {S}, got {patch_size!r}")
    if isinstance(blur_size, bool) or not isinstance(blur_size, int) or blur_size < 1 or blur_size % 2 == 0:
        raise ValueError(f"blur_size must be an odd positive int, got {blur_size!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")

    m = (mask if mask.dtype == torch.bool else mask > 0.5).to(texture.dtype)[:, None]  # (B, 1, S, S)
    reference = reference.to(texture.dtype).expand(B, -1, -1, -1)
    t = _masked_box_blur(texture, m, blur_size)
    r = _masked_box_blur(reference, m, blur_size)
    p, n = patch_size, S // patch_size

    def patches(x):  # (B, c, S, S) -> (B, c, n * n, p * p)
        c = x.shape[1]
        return x.reshape(B, c, n, p, n, p).permute(0, 1, 2, 4, 3, 5).reshape(B, c, n * n, p * p)

    mp = patches(m)
    count = mp.sum(-1, keepdim=True)
    mp = mp * (count >= 2).to(mp.dtype)
    count = count.clamp(min=1)

    def normalize(x):
        xp = patches(x)
        mean = (xp * mp).sum(-1, keepdim=True) / count
        var = (((xp - mean) ** 2) * mp).sum(-1, keepdim=True) / count
        return (xp - mean) / torch.sqrt(var + eps)

    diff = (normalize(t) - normalize(r)).abs() * mp
    total = mp.sum((1, 2, 3)) * C
    return diff.sum((1, 2, 3)) / total.clamp(min=1)
