"""Readers: depth images (16-bit PNG with a depth scale, NYU RGB-packed), masks, keypoints, cameras.

Every reader raises :class:`fitting.errors.InputError` with a one-line message naming the file
and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from renderers import Camera

from .errors import InputError


def _read_image(path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return iio.imread(path)
    except Exception as err:  # imageio raises many types for unreadable files
        raise InputError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from err


def read_depth(path, depth_scale: float = 1.0, encoding: str = "uint16") -> torch.Tensor:
    """Read a depth image as (H, W) float32 millimetres, 0 = no measurement.

    Args:
        path: the image file.
        depth_scale: millimetres per stored unit (``uint16`` only); the SR305 frames need 0.125.
        encoding: ``"uint16"``: a 16-bit single-channel image, value * depth_scale = mm.
            ``"nyu"``: NYU Hand-style 8-bit RGB with depth = (G << 8) + B in mm.

    Raises:
        InputError: missing or unreadable file, an 8-bit image where 16-bit depth is expected,
            a wrong channel count, a non-positive depth scale or an unknown encoding.
    """
    if not (depth_scale > 0 and np.isfinite(depth_scale)):
        raise InputError(f"--depth-scale must be a positive number of mm per unit, got {depth_scale}")
    img = _read_image(path)
    if encoding == "uint16":
        if img.dtype != np.uint16:
            bits = img.dtype.itemsize * 8
            raise InputError(f"{path}: is a {bits}-bit {img.dtype} image; expected 16-bit depth "
                             "(for NYU-style RGB-packed depth use --encoding nyu)")
        if img.ndim != 2:
            raise InputError(f"{path}: has {img.shape[2]} channels; expected single-channel 16-bit depth")
        return torch.from_numpy(img.astype(np.float32) * np.float32(depth_scale))
    if encoding == "nyu":
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] < 3:
            raise InputError(f"{path}: NYU-packed depth must be an 8-bit RGB image, got {img.dtype} {img.shape}")
        g, b = img[..., 1].astype(np.float32), img[..., 2].astype(np.float32)
        return torch.from_numpy(g * 256.0 + b)
    raise InputError(f"unknown depth encoding {encoding!r}; use 'uint16' or 'nyu'")


def read_mask(path) -> torch.Tensor:
    """Read a hand mask image as (H, W) bool (nonzero = hand; any channel).

    Raises:
        InputError: missing or unreadable file.
    """
    img = _read_image(path)
    if img.ndim == 3:
        img = img.max(axis=2)
    return torch.from_numpy(img > 0)


def read_keypoints_json(path) -> torch.Tensor:
    """Read keypoints from JSON: a list of [u, v] / [x, y, z] or ``{"keypoints": [...]}``.

    Returns:
        (K, 2) px or (K, 3) mm float32.

    Raises:
        InputError: missing file, invalid JSON or rows of unequal / unsupported length.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON ({err})") from err
    rows = doc.get("keypoints") if isinstance(doc, dict) else doc
    try:
        arr = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: keypoints must be a list of [u, v] or [x, y, z] rows") from err
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise InputError(f"{path}: keypoints must be a list of [u, v] or [x, y, z] rows, got shape {arr.shape}")
    return torch.from_numpy(arr)


def camera_from_args(fx=None, fy=None, cx=None, cy=None, width: int | None = None, height: int | None = None,
                     camera_json=None) -> Camera:
    """Build the frame's camera from flags and/or a JSON file (fx, fy, cx, cy[, width, height]).

    Flags override the file; width and height default to the image's.

    Raises:
        InputError: a missing intrinsic (naming its flag), an unreadable JSON file, or
            non-positive focal lengths.
    """
    values = {}
    if camera_json:
        path = Path(camera_json)
        if not path.is_file():
            raise InputError(f"{path}: no such camera file")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: invalid JSON ({err})") from err
        if not isinstance(values, dict):
            raise InputError(f"{path}: expected a JSON object with fx, fy, cx, cy")
    for key, value in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)):
        if value is not None:
            values[key] = value
    missing = [k for k in ("fx", "fy", "cx", "cy") if values.get(k) is None]
    if missing:
        raise InputError("missing camera intrinsics: give " + ", ".join(f"--{k}" for k in missing) + " or --camera FILE.json")
    values.setdefault("width", width)
    values.setdefault("height", height)
    try:
        return Camera(**{k: values[k] for k in ("fx", "fy", "cx", "cy", "width", "height")})
    except (ValueError, TypeError) as err:
        raise InputError(f"bad camera intrinsics: {err}") from err


def check_camera_matches(camera: Camera, depth: torch.Tensor) -> None:
    """Raise InputError when the camera's image size differs from the depth frame's (H, W)."""
    H, W = depth.shape[-2:]
    if (camera.height, camera.width) != (H, W):
        raise InputError(f"the camera intrinsics are for a {camera.width}x{camera.height} image "
                         f"but the depth frame is {W}x{H}")
    cx, cy = float(camera.cx[0]), float(camera.cy[0])
    if not (0 <= cx <= W and 0 <= cy <= H):
        raise InputError(f"the principal point ({cx:.1f}, {cy:.1f}) lies outside the {W}x{H} image; "
                         "are --cx/--cy for this image?")
