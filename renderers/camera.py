"""A batch of pinhole cameras (intrinsics only) in OpenCV conventions.

Axes: camera coordinates are x right, y down, z forward, in mm. A point ``(x, y, z)``
projects to the pixel ``(u, v) = (fx x / z + cx, fy y / z + cy)``, ``u`` along columns and
``v`` along rows, so an ``(H, W)`` image is indexed ``image[v, u]``: no flips anywhere.

Pixel centres at integers (OpenCV's and kornia's convention): pixel (row ``i``, column
``j``) is centred at ``(u, v) = (j, i)`` and covers ``u`` in ``[j - 0.5, j + 0.5]``; the
image spans ``[-0.5, W - 0.5]`` and a centred principal point is ``cx = (W - 1) / 2``.
*Edge* coordinates ``e = u + 0.5`` (pixel ``j`` spans ``[j, j + 1)``, the image ``[0, W)``)
are what ``grid_sample(..., align_corners=False)`` normalises to ``[-1, 1]``.

Crop rule: a square window ``[x0, x0 + size) x [y0, y0 + size)`` in edge coordinates,
resampled to ``out_size`` px, has ``s = size / out_size`` frame px per crop px; crop pixel
``j'`` is centred at the frame's ``u = x0 + (j' + 0.5) s - 0.5``. So the crop's camera is
``fx' = fx / s``, ``cx' = (cx + 0.5 - x0) / s - 0.5`` (likewise ``fy'``, ``cy'`` with
``y0``), and ``grid_sample(image, grid, align_corners=False)`` with
``grid[..., j', 0] = 2 (x0 + (j' + 0.5) s) / W - 1`` (rows: ``y0``, ``H``) samples exactly
there.

:meth:`Camera.project` and :meth:`Camera.unproject` are the formulas above, written out:
kornia's ``project_points`` / ``unproject_points`` compute the same (same K, same pixel
centres; ``tests/test_camera.py`` checks it) but take about twice as long on the
(16, 1609, 3) call that the renderers make every iteration (``bench/camera_project.py``).
"""

from __future__ import annotations

import operator
from typing import Optional, Sequence, Union

import torch

__all__ = ["Camera"]

Values = Union[float, torch.Tensor, Sequence[float]]


def _size(value, name: str) -> int:
    """``value`` as a positive int (px), or ValueError naming ``name``."""
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if isinstance(value, bool) or n is None or n <= 0:
        raise ValueError(f"{name} must be a positive int of pixels, got {value!r}")
    return n


def _values(value, name: str, device, dtype) -> torch.Tensor:
    """A number, a 0-d or a (B,) tensor/sequence as a finite (B,) tensor (graph kept)."""
    try:
        t = torch.as_tensor(value, device=device, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number or a (B,) tensor, got {value!r}") from None
    if t.dim() > 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a number or a (B,) tensor with B >= 1, got shape {tuple(t.shape)}")
    t = t.reshape(-1)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def _broadcast(names: str, *tensors: torch.Tensor):
    """(B,) or (1,) tensors broadcast to one batch size, or ValueError naming them."""
    try:
        return torch.broadcast_tensors(*tensors)
    except RuntimeError:
        sizes = ", ".join(str(t.shape[0]) for t in tensors)
        raise ValueError(f"{names}: batch sizes must be 1 or a common B, got {sizes}") from None


class Camera:
    """A batch of ``B`` pinhole cameras sharing one image size (OpenCV axes, mm, px).

    See the module docstring for the axes, the pixel-centre convention and the crop rule.
    The parameters are kept as (B,) tensors; given as tensors that require grad, they keep
    their graph (so intrinsics can be refined).

    Args:
        fx, fy: focal lengths in px, > 0: numbers, 0-d or (B,) tensors or sequences.
        cx, cy: principal point in px (pixel centres at integers), likewise.
        width, height: image size in px, positive ints.
        device, dtype: where and in which floating dtype to keep the parameters; by default
            those of the first floating tensor among them, else the CPU and
            ``torch.get_default_dtype()``.

    Each parameter has length 1 or a common ``B`` and is broadcast to ``B``.

    Raises:
        ValueError: naming the argument: non-finite or non-positive focal lengths,
            non-finite principal points, a width or height that is not a positive int,
            shapes other than () or (B,), incompatible batch sizes, a non-floating dtype.

    Example:
        >>> cam = Camera(500.0, 500.0, 31.5, 23.5, width=64, height=48)
        >>> cam.project(torch.tensor([[[0.0, 0.0, 500.0]]]))
        tensor([[[31.5000, 23.5000]]])
    """

    def __init__(self, fx: Values, fy: Values, cx: Values, cy: Values, width: int, height: int, *,
                 device: Optional[Union[str, torch.device]] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        self.width = _size(width, "width")
        self.height = _size(height, "height")
        ref = next((v for v in (fx, fy, cx, cy) if isinstance(v, torch.Tensor) and v.is_floating_point()), None)
        dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        device = device or (ref.device if ref is not None else "cpu")
        params = [_values(v, n, device, dtype) for v, n in ((fx, "fx"), (fy, "fy"), (cx, "cx"), (cy, "cy"))]
        for t, n in zip(params[:2], ("fx", "fy")):
            if not bool((t > 0).all()):
                raise ValueError(f"{n} must be > 0 px, got {t.tolist()}")
        self.fx, self.fy, self.cx, self.cy = _broadcast("fx, fy, cx, cy", *params)

    @property
    def batch_size(self) -> int:
        """Number of cameras ``B``."""
        return self.fx.shape[0]

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.fx.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.fx.dtype

    @property
    def K(self) -> torch.Tensor:
        """Intrinsic matrices ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``, (B, 3, 3), px."""
        z, o = torch.zeros_like(self.fx), torch.ones_like(self.fx)
        return torch.stack([self.fx, z, self.cx, z, self.fy, self.cy, z, z, o], -1).reshape(-1, 3, 3)

    def __repr__(self) -> str:
        p = ", ".join(f"{n}={getattr(self, n).tolist()}" for n in ("fx", "fy", "cx", "cy"))
        return f"Camera({p}, width={self.width}, height={self.height})"

    def _with(self, fx, fy, cx, cy, size=None) -> "Camera":
        w, h = (self.width, self.height) if size is None else (size, size)
        return Camera(fx, fy, cx, cy, w, h)

    # ------------------------------------------------------------------ batches
    def to(self, device: Optional[Union[str, torch.device]] = None,
           dtype: Optional[torch.dtype] = None) -> "Camera":
        """The camera with its parameters on ``device`` and/or in floating ``dtype``.

        Raises:
            ValueError: ``dtype`` is not a floating dtype.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        return self._with(*(t.to(device=device, dtype=dtype) for t in (self.fx, self.fy, self.cx, self.cy)))

    def expand(self, batch_size: int) -> "Camera":
        """The camera repeated to ``batch_size`` rows (from batch size 1 or ``batch_size``).

        Raises:
            ValueError: ``batch_size`` is not a positive int, or the camera's batch size is
                neither 1 nor ``batch_size``.
        """
        batch_size = _size(batch_size, "batch_size")
        if self.batch_size not in (1, batch_size):
            raise ValueError(f"batch_size: can only expand a camera of batch size 1 or {batch_size}, "
                             f"this one has {self.batch_size}")
        return self._with(*(t.expand(batch_size) for t in (self.fx, self.fy, self.cx, self.cy)))

    def __getitem__(self, idx) -> "Camera":
        """The cameras selected by an int (a batch of 1), a slice, a (B,) bool mask or
        integer indices.

        Raises:
            IndexError: an index out of range or a mask of the wrong length.
            ValueError: the selection is empty.
        """
        if isinstance(idx, int) and not isinstance(idx, bool):
            idx = [idx]
        elif not isinstance(idx, slice):
            idx = torch.as_tensor(idx, device=self.device)
        sel = [t[idx] for t in (self.fx, self.fy, self.cx, self.cy)]
        if sel[0].numel() == 0:
            raise ValueError("idx selects no camera")
        return self._with(*sel)

    @staticmethod
    def cat(cameras: Sequence["Camera"]) -> "Camera":
        """Concatenate cameras of one image size and device along the batch (dtypes promoted).

        Raises:
            ValueError: ``cameras`` is empty or holds something else than cameras, or their
                image sizes or devices differ (naming the first that differs).
        """
        cameras = list(cameras)
        if not cameras or not all(isinstance(c, Camera) for c in cameras):
            raise ValueError(f"cameras must be a non-empty sequence of Camera, got "
                             f"{[type(c).__name__ for c in cameras]}")
        c0 = cameras[0]
        for i, c in enumerate(cameras):
            if (c.width, c.height, c.device) != (c0.width, c0.height, c0.device):
                raise ValueError(f"cameras[{i}] is for a {c.width}x{c.height} image on {c.device}, cameras[0] "
                                 f"for {c0.width}x{c0.height} on {c0.device}; all must match")
        return c0._with(*(torch.cat([getattr(c, n) for c in cameras]) for n in ("fx", "fy", "cx", "cy")))

    # ------------------------------------------------------------------ geometry
    def _params(self, B: int, name: str):
        """fx, fy, cx, cy as (Bc, 1) for points of batch size ``B``."""
        if B != 1 and self.batch_size not in (1, B):
            raise ValueError(f"{name} has batch size {B} but the camera has {self.batch_size}; "
                             f"they must be equal or one of them 1")
        return self.fx[:, None], self.fy[:, None], self.cx[:, None], self.cy[:, None]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Project camera-space points to pixels: ``u = fx x / z + cx``, ``v = fy y / z + cy``.

        Args:
            points: (B, N, 3) mm, OpenCV camera coordinates, floating. A camera of batch
                size 1 serves every batch element; points of batch size 1 are seen by every
                camera.

        Returns:
            (max(B, Bc), N, 2) pixels ``(u, v)`` (column, row; centres at integers). Points
            with z <= 0 are not checked: they give non-finite or mirrored pixels.

        Raises:
            ValueError: ``points`` is not a floating (B, N, 3) tensor, or the batch sizes
                are incompatible.
        """
        if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[-1] != 3 \
                or not points.is_floating_point():
            got = f"{points.dtype} {tuple(points.shape)}" if isinstance(points, torch.Tensor) else type(points).__name__
            raise ValueError(f"points must be a floating tensor of shape (B, N, 3), got {got}")
        fx, fy, cx, cy = self._params(points.shape[0], "points")
        x, y, z = points.unbind(-1)
        return torch.stack([fx * (x / z) + cx, fy * (y / z) + cy], dim=-1)

    def unproject(self, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Lift pixels with depth to camera-space points (the inverse of :meth:`project`).

        Args:
            uv: (B, N, 2) pixels ``(u, v)`` (centres at integers).
            depth: (B, N) z in mm (along the optical axis, not along the ray).

        Returns:
            (max(B, Bc), N, 3) mm, OpenCV camera coordinates.

        Raises:
            ValueError: the shapes are wrong or the batch sizes incompatible.
        """
        if not isinstance(uv, torch.Tensor) or uv.dim() != 3 or uv.shape[-1] != 2:
            got = tuple(uv.shape) if isinstance(uv, torch.Tensor) else type(uv).__name__
            raise ValueError(f"uv must be a tensor of shape (B, N, 2), got {got}")
        if not isinstance(depth, torch.Tensor) or depth.shape != uv.shape[:2]:
            got = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__
            raise ValueError(f"depth must be a (B, N) tensor matching uv, {tuple(uv.shape[:2])}, got {got}")
        fx, fy, cx, cy = self._params(uv.shape[0], "uv")
        u, v = uv.unbind(-1)
        return torch.stack(torch.broadcast_tensors((u - cx) / fx * depth, (v - cy) / fy * depth, depth), dim=-1)

    def crop(self, x0: Values, y0: Values, size: Values, out_size: int) -> "Camera":
        """The camera of a square window resampled to ``out_size x out_size`` (crop rule).

        The window is ``[x0, x0 + size) x [y0, y0 + size)`` in this image's edge coordinates
        (pixel ``j`` spans ``[j, j + 1)``) and may extend beyond the image. With
        ``s = size / out_size``: ``fx' = fx / s``, ``cx' = (cx + 0.5 - x0) / s - 0.5``, and
        likewise ``fy'``, ``cy'`` with ``y0``; this is the camera of
        ``grid_sample(..., align_corners=False)`` sampling the image at the edge coordinates
        ``x0 + (j' + 0.5) s`` (see the module docstring).

        Args:
            x0, y0: the window's left and top edges, px; numbers, 0-d or (B,) tensors.
            size: the window's side, px, > 0; likewise.
            out_size: the crop's side, px, a positive int.

        Returns:
            Camera of batch size ``max(B, Bc)``, ``out_size x out_size``.

        Raises:
            ValueError: naming the argument: non-finite values, ``size <= 0``, ``out_size``
                not a positive int, incompatible batch sizes.
        """
        out_size = _size(out_size, "out_size")
        x0, y0, size = (_values(v, n, self.device, self.dtype) for v, n in ((x0, "x0"), (y0, "y0"), (size, "size")))
        if not bool((size > 0).all()):
            raise ValueError(f"size must be > 0 px, got {size.tolist()}")
        fx, x0, y0, size = _broadcast("crop: camera, x0, y0, size", self.fx, x0, y0, size)
        s = size / out_size
        return self._with(fx / s, self.fy / s, (self.cx + 0.5 - x0) / s - 0.5,
                          (self.cy + 0.5 - y0) / s - 0.5, size=out_size)
