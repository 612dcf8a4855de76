"""A batched pinhole camera in OpenCV conventions.

Axes and units
--------------
Camera coordinates follow OpenCV: x to the right, y down, z forward (into the
scene), in millimetres. Image coordinates are in pixels: ``u`` grows to the right
(along image columns), ``v`` grows down (along image rows). A point
``(x, y, z)`` projects to::

    u = fx * x / z + cx
    v = fy * y / z + cy

and an image tensor of shape ``(H, W)`` is indexed ``image[row, col] =
image[v, u]``: no flips anywhere.

Pixel-centre convention
-----------------------
OpenCV's: the *centre* of pixel (row ``i``, column ``j``) is at the continuous
coordinates ``(u, v) = (j, i)``, so pixel ``j`` covers ``u`` in ``[j - 0.5,
j + 0.5]`` and the whole image covers ``u`` in ``[-0.5, W - 0.5]``. A camera whose
optical axis goes through the middle of a ``W x H`` image has ``cx = (W - 1) / 2``,
``cy = (H - 1) / 2``.

Some operations (crops, ``grid_sample``) are easier in *pixel-edge* coordinates
``e = centre + 0.5``, in which pixel ``j`` spans ``[j, j + 1)`` and the image spans
``[0, W)``. :meth:`Camera.crop` takes its window in edge coordinates.

Crop rule
---------
A square window ``[x0, x0 + size) x [y0, y0 + size)`` (edge coordinates of the
original image) resampled to ``out_size x out_size`` pixels has scale
``s = size / out_size`` original pixels per crop pixel. Crop pixel ``j'`` spans
original edge coordinates ``[x0 + j' s, x0 + (j' + 1) s)``, so its centre is the
original continuous coordinate ``u = x0 + (j' + 0.5) s - 0.5``; inversely
``j' = (u + 0.5 - x0) / s - 0.5``. Hence the crop camera is::

    fx' = fx / s,  cx' = (cx + 0.5 - x0) / s - 0.5
    fy' = fy / s,  cy' = (cy + 0.5 - y0) / s - 0.5

An image resampled by ``torch.nn.functional.grid_sample(image, grid,
align_corners=False)`` matches this camera when ``grid[..., j', 0] = 2 * (x0 +
(j' + 0.5) * s) / W - 1`` (and likewise for rows with ``y0`` and ``H``): with
``align_corners=False`` the normalised range ``[-1, 1]`` spans the image *edges*
``[0, W)``.
"""

from __future__ import annotations

import json
import operator
import os
from typing import Any, Dict, Optional, Sequence, Union

import torch

__all__ = ["Camera"]

TensorLike = Union[float, int, torch.Tensor, Sequence[float]]

_KEYS = ("fx", "fy", "cx", "cy", "width", "height")


def _positive_int(value: Any, name: str) -> int:
    """Return ``value`` as a positive Python int or raise ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int, got a bool ({value!r})")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            raise ValueError(
                f"{name} must be a positive int, got a tensor of shape "
                f"{tuple(value.shape)} and dtype {value.dtype}"
            )
        value = int(value.item())
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a positive int, got {type(value).__name__} ({value!r})"
        ) from None
    if out <= 0:
        raise ValueError(f"{name} must be a positive int, got {out}")
    return int(out)


def _as_1d(value: Any, name: str) -> torch.Tensor:
    """Convert a float, 0-d or (B,) tensor/sequence into a 1-D tensor (no dtype change
    for floating tensors, so gradients are kept)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a float or a tensor of shape (B,), got a bool")
    if isinstance(value, torch.Tensor):
        t = value
        if not (t.is_floating_point() or t.dtype in _INT_DTYPES):
            raise ValueError(f"{name} must be a real-valued tensor, got dtype {t.dtype}")
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{name} must be a float or a tensor of shape (B,), got "
                f"{type(value).__name__} ({value!r})"
            ) from None
        if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
            raise ValueError(
                f"{name} must be a float or a tensor of shape (B,), got {value!r}"
            )
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or t.shape[0] == 0:
        raise ValueError(
            f"{name} must be a float, a 0-d tensor or a tensor of shape (B,) with B >= 1, "
            f"got shape {tuple(t.shape)}"
        )
    return t


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _broadcast_batch(tensors: Dict[str, torch.Tensor], what: str = "") -> int:
    """Common batch size of 1-D tensors (each of length 1 or B)."""
    sizes = {n: t.shape[0] for n, t in tensors.items()}
    big = {s for s in sizes.values() if s != 1}
    if len(big) > 1:
        raise ValueError(
            f"{what}batch sizes must be 1 or a common B, got "
            + ", ".join(f"{n}: {s}" for n, s in sizes.items())
        )
    return big.pop() if big else 1


class Camera:
    """A batch of ``B`` pinhole cameras sharing one image size (OpenCV axes, mm, px).

    See the module docstring for the axis, pixel-centre and crop conventions. The
    parameters are stored as tensors of shape ``(B,)``; if they are given as tensors
    that require grad, the graph is kept (so intrinsics can be refined).

    Args:
        fx, fy: focal lengths in pixels; floats or tensors of shape ``(B,)`` / ``()``.
            Must be finite and > 0.
        cx, cy: principal point in pixels (OpenCV pixel-centre convention: pixel
            ``(row i, col j)`` is centred at ``(u, v) = (j, i)``); floats or tensors of
            shape ``(B,)`` / ``()``. Must be finite.
        width, height: image size in pixels, positive ints.
        device, dtype: optional; default to those of the first floating tensor among
            the parameters, else CPU and ``torch.get_default_dtype()``.

    The four parameters are broadcast to a common batch size ``B`` (each must have
    length 1 or B).

    Raises:
        ValueError: naming the argument for non-finite or non-positive focal lengths,
            non-finite principal points, non-positive or non-integer width/height,
            wrong shapes or incompatible batch sizes.

    Example:
        >>> cam = Camera(500.0, 500.0, 31.5, 23.5, width=64, height=48)
        >>> cam.project(torch.tensor([[[0.0, 0.0, 500.0]]]))
        tensor([[[31.5000, 23.5000]]])
    """

    def __init__(
        self,
        fx: TensorLike,
        fy: TensorLike,
        cx: TensorLike,
        cy: TensorLike,
        width: int,
        height: int,
        *,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        params = {n: _as_1d(v, n) for n, v in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy))}
        self.width = _positive_int(width, "width")
        self.height = _positive_int(height, "height")
        if dtype is None:
            floats = [t.dtype for t in params.values() if t.is_floating_point()]
            dtype = floats[0] if floats else torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        if device is None:
            devs = [t.device for t in params.values() if t.is_floating_point()]
            device = devs[0] if devs else torch.device("cpu")
        params = {n: t.to(device=device, dtype=dtype) for n, t in params.items()}
        B = _broadcast_batch(params)
        for n, t in params.items():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{n} must be finite, got {t.detach().cpu().tolist()}")
        for n in ("fx", "fy"):
            if not bool((params[n] > 0).all()):
                raise ValueError(f"{n} must be > 0, got {params[n].detach().cpu().tolist()}")
        self.fx = params["fx"].expand(B)
        self.fy = params["fy"].expand(B)
        self.cx = params["cx"].expand(B)
        self.cy = params["cy"].expand(B)

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        """Number of cameras ``B``."""
        return int(self.fx.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        """Device of the parameter tensors."""
        return self.fx.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameter tensors."""
        return self.fx.dtype

    @property
    def image_size(self) -> tuple:
        """``(height, width)`` in pixels (PyTorch's order)."""
        return (self.height, self.width)

    @property
    def K(self) -> torch.Tensor:
        """Intrinsic matrices ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``, shape (B, 3, 3), px."""
        z = torch.zeros_like(self.fx)
        o = torch.ones_like(self.fx)
        rows = [
            torch.stack([self.fx, z, self.cx], dim=-1),
            torch.stack([z, self.fy, self.cy], dim=-1),
            torch.stack([z, z, o], dim=-1),
        ]
        return torch.stack(rows, dim=-2)

    def __repr__(self) -> str:
        def fmt(t: torch.Tensor) -> str:
            v = t.detach().cpu().tolist()
            return f"{v[0]:g}" if len(v) == 1 else str([round(x, 4) for x in v])

        return (
            f"Camera(fx={fmt(self.fx)}, fy={fmt(self.fy)}, cx={fmt(self.cx)}, "
            f"cy={fmt(self.cy)}, width={self.width}, height={self.height}, "
            f"batch_size={self.batch_size}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ batch ops
    def _new(self, fx, fy, cx, cy, width=None, height=None) -> "Camera":
        return Camera(
            fx, fy, cx, cy,
            self.width if width is None else width,
            self.height if height is None else height,
        )

    def to(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> "Camera":
        """Return a copy with the parameters on ``device`` and/or of floating ``dtype``.

        Raises:
            ValueError: if ``dtype`` is not a floating dtype.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        conv = lambda t: t.to(device=device if device is not None else t.device,
                              dtype=dtype if dtype is not None else t.dtype)
        return self._new(conv(self.fx), conv(self.fy), conv(self.cx), conv(self.cy))

    def expand(self, batch_size: int) -> "Camera":
        """Return the camera repeated to ``batch_size`` rows.

        Args:
            batch_size: target ``B``; the camera must have batch size 1 or ``batch_size``.

        Raises:
            ValueError: if ``batch_size`` is not a positive int or the camera has a
                batch size other than 1 and ``batch_size``.
        """
        batch_size = _positive_int(batch_size, "batch_size")
        if self.batch_size not in (1, batch_size):
            raise ValueError(
                f"batch_size: can only expand a camera of batch size 1 or {batch_size}, "
                f"this one has batch size {self.batch_size}"
            )
        e = lambda t: t.expand(batch_size)
        return self._new(e(self.fx), e(self.fy), e(self.cx), e(self.cy))

    def __getitem__(self, idx: Union[int, slice, torch.Tensor, Sequence[int]]) -> "Camera":
        """Select rows: an int (keeps a batch of 1), a slice, a bool mask of shape (B,)
        or integer indices. Returns a new Camera.

        Raises:
            ValueError: if the selection is empty or ``idx`` has an unsupported type.
            IndexError: if an index is out of range.
        """
        if isinstance(idx, bool):
            raise ValueError("idx must be an int, slice, bool mask or index tensor, got a bool")
        if isinstance(idx, int):
            if not -self.batch_size <= idx < self.batch_size:
                raise IndexError(f"idx {idx} out of range for batch size {self.batch_size}")
            idx = slice(idx % self.batch_size, idx % self.batch_size + 1)
        elif isinstance(idx, slice):
            pass
        else:
            if not isinstance(idx, torch.Tensor):
                idx = torch.as_tensor(idx)
            if idx.dtype == torch.bool:
                if idx.shape != (self.batch_size,):
                    raise ValueError(
                        f"idx: bool mask must have shape ({self.batch_size},), "
                        f"got {tuple(idx.shape)}"
                    )
            elif idx.dtype in _INT_DTYPES:
                idx = idx.reshape(-1).long()
            else:
                raise ValueError(f"idx: unsupported index dtype {idx.dtype}")
            idx = idx.to(self.device)
        sel = [t[idx] for t in (self.fx, self.fy, self.cx, self.cy)]
        if sel[0].numel() == 0:
            raise ValueError("idx selects no camera")
        return self._new(*sel)

    @classmethod
    def cat(cls, cameras: Sequence["Camera"]) -> "Camera":
        """Concatenate cameras along the batch dimension.

        Args:
            cameras: non-empty sequence of Camera objects with the same width, height
                and device (dtypes are promoted).

        Raises:
            ValueError: if ``cameras`` is empty, holds non-Camera objects, or the image
                sizes or devices differ.
        """
        cameras = list(cameras)
        if not cameras:
            raise ValueError("cameras must be a non-empty sequence of Camera")
        for i, c in enumerate(cameras):
            if not isinstance(c, Camera):
                raise ValueError(f"cameras[{i}] must be a Camera, got {type(c).__name__}")
        c0 = cameras[0]
        for i, c in enumerate(cameras[1:], 1):
            if (c.width, c.height) != (c0.width, c0.height):
                raise ValueError(
                    f"cameras[{i}] has image size {c.width}x{c.height}, cameras[0] has "
                    f"{c0.width}x{c0.height}; all must match"
                )
            if c.device != c0.device:
                raise ValueError(
                    f"cameras[{i}] is on {c.device}, cameras[0] on {c0.device}; all must match"
                )
        dtype = c0.dtype
        for c in cameras[1:]:
            dtype = torch.promote_types(dtype, c.dtype)
        out = [torch.cat([getattr(c, n).to(dtype) for c in cameras]) for n in ("fx", "fy", "cx", "cy")]
        return Camera(*out, c0.width, c0.height)

    # ------------------------------------------------------------------ geometry
    def _batch_params(self, B: int, name: str):
        if self.batch_size not in (1, B) and B != 1:
            raise ValueError(
                f"{name} has batch size {B} but the camera has batch size "
                f"{self.batch_size}; they must be equal or one of them 1"
            )
        return [t[:, None] for t in (self.fx, self.fy, self.cx, self.cy)]  # (Bc, 1)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Project camera-space points to pixels.

        Args:
            points: (B, N, 3) in mm, OpenCV camera coordinates. A camera of batch size 1
                is used for every batch element; points of batch size 1 are projected
                by every camera.

        Returns:
            (max(B, Bc), N, 2) pixel coordinates ``(u, v)`` (u = column, v = row;
            pixel centres at integers). Points with z <= 0 are not checked and give
            non-finite or mirrored coordinates.

        Raises:
            ValueError: if ``points`` is not a (B, N, 3) floating tensor or the batch
                sizes are incompatible.
        """
        if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(
                f"points must be a tensor of shape (B, N, 3), got "
                f"{tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__}"
            )
        if not points.is_floating_point():
            raise ValueError(f"points must be a floating tensor, got dtype {points.dtype}")
        fx, fy, cx, cy = self._batch_params(points.shape[0], "points")
        x, y, z = points.unbind(-1)
        u = fx * (x / z) + cx
        v = fy * (y / z) + cy
        return torch.stack([u, v], dim=-1)

    def unproject(self, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Lift pixels with depth to camera-space points (inverse of :meth:`project`).

        Args:
            uv: (B, N, 2) pixel coordinates ``(u, v)`` (pixel centres at integers).
            depth: (B, N) z in mm (distance along the optical axis, not along the ray).

        Returns:
            (max(B, Bc), N, 3) points in mm, OpenCV camera coordinates.

        Raises:
            ValueError: if the shapes are wrong or the batch sizes are incompatible.
        """
        if not isinstance(uv, torch.Tensor) or uv.dim() != 3 or uv.shape[-1] != 2:
            raise ValueError(
                f"uv must be a tensor of shape (B, N, 2), got "
                f"{tuple(uv.shape) if isinstance(uv, torch.Tensor) else type(uv).__name__}"
            )
        if not isinstance(depth, torch.Tensor) or depth.shape != uv.shape[:2]:
            raise ValueError(
                f"depth must be a tensor of shape {tuple(uv.shape[:2])} (B, N) matching uv, got "
                f"{tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__}"
            )
        fx, fy, cx, cy = self._batch_params(uv.shape[0], "uv")
        u, v = uv.unbind(-1)
        x = (u - cx) / fx * depth
        y = (v - cy) / fy * depth
        x, y, z = torch.broadcast_tensors(x, y, depth)
        return torch.stack([x, y, z], dim=-1)

    def crop(
        self,
        x0: TensorLike,
        y0: TensorLike,
        size: TensorLike,
        out_size: int,
    ) -> "Camera":
        """Camera of a square window of the image resampled to ``out_size x out_size``.

        The window spans ``[x0, x0 + size) x [y0, y0 + size)`` in *pixel-edge*
        coordinates of this camera's image (pixel ``j`` spans ``[j, j + 1)``; edge =
        centre + 0.5). With ``s = size / out_size``::

            fx' = fx / s,   cx' = (cx + 0.5 - x0) / s - 0.5
            fy' = fy / s,   cy' = (cy + 0.5 - y0) / s - 0.5

        This matches ``grid_sample(..., align_corners=False)`` sampling the original
        image at the edge coordinates ``x0 + (j' + 0.5) s`` (see the module docstring).
        The window may extend beyond the image.

        Args:
            x0, y0: window origin (left, top edge) in px; floats or tensors (B,) / ().
            size: window side in px (> 0); float or tensor (B,) / ().
            out_size: side of the resampled crop in px, positive int.

        Returns:
            Camera of batch size ``max(B, Bc)`` with width = height = ``out_size``.

        Raises:
            ValueError: naming the argument for non-finite values, ``size <= 0``,
                a non-positive ``out_size`` or incompatible batch sizes.
        """
        out_size = _positive_int(out_size, "out_size")
        win = {}
        for n, val in (("x0", x0), ("y0", y0), ("size", size)):
            t = _as_1d(val, n)
            t = t.to(device=self.device, dtype=self.dtype if not t.is_floating_point()
                     else torch.promote_types(t.dtype, self.dtype))
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{n} must be finite, got {t.detach().cpu().tolist()}")
            win[n] = t
        if not bool((win["size"] > 0).all()):
            raise ValueError(f"size must be > 0, got {win['size'].detach().cpu().tolist()}")
        _broadcast_batch({**win, "camera": self.fx}, "crop: ")
        s = win["size"] / out_size
        fx = self.fx / s
        fy = self.fy / s
        cx = (self.cx + 0.5 - win["x0"]) / s - 0.5
        cy = (self.cy + 0.5 - win["y0"]) / s - 0.5
        B = max(t.shape[0] for t in (fx, fy, cx, cy))
        return Camera(fx.expand(B), fy.expand(B), cx.expand(B), cy.expand(B), out_size, out_size)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Camera":
        """Build a camera from a mapping with keys ``fx, fy, cx, cy`` (px; numbers or
        lists of B numbers) and ``width, height`` (px, ints). Extra keys are ignored.

        Raises:
            ValueError: naming a missing key, or as :class:`Camera` for bad values.
        """
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        for k in _KEYS:
            if k not in d:
                raise ValueError(f"d is missing the key {k!r} (needs {', '.join(_KEYS)})")
        vals = {}
        for k in ("fx", "fy", "cx", "cy"):
            v = d[k]
            if isinstance(v, (list, tuple)):
                v = torch.tensor(v, dtype=torch.get_default_dtype())
            vals[k] = v
        return cls(vals["fx"], vals["fy"], vals["cx"], vals["cy"], d["width"], d["height"])

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "Camera":
        """Read a camera from a JSON file holding the object described in :meth:`from_dict`.

        Raises:
            ValueError: if the file is not valid JSON, or as :meth:`from_dict`.
            FileNotFoundError: if ``path`` does not exist.
        """
        with open(path, "r", encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"path {str(path)!r} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def to_dict(self) -> Dict[str, Any]:
        """Plain, JSON-serialisable dict: ``fx, fy, cx, cy`` as floats when B == 1, else
        lists of B floats; ``width, height`` as ints. ``Camera.from_dict`` inverts it."""
        out: Dict[str, Any] = {}
        for k in ("fx", "fy", "cx", "cy"):
            v = [float(x) for x in getattr(self, k).detach().cpu().tolist()]
            out[k] = v[0] if len(v) == 1 else v
        out["width"] = self.width
        out["height"] = self.height
        return out

    def to_json(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
