"""Readers: depth images (16-bit PNG with a depth scale, NYU RGB-packed), masks, keypoints,
and the camera's intrinsics from command-line flags and/or a JSON file; and the camera's JSON
object (:func:`camera_to_dict`), the one place where cameras meet files.

Every reader raises :class:`fitting.errors.InputError` with a one-line message that names the
file and the problem, so that the command line can print it as it is.

Depth conventions: depth is z along the optical axis in millimetres, float32, with 0 where
the sensor measured nothing.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from renderers import Camera

from .errors import InputError

__all__ = [
    "DEPTH_ENCODINGS",
    "camera_from_args",
    "camera_to_dict",
    "check_camera_matches",
    "read_depth",
    "read_keypoints_2d",
    "read_keypoints_json",
    "read_mask",
    "read_rgb",
    "read_rig",
]

#: The depth encodings :func:`read_depth` understands.
DEPTH_ENCODINGS = ("uint16", "nyu")


def _read_image(path) -> np.ndarray:
    """The image at ``path`` as a numpy array (H, W) or (H, W, C), or InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: is not a file")
    try:
        with warnings.catch_warnings():  # imageio warns while it tries its legacy plugins
            warnings.simplefilter("ignore")
            img = iio.imread(path)
    except Exception as err:  # imageio raises many types for unreadable files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot read the image ({reason})") from err
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or min(img.shape[:2]) == 0:
        raise InputError(f"{path}: expected a single image of shape (H, W) or (H, W, C), "
                         f"got an array of shape {img.shape}")
    return img


def _check_scale(depth_scale) -> float:
    if isinstance(depth_scale, bool) or not isinstance(depth_scale, numbers.Real):
        raise InputError(f"--depth-scale must be a positive number of mm per depth unit, "
                         f"got {depth_scale!r}")
    scale = float(depth_scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise InputError(f"--depth-scale must be a positive number of mm per depth unit, got {scale:g}")
    return scale


def read_depth(path, depth_scale: float = 1.0, encoding: str = "uint16") -> torch.Tensor:
    """Read a depth image as (H, W) float32 millimetres, 0 = no measurement.

    Encodings:

    - ``"uint16"``: a single-channel image of 16-bit integers (16-bit PNG, TIFF, ...);
      ``mm = value * depth_scale``. Most sensors store 1 mm per unit (``depth_scale=1``);
      the SR305 frames in ``shared/data/sr305`` store 0.125 mm per unit.
    - ``"nyu"``: NYU Hand-style depth packed into an 8-bit RGB image: the top byte in the
      green channel and the bottom byte in the blue one (red unused),
      ``mm = ((G << 8) + B) * depth_scale`` (``depth_scale`` is 1 for NYU files).

    Args:
        path: the image file.
        depth_scale: millimetres per stored unit, > 0.
        encoding: ``"uint16"`` or ``"nyu"``.

    Returns:
        (H, W) float32 tensor, mm.

    Raises:
        InputError: a missing or unreadable file; an 8-bit (or float, or multi-channel) image
            where 16-bit depth is expected; an NYU file that is not 8-bit RGB; a non-positive
            depth scale; an unknown encoding.
    """
    scale = _check_scale(depth_scale)
    if encoding not in DEPTH_ENCODINGS:
        raise InputError(f"unknown depth encoding {encoding!r}; use one of {', '.join(DEPTH_ENCODINGS)}")
    img = _read_image(path)
    if encoding == "uint16":
        if img.dtype == np.uint8 or img.dtype == np.int8 or img.dtype == bool:
            kind = "RGB " if img.ndim == 3 else ""
            hint = (" (for NYU-style RGB-packed depth use --encoding nyu)" if img.ndim == 3
                    else "; was the depth saved as a preview image?")
            raise InputError(f"{path}: is an 8-bit {kind}image; expected 16-bit depth{hint}")
        if not np.issubdtype(img.dtype, np.integer):
            raise InputError(f"{path}: holds {img.dtype} values; expected 16-bit integer depth")
        if img.ndim != 2:
            raise InputError(f"{path}: has {img.shape[2]} channels; expected single-channel 16-bit depth")
        if img.dtype.itemsize > 2 and (img.min() < 0 or img.max() > 65535):
            raise InputError(f"{path}: holds values outside 0..65535; expected 16-bit depth")
        return torch.from_numpy(img.astype(np.float32) * np.float32(scale))
    # nyu
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
        got = f"a {img.dtype} image with {1 if img.ndim == 2 else img.shape[2]} channel(s)"
        raise InputError(f"{path}: NYU-packed depth must be an 8-bit RGB image, got {got}")
    g = img[..., 1].astype(np.int32)
    b = img[..., 2].astype(np.int32)
    return torch.from_numpy(((g << 8) + b).astype(np.float32) * np.float32(scale))


def read_mask(path) -> torch.Tensor:
    """Read a hand mask image as (H, W) bool: nonzero = hand.

    Grey images are used as they are; colour images are the hand wherever any colour channel
    is nonzero. An alpha channel is ignored unless the colour channels are all zero (a mask
    drawn only in alpha).

    Raises:
        InputError: a missing or unreadable file, or a mask without any hand pixel.
    """
    img = _read_image(path)
    if img.ndim == 3:
        channels = img.shape[2]
        colour = img[..., : 3 if channels >= 3 else 1]
        mask = (colour != 0).any(axis=2)
        if not mask.any() and channels in (2, 4):
            mask = img[..., -1] != 0
    else:
        mask = img != 0
    if not mask.any():
        raise InputError(f"{path}: the mask has no hand pixel (all zero)")
    return torch.from_numpy(np.ascontiguousarray(mask))


def read_keypoints_json(path) -> torch.Tensor:
    """Read keypoints from JSON: a list of ``[u, v]`` rows (px) or ``[x, y, z]`` rows (mm,
    camera coordinates), or an object ``{"keypoints": [...]}`` holding such a list.

    Returns:
        (K, 2) px or (K, 3) mm, float32.

    Raises:
        InputError: a missing file, invalid JSON, no ``keypoints`` list, rows of unequal or
            unsupported length, non-numbers (``null`` for a missing keypoint included) or
            non-finite values.
    """
    path = Path(path)
    doc = _read_json(path, "file")
    if isinstance(doc, dict):
        if "keypoints" not in doc:
            raise InputError(f"{path}: expected a list of keypoints or an object with a "
                             f"'keypoints' list, got an object with keys {sorted(doc)[:5]}")
        doc = doc["keypoints"]
    expected = "a list of [u, v] (px) or [x, y, z] (mm) rows"
    if not isinstance(doc, list) or not doc:
        got = "an empty list" if isinstance(doc, list) else type(doc).__name__
        raise InputError(f"{path}: keypoints must be {expected}, got {got}")
    lengths = sorted({len(row) if isinstance(row, (list, tuple)) else 0 for row in doc})
    if lengths not in ([2], [3]):
        raise InputError(f"{path}: keypoints must be {expected}; found rows of length "
                         + ", ".join(map(str, lengths)))
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for row in doc for v in row):
        raise InputError(f"{path}: keypoints must be numbers ({expected}); found null or text")
    arr = np.asarray(doc, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: keypoints must be finite numbers; found NaN or infinity")
    return torch.from_numpy(arr)


#: The largest JSON file (bytes) the keypoint and rig readers accept: a 21-keypoint file is
#: about 1 kB and a rig of 16 views about 10 kB, so anything this big is not one.
MAX_JSON_BYTES = 1 << 20


def _read_json(path: Path, what: str, max_bytes: int | None = None):
    """The parsed JSON document at ``path``; InputError names a missing ``what``, a file over
    ``max_bytes`` or bad JSON."""
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise InputError(f"{path}: is {path.stat().st_size} bytes; a {what} is at most {max_bytes} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: invalid JSON ({err})") from err


def _camera_file(camera_json) -> dict:
    path = Path(camera_json)
    values = _read_json(path, "camera file")
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a JSON object with fx, fy, cx, cy (and width, height)")
    return values


def camera_from_args(fx=None, fy=None, cx=None, cy=None, width: int | None = None,
                     height: int | None = None, camera_json=None) -> Camera:
    """Build a frame's :class:`renderers.Camera` (batch 1) from flags and/or a JSON file.

    The JSON file (``--camera``) holds an object with ``fx, fy, cx, cy`` (px, numbers) and
    optionally ``width, height`` (px, ints), as :func:`camera_to_dict` writes it (other keys
    are ignored). Intrinsics given as flags (not None) take precedence over the file's; the
    file's image size takes precedence over ``width``/``height``, which are the image's size
    as a fallback (so that :func:`check_camera_matches` can tell a file written for another
    resolution).

    Args:
        fx, fy: focal lengths in px (``--fx``, ``--fy``); cx, cy: principal point in px,
            OpenCV convention (pixel centres at integers) (``--cx``, ``--cy``).
        width, height: image size in px.
        camera_json: optional path of the JSON file.

    Raises:
        InputError: a missing intrinsic (naming its flag), a missing image size, an
            unreadable or invalid JSON file, or values the Camera rejects (non-positive or
            non-finite focal lengths, ...).
    """
    values = _camera_file(camera_json) if camera_json else {}
    source = f"{camera_json}: " if camera_json else ""
    for key, value in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)):
        if value is not None:
            values[key] = value
    missing = [k for k in ("fx", "fy", "cx", "cy") if values.get(k) is None]
    if missing:
        raise InputError("missing camera intrinsics: give " + ", ".join(f"--{k}" for k in missing)
                         + " or --camera FILE.json")
    if values.get("width") is None:
        values["width"] = width
    if values.get("height") is None:
        values["height"] = height
    if values["width"] is None or values["height"] is None:
        raise InputError("missing the image size for the camera: give width and height in "
                         "--camera FILE.json")
    for key in ("fx", "fy", "cx", "cy"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InputError(f"{source}{key} must be a number of pixels, got {v!r}")
    for key in ("width", "height"):
        v = values[key]
        if isinstance(v, float) and v.is_integer():
            values[key] = int(v)
    try:
        return Camera(*(float(values[k]) for k in ("fx", "fy", "cx", "cy")),
                      values["width"], values["height"])
    except (ValueError, TypeError) as err:
        raise InputError(f"{source}bad camera intrinsics: {err}") from err


def camera_to_dict(camera: Camera) -> dict:
    """The JSON object of a batch-1 camera, as :func:`camera_from_args` reads it back.

    Returns:
        ``{"fx", "fy", "cx", "cy"}`` as floats (px; pixel centres at integers) and
        ``{"width", "height"}`` as ints (px). ``json.dump`` it to write a ``--camera`` file.

    Raises:
        ValueError: ``camera`` is not a :class:`renderers.Camera` of batch size 1.
    """
    if not isinstance(camera, Camera) or camera.batch_size != 1:
        got = f"batch size {camera.batch_size}" if isinstance(camera, Camera) else type(camera).__name__
        raise ValueError(f"camera must be a renderers.Camera of batch size 1, got {got}")
    out = {k: float(getattr(camera, k)[0]) for k in ("fx", "fy", "cx", "cy")}
    return {**out, "width": camera.width, "height": camera.height}


def check_camera_matches(camera: Camera, depth: torch.Tensor) -> None:
    """Check that a camera belongs to a depth frame.

    Args:
        camera: batch-1 camera; depth: (H, W) or (..., H, W) frame.

    Raises:
        InputError: the camera's image size differs from the frame's (the message gives
            both sizes as W x H), or its principal point lies outside the image.
    """
    H, W = depth.shape[-2:]
    if (camera.height, camera.width) != (H, W):
        raise InputError(f"the camera intrinsics are for a {camera.width}x{camera.height} image "
                         f"but the depth frame is {W}x{H}")
    cx, cy = float(camera.cx[0]), float(camera.cy[0])
    if not (-0.5 <= cx <= W - 0.5 and -0.5 <= cy <= H - 0.5):
        raise InputError(f"the principal point ({cx:.1f}, {cy:.1f}) lies outside the {W}x{H} "
                         "image; are --cx/--cy for this image?")


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``frame2`` before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


# ----------------------------------------------------------------------------- colour views
def read_rgb(path) -> torch.Tensor:
    """Read a colour image as (3, H, W) float32 in [0, 1] (grey images are repeated, alpha dropped).

    Raises:
        InputError: a missing or unreadable file, or an image that is not 8- or 16-bit grey/RGB(A).
    """
    img = _read_image(path)
    if img.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: holds {img.dtype} values; expected an 8- or 16-bit colour image")
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] not in (3, 4):
        raise InputError(f"{path}: has {img.shape[2]} channels; expected RGB or RGBA")
    rgb = torch.from_numpy(np.ascontiguousarray(img[..., :3]).astype(np.float32) / np.float32(scale))
    return rgb.permute(2, 0, 1).contiguous()


def read_keypoints_2d(path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a view's 21 2D keypoints with their confidences from JSON.

    The format (one object, at most :data:`MAX_JSON_BYTES`)::

        {"keypoints_2d": [[u, v, c], ...],      # 21 rows, hands.KEYPOINT_NAMES order
         "names": ["wrist", ...]}                # optional; if given, must be KEYPOINT_NAMES

    ``u`` (column) and ``v`` (row) are pixels of the full image (OpenCV: pixel centres at
    integers), ``c`` a confidence >= 0 (e.g. a detector's score; 0 ignores the keypoint). A
    row may be ``null`` for a missing keypoint (NaN, confidence 0) and may be ``[u, v]``
    (confidence 1). The plain forms :func:`read_keypoints_json` reads (a list of ``[u, v]``
    rows, or ``{"keypoints": [...]}``) are accepted too, with confidence 1.

    Returns:
        keypoints (21, 2) px float32, NaN rows for missing ones; confidence (21,) float32.

    Raises:
        InputError: one line naming the file and the problem: missing, too big, invalid
            JSON, not 21 rows, a row that is not ``[u, v]`` / ``[u, v, c]`` / ``null``,
            non-numbers, non-finite values, a negative confidence, names other than
            ``hands.KEYPOINT_NAMES``, or no keypoint with a confidence > 0.
    """
    from hands import KEYPOINT_NAMES

    path = Path(path)
    doc = _read_json(path, "keypoint file", MAX_JSON_BYTES)
    K = len(KEYPOINT_NAMES)
    if isinstance(doc, dict):
        key = "keypoints_2d" if "keypoints_2d" in doc else "keypoints" if "keypoints" in doc else None
        if key is None:
            raise InputError(f"{path}: expected an object with a 'keypoints_2d' list of {K} [u, v, c] rows, "
                             f"got keys {sorted(doc)[:5]}")
        names = doc.get("names")
        if names is not None and (not isinstance(names, list) or names != list(KEYPOINT_NAMES)):
            raise InputError(f"{path}: 'names' must be the {K} hands.KEYPOINT_NAMES in order "
                             f"(wrist, thumb_cmc, ...), got {str(names)[:80]}")
        rows = doc[key]
    else:
        rows = doc
    if not isinstance(rows, list) or len(rows) != K:
        got = f"{len(rows)} rows" if isinstance(rows, list) else type(rows).__name__
        raise InputError(f"{path}: keypoints_2d must be a list of {K} [u, v, c] rows "
                         f"(hands.KEYPOINT_NAMES order), got {got}")
    uv = np.full((K, 2), np.nan, dtype=np.float32)
    conf = np.zeros(K, dtype=np.float32)
    for i, row in enumerate(rows):
        if row is None:
            continue
        if not isinstance(row, list) or len(row) not in (2, 3):
            raise InputError(f"{path}: keypoint {i} ({KEYPOINT_NAMES[i]}) must be [u, v], [u, v, c] or null, "
                             f"got {str(row)[:40]}")
        if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in row):
            raise InputError(f"{path}: keypoint {i} ({KEYPOINT_NAMES[i]}) must hold numbers, got {str(row)[:40]}")
        values = [float(v) for v in row]
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"{path}: keypoint {i} ({KEYPOINT_NAMES[i]}) holds NaN or infinity")
        c = values[2] if len(values) == 3 else 1.0
        if c < 0:
            raise InputError(f"{path}: keypoint {i} ({KEYPOINT_NAMES[i]}) has a negative confidence {c:g}")
        uv[i], conf[i] = values[:2], c
    if not (conf > 0).any():
        raise InputError(f"{path}: no keypoint has a position and a confidence > 0")
    return torch.from_numpy(uv), torch.from_numpy(conf)


#: The most views a rig file may hold, and the largest image side (px) of its cameras.
MAX_RIG_VIEWS = 64
MAX_IMAGE_SIDE = 65536
_VIEW_FILES = ("depth", "mask", "rgb", "keypoints")
_VIEW_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def read_rig(path):
    """Read a calibrated rig (:class:`fitting.Rig`) from JSON.

    The format (one object, at most :data:`MAX_JSON_BYTES`, at most :data:`MAX_RIG_VIEWS`
    views)::

        {"units": "mm",                                   # optional; only "mm"
         "views": [
           {"name": "left",                               # [A-Za-z0-9_.-], unique
            "camera": {"fx": 600, "fy": 600, "cx": 319.5, "cy": 239.5,
                       "width": 640, "height": 480},     # as a --camera file
            "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],       # world-to-camera rotation
            "t": [0, 0, 0],                               # world-to-camera translation, mm
            "mask": "left_mask.png", "rgb": "left.png",   # optional files of this view,
            "keypoints": "left_kp.json",                  # relative to the rig file
            "depth": "left_depth.png", "depth_scale": 1.0},
           ...]}

    ``x_cam = R x_world + t`` (OpenCV camera axes; OpenCV's ``R, tvec`` with ``tvec`` in mm).
    The hand is fitted in the world frame.

    Returns:
        a :class:`fitting.Rig` (its ``files`` hold the views' paths, resolved against the
        rig file's folder).

    Raises:
        InputError: one line naming the file and the problem: missing, too big, invalid
            JSON, no or too many views, a view without a valid name, camera, 3x3 ``R``
            (a rotation) or 3-vector ``t``, duplicate names, other units, file entries that
            are not strings.
    """
    from .observation import Rig

    path = Path(path)
    doc = _read_json(path, "rig file", MAX_JSON_BYTES)
    if not isinstance(doc, dict) or not isinstance(doc.get("views"), list):
        raise InputError(f"{path}: a rig file is an object with a 'views' list")
    if doc.get("units", "mm") != "mm":
        raise InputError(f"{path}: units must be 'mm' (R, t in millimetres), got {doc.get('units')!r}")
    views = doc["views"]
    if not views or len(views) > MAX_RIG_VIEWS:
        raise InputError(f"{path}: a rig has 1 to {MAX_RIG_VIEWS} views, this one {len(views)}")
    names, cameras, Rs, ts, files = [], [], [], [], []
    for i, view in enumerate(views):
        where = f"{path}: views[{i}]"
        if not isinstance(view, dict):
            raise InputError(f"{where} must be an object, got {type(view).__name__}")
        name = view.get("name", f"view{i}")
        if not isinstance(name, str) or not _VIEW_NAME.match(name):
            raise InputError(f"{where}: name must be 1-64 characters of A-Z a-z 0-9 _ . -, got {str(name)[:40]!r}")
        where = f"{path}: view {name!r}"
        if name in names:
            raise InputError(f"{path}: two views are named {name!r}")
        cam = view.get("camera")
        if not isinstance(cam, dict):
            raise InputError(f"{where}: needs a 'camera' object with fx, fy, cx, cy, width, height")
        for key in ("fx", "fy", "cx", "cy", "width", "height"):
            v = cam.get(key)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise InputError(f"{where}: camera {key} must be a number, got {v!r}")
        if not all(0 < cam[k] <= MAX_IMAGE_SIDE for k in ("width", "height")):
            raise InputError(f"{where}: camera width and height must be 1 to {MAX_IMAGE_SIDE} px, got "
                             f"{cam['width']!r} x {cam['height']!r}")
        try:
            w, h = (int(cam[k]) if float(cam[k]).is_integer() else cam[k] for k in ("width", "height"))
            camera = Camera(*(float(cam[k]) for k in ("fx", "fy", "cx", "cy")), w, h)
        except (ValueError, TypeError, OverflowError) as err:
            raise InputError(f"{where}: bad camera: {err}") from None
        R, t = view.get("R"), view.get("t")
        if not (isinstance(R, list) and len(R) == 3 and all(isinstance(r, list) and len(r) == 3 for r in R)
                and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for r in R for x in r)):
            raise InputError(f"{where}: R must be a 3x3 list of numbers (world-to-camera rotation)")
        if not (isinstance(t, list) and len(t) == 3
                and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in t)):
            raise InputError(f"{where}: t must be a list of 3 numbers (world-to-camera translation, mm)")
        entry = {}
        for key in _VIEW_FILES:
            if view.get(key) is not None:
                if not isinstance(view[key], str) or not view[key]:
                    raise InputError(f"{where}: {key} must be a file name, got {view[key]!r}")
                entry[key] = path.parent / view[key]
        if "depth_scale" in view:
            entry["depth_scale"] = _check_scale(view["depth_scale"])
        names.append(name)
        cameras.append(camera)
        Rs.append(torch.tensor(R, dtype=torch.float64))
        ts.append(torch.tensor(t, dtype=torch.float64))
        files.append(entry)
    try:
        return Rig(names, cameras, torch.stack(Rs), torch.stack(ts), files)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
