"""What a camera saw of a hand: one frame's depth (and optionally mask, RGB, keypoints)."""

from __future__ import annotations

import dataclasses

import torch

from hands import KEYPOINT_NAMES
from renderers import Camera

from .errors import InputError

__all__ = ["Observation", "Rig", "MultiViewObservation"]


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


@dataclasses.dataclass
class Observation:
    """One frame of one camera: depth and/or a mask and/or 2D keypoints (and optionally RGB).

    A depth frame is the classic input; a colour camera gives a mask (a segmentation), 2D
    keypoints (a detector) and RGB instead, and a view may carry any of them as long as it
    has something to fit to: depth, a mask or 2D keypoints. Views without depth are fitted
    by :meth:`fitting.Fitter.fit` through the multi-view path (:mod:`fitting.multiview`,
    one view with the identity extrinsics), the silhouette and keypoint energies only.

    Attributes:
        depth: optional (H, W) float, mm (z along the optical axis), 0 = no measurement.
            Integer tensors are converted to float32. None: a colour view.
        camera: the frame's :class:`renderers.Camera` (batch 1), image size W x H.
        mask: optional (H, W) bool, the hand (None with depth: segment it from the depth
            with :func:`fitting.preprocess.segment_hand`; None without depth: a
            keypoints-only view, no silhouette energy). Numeric masks become ``mask != 0``.
        rgb: optional (3, H, W) float in [0, 1] (uint8 tensors are divided by 255).
        keypoints_2d: optional (21, 2) px in this frame (u = column, v = row; OpenCV pixel
            centres at integers), ``hands.KEYPOINT_NAMES`` order, e.g. a 2D detector's output;
            NaN rows for missing keypoints. Fitted by the ``keypoints_2d`` energy.
        keypoints_3d: optional (21, 3) mm in this camera's coordinates, same order, NaN rows
            for missing ones. Fitted by the ``keypoints_3d`` energy and reported as
            ``FitResult.metrics["mpjpe_mm"]``.
        keypoint_confidence: optional (21,) non-negative weights of the keypoints in both
            keypoint energies (e.g. detector confidences; 0 ignores a keypoint).
        name: a label for logs and outputs.

    Raises:
        InputError: no depth, mask or 2D keypoints at all; depth that is not a 2-D tensor,
            has NaN / inf or negative values, or no valid pixel at all; a camera that is not
            a batch-1 Camera of the image's size; a mask, RGB image or keypoints of the wrong
            shape (an RGB image whose size differs from its camera), a mask without any hand
            pixel in a view without depth, RGB with NaN or inf, keypoints with inf, no finite
            2D keypoint in a view without depth or mask, confidences that are negative or not
            finite.
    """

    depth: torch.Tensor | None = None
    camera: Camera | None = None
    mask: torch.Tensor | None = None
    rgb: torch.Tensor | None = None
    keypoints_2d: torch.Tensor | None = None
    keypoints_3d: torch.Tensor | None = None
    keypoint_confidence: torch.Tensor | None = None
    name: str = "frame"

    def __post_init__(self) -> None:
        name = str(self.name)
        self.name = name
        if not isinstance(self.camera, Camera):
            raise InputError(f"{name}: camera must be a renderers.Camera, got {type(self.camera).__name__}")
        if self.camera.batch_size != 1:
            raise InputError(f"{name}: camera must have batch size 1, got {self.camera.batch_size}")
        H, W = self.camera.height, self.camera.width
        size = f"{W}x{H}"
        d = self.depth
        if d is None and self.mask is None and self.keypoints_2d is None:
            raise InputError(f"{name}: an observation needs depth, a mask or 2D keypoints to fit to; it has none")
        dtype = torch.float32
        if d is not None:
            if not isinstance(d, torch.Tensor) or d.ndim != 2:
                raise InputError(f"{name}: depth must be a 2-D (H, W) tensor of mm, got {_shape(d)}")
            if not d.is_floating_point():
                if d.dtype == torch.bool or d.is_complex():
                    raise InputError(f"{name}: depth must hold real numbers (mm), got dtype {d.dtype}")
                d = self.depth = d.float()
            if not bool(torch.isfinite(d).all()):
                raise InputError(f"{name}: depth must be finite (mm, 0 = no measurement); it holds NaN or inf")
            if bool((d < 0).any()):
                raise InputError(f"{name}: depth must be non-negative (mm, 0 = no measurement); "
                                 f"its minimum is {float(d.min()):g}")
            if not bool((d > 0).any()):
                raise InputError(f"{name}: the depth frame has no valid pixel (all zero)")
            if tuple(d.shape) != (H, W):
                raise InputError(
                    f"{name}: the camera intrinsics are for a {size} image "
                    f"but the depth frame is {d.shape[1]}x{d.shape[0]}"
                )
            dtype = d.dtype
        if self.mask is not None:
            m = self.mask
            if not isinstance(m, torch.Tensor) or m.ndim != 2:
                raise InputError(f"{name}: mask must be an (H, W) = {(H, W)} tensor, got {_shape(m)}")
            if tuple(m.shape) != (H, W):
                raise InputError(f"{name}: mask must be {size} like its camera's image, got "
                                 f"{m.shape[1]}x{m.shape[0]}")
            self.mask = m if m.dtype == torch.bool else m != 0
            if d is None and not bool(self.mask.any()):
                raise InputError(f"{name}: the mask has no hand pixel (all zero)")
        if self.rgb is not None:
            c = self.rgb
            if not isinstance(c, torch.Tensor) or c.ndim != 3 or c.shape[0] != 3:
                raise InputError(f"{name}: rgb must be a (3, H, W) = {(3, H, W)} tensor, got {_shape(c)}")
            if tuple(c.shape[1:]) != (H, W):
                raise InputError(f"{name}: the RGB image is {c.shape[2]}x{c.shape[1]} but its camera is for a "
                                 f"{size} image")
            if c.dtype == torch.uint8:
                c = c.float() / 255.0
            elif not c.is_floating_point():
                raise InputError(f"{name}: rgb must be float in [0, 1] or uint8, got dtype {c.dtype}")
            if not bool(torch.isfinite(c).all()):
                raise InputError(f"{name}: rgb holds NaN or inf")
            self.rgb = c
        K = len(KEYPOINT_NAMES)
        for field, dim, unit in (("keypoints_2d", 2, "px"), ("keypoints_3d", 3, "mm")):
            k = getattr(self, field)
            if k is None:
                continue
            if not isinstance(k, torch.Tensor) or tuple(k.shape) != (K, dim) or k.is_complex():
                raise InputError(f"{name}: {field} must be a ({K}, {dim}) tensor in {unit} "
                                 f"(hands.KEYPOINT_NAMES order), got {_shape(k)}")
            k = k.to(dtype)
            if bool(torch.isinf(k).any()):
                raise InputError(f"{name}: {field} hold inf (use NaN rows for missing keypoints)")
            setattr(self, field, k)
        c = self.keypoint_confidence
        if c is not None:
            if not isinstance(c, torch.Tensor) or tuple(c.shape) != (K,) or c.is_complex():
                raise InputError(f"{name}: keypoint_confidence must be a ({K},) tensor, got {_shape(c)}")
            c = c.to(dtype)
            if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
                raise InputError(f"{name}: keypoint_confidence must be finite and >= 0")
            self.keypoint_confidence = c
        if d is None and self.mask is None and self.keypoints_2d is not None:
            k, c = self.keypoints_2d, self.keypoint_confidence
            seen = torch.isfinite(k).all(-1) & (True if c is None else c > 0)
            if int(seen.sum()) < 2:
                raise InputError(f"{name}: a view with only 2D keypoints needs at least 2 of them with a position "
                                 f"and a confidence > 0, it has {int(seen.sum())}")

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels (the camera's image size)."""
        return (self.camera.height, self.camera.width)


def _rotation_matrix(R, name: str) -> torch.Tensor:
    """``R`` as a (3, 3) float64 rotation (orthonormal, det +1) or InputError."""
    if not isinstance(R, torch.Tensor) or tuple(R.shape) != (3, 3) or R.is_complex() or R.dtype == torch.bool:
        raise InputError(f"{name}: R must be a 3x3 rotation matrix, got {_shape(R)}")
    R = R.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(R).all()):
        raise InputError(f"{name}: R holds NaN or inf")
    err = float((R @ R.T - torch.eye(3, dtype=R.dtype)).abs().max())
    if err > 1e-3 or float(torch.linalg.det(R)) < 0:
        raise InputError(f"{name}: R is not a rotation (R R^T differs from I by {err:.2g}, det {float(torch.linalg.det(R)):.3g})")
    return R


@dataclasses.dataclass
class Rig:
    """A calibrated camera rig: per view a name, its intrinsics and its extrinsics.

    Extrinsics are world-to-camera: a world point ``X`` (mm) is ``x = R X + t`` in the view's
    OpenCV camera coordinates (x right, y down, z forward, mm), as OpenCV's ``solvePnP`` /
    ``stereoCalibrate`` give them. The world frame is the rig's (often the first camera's,
    ``R = I, t = 0``); fits from the rig are in it. :func:`fitting.io.read_rig` reads the
    JSON file.

    Attributes:
        names: V unique view names.
        cameras: V batch-1 :class:`renderers.Camera` (intrinsics, image size).
        rotation: (V, 3, 3) float64, world-to-camera rotations.
        translation: (V, 3) float64, world-to-camera translations, mm.
        files: V dicts of the files the rig file names per view (``depth``, ``mask``, ``rgb``,
            ``keypoints`` -> path; ``depth_scale`` -> mm per unit), possibly empty.

    Raises:
        InputError: no view, counts that disagree, duplicate names, a non-rotation, a
            non-finite translation, a camera that is not a batch-1 Camera.
    """

    names: tuple
    cameras: list
    rotation: torch.Tensor
    translation: torch.Tensor
    files: list = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.names = tuple(str(n) for n in self.names)
        V = len(self.names)
        if V == 0:
            raise InputError("the rig has no view")
        if len(set(self.names)) != V:
            raise InputError(f"the rig's view names must be unique, got {list(self.names)}")
        self.cameras = list(self.cameras)
        self.files = list(self.files) or [{} for _ in range(V)]
        if len(self.cameras) != V or len(self.files) != V:
            raise InputError(f"the rig has {V} names but {len(self.cameras)} cameras and {len(self.files)} file lists")
        for n, c in zip(self.names, self.cameras):
            if not isinstance(c, Camera) or c.batch_size != 1:
                raise InputError(f"rig view {n!r}: camera must be a batch-1 renderers.Camera")
        R = torch.as_tensor(self.rotation) if not isinstance(self.rotation, torch.Tensor) else self.rotation
        t = torch.as_tensor(self.translation) if not isinstance(self.translation, torch.Tensor) else self.translation
        if R.ndim != 3 or R.shape[0] != V or t.ndim != 2 or tuple(t.shape) != (V, 3):
            raise InputError(f"the rig needs (V, 3, 3) rotations and (V, 3) translations for its {V} views, got "
                             f"{_shape(R)} and {_shape(t)}")
        self.rotation = torch.stack([_rotation_matrix(R[v], f"rig view {n!r}") for v, n in enumerate(self.names)])
        t = t.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(t).all()):
            raise InputError("the rig's translations t must be finite (mm)")
        self.translation = t

    def __len__(self) -> int:
        return len(self.names)

    @property
    def centres_mm(self) -> torch.Tensor:
        """(V, 3) the camera centres in the world frame, mm: ``-R^T t``."""
        return -(self.rotation.transpose(1, 2) @ self.translation[..., None])[..., 0]

    def to_dict(self) -> dict:
        """The JSON object of the rig (no files), as :func:`fitting.io.read_rig` reads it."""
        views = []
        for v, (n, c) in enumerate(zip(self.names, self.cameras)):
            cam = {k: float(getattr(c, k)[0]) for k in ("fx", "fy", "cx", "cy")}
            views.append({"name": n, "camera": {**cam, "width": c.width, "height": c.height},
                          "R": self.rotation[v].tolist(), "t": self.translation[v].tolist()})
        return {"units": "mm", "extrinsics": "world-to-camera: x_cam = R x_world + t", "views": views}


@dataclasses.dataclass
class MultiViewObservation:
    """One moment seen by the V views of a calibrated :class:`Rig`.

    The hand is fitted in the rig's world frame; each view renders it through its own
    camera after ``x = R X + t``. Each view is an :class:`Observation` (depth and/or mask
    and/or 2D keypoints, optionally RGB) whose camera is the rig view's; the silhouette
    energy is averaged over the views with a mask (RealisticHands, Seeber et al., Eq. 8,
    the stereo silhouette loss, to V views), the depth and data-to-model energies over the
    views with depth, the 2D keypoint energy over the views with 2D keypoints
    (:mod:`fitting.multiview`).

    Attributes:
        rig: the :class:`Rig`.
        views: V :class:`Observation`, in the rig's order; each view's name must be the rig
            view's name and its camera the rig view's image size.
        keypoints_3d: optional (21, 3) mm in the world frame (e.g. ground truth, reported as
            ``metrics["mpjpe_mm"]``, and fitted by the ``keypoints_3d`` energy).
        name: a label for logs and outputs.

    Raises:
        InputError: the view count or names differ from the rig's, a view is not an
            Observation or its image size is not its rig camera's, bad ``keypoints_3d``.
    """

    rig: Rig
    views: list
    keypoints_3d: torch.Tensor | None = None
    name: str = "frame"

    def __post_init__(self) -> None:
        self.name = str(self.name)
        if not isinstance(self.rig, Rig):
            raise InputError(f"{self.name}: rig must be a fitting.Rig, got {type(self.rig).__name__}")
        views = list(self.views)
        if len(views) != len(self.rig):
            raise InputError(f"{self.name}: the rig has {len(self.rig)} views ({', '.join(self.rig.names)}) "
                             f"but {len(views)} observations were given")
        for v, (o, n, c) in enumerate(zip(views, self.rig.names, self.rig.cameras)):
            if not isinstance(o, Observation):
                raise InputError(f"{self.name}: views[{v}] must be a fitting.Observation, got {type(o).__name__}")
            if o.name != n:
                raise InputError(f"{self.name}: views[{v}] is named {o.name!r} but the rig's view {v} is {n!r}")
            if (o.camera.width, o.camera.height) != (c.width, c.height):
                raise InputError(f"{self.name}: view {n!r} is {o.camera.width}x{o.camera.height} but its rig camera "
                                 f"is for a {c.width}x{c.height} image")
        self.views = views
        k = self.keypoints_3d
        if k is not None:
            K = len(KEYPOINT_NAMES)
            if not isinstance(k, torch.Tensor) or tuple(k.shape) != (K, 3) or k.is_complex():
                raise InputError(f"{self.name}: keypoints_3d must be a ({K}, 3) tensor in mm (world frame), "
                                 f"got {_shape(k)}")
            if bool(torch.isinf(k).any()):
                raise InputError(f"{self.name}: keypoints_3d hold inf (use NaN rows for missing keypoints)")
            self.keypoints_3d = k.float() if not k.is_floating_point() else k
