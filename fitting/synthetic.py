"""Synthetic depth frames of the hand model with known truth (the demo and the tests)."""

from __future__ import annotations

import dataclasses
import math

import torch

from hands import HandModel
from renderers import Camera, RenderOutput

from .fitter import FitTarget

#: The SR305's intrinsics (``../shared/README.md``), used for synthetic frames by default.
SR305_CAMERA = dict(fx=476.007, fy=476.007, cx=313.683, cy=242.755, width=640, height=480)


def random_hand_parameters(model: HandModel, generator: torch.Generator, distance_mm: float = 450.0) -> dict:
    """A random plausible hand in front of the camera (batch of 1).

    Palm roughly towards the camera (global rotation within about 0.5 rad of the canonical
    view, any in-plane roll up to 0.6 rad), fingers flexed within the first 45 % of their
    range, small abductions, shape coefficients ~ N(0, 0.3), at ``distance_mm`` +- 40 mm.
    """
    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    p = model.neutral_parameters(1)
    p["global_orient"] = torch.stack([uniform(-0.5, 0.5), uniform(-0.5, 0.5), uniform(-0.6, 0.6)])[None]
    p["transl"] = torch.stack([uniform(-40, 40), uniform(-30, 30), distance_mm + uniform(-40, 40)])[None]
    lower, upper = model.dof_lower, model.dof_upper
    theta = uniform(0, 1, model.num_dofs) * 0.45 * upper + uniform(0, 1, model.num_dofs) * 0.3 * lower
    is_abd = torch.tensor(["_abd" in n for n in model.data.dof_names])
    theta = torch.where(is_abd, uniform(-0.15, 0.15, model.num_dofs), theta)
    p["theta"] = theta[None]
    p["beta"] = (torch.randn(model.num_shapes, generator=generator) * 0.3)[None]
    return p


def render_depth_frame(model: HandModel, renderer, params: dict, camera: Camera,
                       generator: torch.Generator, noise_mm: float = 1.5,
                       background_mm: float = 900.0, depth_unit_mm: float = 0.125,
                       dropout: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """A sensor-like depth frame (H, W) mm of the hand in front of a wall, and its true mask.

    Noise: Gaussian ``noise_mm``, a fraction ``dropout`` of hand pixels missing (0), depth
    quantised to ``depth_unit_mm`` (the SR305's 0.125 mm); the wall is a slanted plane at
    about ``background_mm``.
    """
    with torch.no_grad():
        out = model(**params)
        render = renderer(out.vertices, model.faces, camera)
    mask = render.mask[0]
    H, W = mask.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    wall = background_mm + 0.15 * (u - W / 2) + 0.1 * (v - H / 2)
    depth = torch.where(mask, render.depth[0], wall)
    depth = depth + noise_mm * torch.randn(depth.shape, generator=generator)
    holes = (torch.rand(depth.shape, generator=generator) < dropout) & mask
    depth = torch.where(holes, torch.zeros_like(depth), depth)
    depth = torch.round(depth / depth_unit_mm) * depth_unit_mm
    return depth, mask


def render_fit_target(model: HandModel, renderer, params: dict, camera: Camera,
                      generator: torch.Generator, n_points: int = 800) -> tuple[FitTarget, RenderOutput]:
    """A noise-free :class:`FitTarget` rendered from known parameters, and the render.

    The mask and depth are the renderer's hard coverage and depth; ``points`` are
    ``n_points`` random covered pixels unprojected at their rendered depth (mm, camera
    coordinates), as a segmented depth frame would give them.

    Args:
        params: the true parameters, dict of (B, ...) tensors; camera: batch B or 1.
        generator: chooses the points.

    Raises:
        ValueError: a frame whose hand covers no pixel.
    """
    with torch.no_grad():
        render = renderer(model(**params).vertices, model.faces, camera)
    B = render.mask.shape[0]
    camera = camera.expand(B) if camera.batch_size == 1 else camera
    points = []
    for b in range(B):
        v, u = torch.nonzero(render.mask[b], as_tuple=True)
        if v.numel() == 0:
            raise ValueError(f"frame {b}: the hand covers no pixel of the {camera.width}x{camera.height} image")
        sel = torch.randperm(len(v), generator=generator)[:n_points]
        sel = sel[torch.arange(n_points) % len(sel)]  # equal counts per frame
        uv = torch.stack([u[sel], v[sel]], -1).float()[None]
        points.append(camera[b].unproject(uv, render.depth[b][v[sel], u[sel]][None])[0])
    target = FitTarget(camera, render.mask.float(), render.depth, points=torch.stack(points))
    return target, render


def smooth_trajectory(start: dict, end: dict, n_frames: int) -> list[dict]:
    """``n_frames`` parameter sets moving smoothly from ``start`` to ``end`` (dicts of (1, ...)).

    Every parameter follows ``start + (end - start) * s(t)`` with the smooth ease
    ``s(t) = (1 - cos(pi t)) / 2`` over ``t`` in [0, 1] (zero velocity at both ends), so the
    true keypoints accelerate gently (the jitter of the truth is small but not 0).
    Parameters missing from either dict are taken from the other.
    """
    import math

    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    keys = set(start) | set(end)
    out = []
    for i in range(n_frames):
        t = i / max(n_frames - 1, 1)
        s = (1 - math.cos(math.pi * t)) / 2
        out.append({k: start.get(k, end.get(k)) + (end.get(k, start.get(k)) - start.get(k, end.get(k))) * s
                    for k in keys})
    return out


def write_depth_png(path, depth_mm: torch.Tensor, depth_unit_mm: float = 0.125) -> None:
    """Write (H, W) mm as a 16-bit PNG of ``depth_unit_mm`` units (0 stays 0), like the SR305's."""
    import imageio.v3 as iio
    import numpy as np

    units = torch.round(depth_mm / depth_unit_mm).clamp(0, 65535).to(torch.int32).numpy().astype(np.uint16)
    iio.imwrite(path, units)


def synthetic_sequence(model: HandModel, renderer, camera: Camera, n_frames: int, generator: torch.Generator,
                       period: int = 60, jump_at: int | None = None, noise_mm: float = 1.5):
    """A contiguous noisy depth sequence of a moving hand with known truth (30 fps-like motion).

    A random hand (:func:`random_hand_parameters`) moves back and forth: every parameter
    follows ``start + delta (1 - cos(2 pi t / period)) / 2`` with ``delta`` = 30 mm of
    translation, 0.3 rad of global rotation and 0.3 rad on every joint angle, so the hand
    moves at most about 1.6 mm and 0.016 rad per frame with ``period = 60`` (2 s at 30 fps).
    From frame ``jump_at`` on, the hand is displaced by 60 mm and rolled by 0.7 rad (a sudden
    jump, as after dropped frames or a fast turn).

    Args:
        model, renderer: the hand and the renderer of the frames (e.g. the exact
            :class:`renderers.HybridRenderer`); camera: the sensor's full-frame camera.
        n_frames: T >= 1; generator: the hand, the noise; period: frames per oscillation;
        jump_at: optional frame index of the jump; noise_mm: see :func:`render_depth_frame`.

    Returns:
        ``(depths, params, keypoints)``: T depth maps (H, W) mm, T parameter dicts of (1, ...)
        tensors, and the true keypoints (T, 21, 3) mm.

    Raises:
        ValueError: ``n_frames`` < 1 or ``period`` < 2.
    """
    import math

    if n_frames < 1 or period < 2:
        raise ValueError(f"n_frames must be >= 1 and period >= 2, got {n_frames} and {period}")
    start = random_hand_parameters(model, generator)
    delta = {"transl": torch.tensor([[30.0, -20.0, 15.0]]), "global_orient": torch.full((1, 3), 0.3),
             "theta": torch.full_like(start["theta"], 0.3)}
    depths, params, keypoints = [], [], []
    for i in range(n_frames):
        s = (1.0 - math.cos(2.0 * math.pi * i / period)) / 2.0
        p = {k: v + s * delta[k] if k in delta else v.clone() for k, v in start.items()}
        if jump_at is not None and i >= jump_at:
            p["transl"] = p["transl"] + torch.tensor([[-60.0, 10.0, 0.0]])
            p["global_orient"] = p["global_orient"] + torch.tensor([[0.0, 0.0, 0.7]])
        p["theta"] = model.clamp_theta(p["theta"])
        depth, _ = render_depth_frame(model, renderer, p, camera, generator, noise_mm=noise_mm)
        with torch.no_grad():
            keypoints.append(model(**p).keypoints[0])
        depths.append(depth)
        params.append(p)
    return depths, params, torch.stack(keypoints)


# ----------------------------------------------------------------------------- egocentric scenes
#: Borders a forearm may enter an egocentric frame from, with the image direction (du, dv)
#: that points from that border into the image.
#: Roll (degrees) of the hand about its fingers' axis in :func:`egocentric_frame` (+-20 %):
#: the thumb side turned up towards the camera, as a hand holds a container.
ROLL_DEG = 35.0
#: Where the held object sits (mm): behind the back of the hand (towards the palm), along
#: the fingers, towards the camera, from the centre of the four finger MCP joints.
GRIP_MM = (25.0, 20.0, 30.0)
#: The fingers' flexion in the grip, as fractions of their upper limits (a loose grip).
GRIP_FLEXION = (0.1, 0.35)
BORDERS = {"bottom": (0.0, -1.0), "top": (0.0, 1.0), "left": (1.0, 0.0), "right": (-1.0, 0.0)}


def _rays(camera: Camera, dtype=torch.float32) -> torch.Tensor:
    """(H, W, 3) viewing rays with z = 1 through the pixel centres (OpenCV: centres at
    integers), so a ray parameter ``t`` is the z-depth in mm."""
    H, W = camera.height, camera.width
    v, u = torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype), indexing="ij")
    fx, fy, cx, cy = (float(x[0]) for x in (camera.fx, camera.fy, camera.cx, camera.cy))
    return torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1)


def _no_hit(rays: torch.Tensor) -> torch.Tensor:
    return torch.full(rays.shape[:-1], float("inf"), dtype=rays.dtype)


def ray_cast_plane(rays: torch.Tensor, point: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """z-depth (H, W) mm where rays (H, W, 3) from the origin (z = 1) meet the plane through
    ``point`` (3,) mm with ``normal`` (3,); inf where they miss (parallel or behind)."""
    denom = rays @ normal
    t = (point @ normal) / torch.where(denom.abs() > 1e-9, denom, torch.full_like(denom, 1e-9))
    return torch.where(t > 0, t, _no_hit(rays))


def ray_cast_cylinder(rays: torch.Tensor, centre: torch.Tensor, axis: torch.Tensor, half_length: float,
                      radii: tuple[float, float], across: torch.Tensor | None = None) -> torch.Tensor:
    """z-depth (H, W) mm of the nearest hit of rays (H, W, 3) from the origin (z = 1) with a
    capped elliptic cylinder; inf where they miss.

    The cylinder has its centre (3,) mm, unit ``axis`` (3,), ``half_length`` mm along it and
    semi-axes ``radii`` = (r1, r2) mm along ``across`` (3,) (a unit vector perpendicular to
    the axis; default any) and ``axis x across``. Solved analytically: in the cylinder's
    frame scaled by 1/r1, 1/r2 the mantle is the unit circle (a quadratic in t), the caps
    are two planes.
    """
    axis = axis / axis.norm()
    if across is None:
        helper = torch.tensor([1.0, 0.0, 0.0], dtype=axis.dtype)
        if float(helper @ axis).__abs__() > 0.9:
            helper = torch.tensor([0.0, 1.0, 0.0], dtype=axis.dtype)
        across = torch.linalg.cross(axis, helper)
    e1 = across - (across @ axis) * axis
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(axis, e1)
    r1, r2 = radii
    # local coordinates of the ray origin (relative to the centre) and direction
    o = -centre
    o_l = torch.stack([o @ e1 / r1, o @ e2 / r2, o @ axis])
    d_l = torch.stack([rays @ e1 / r1, rays @ e2 / r2, rays @ axis], -1)
    A = d_l[..., 0] ** 2 + d_l[..., 1] ** 2
    B = 2 * (o_l[0] * d_l[..., 0] + o_l[1] * d_l[..., 1])
    C = o_l[0] ** 2 + o_l[1] ** 2 - 1.0
    disc = B * B - 4 * A * C
    root = disc.clamp(min=0).sqrt()
    best = _no_hit(rays)
    for t in ((-B - root) / (2 * A.clamp(min=1e-12)), (-B + root) / (2 * A.clamp(min=1e-12))):
        along = o_l[2] + t * d_l[..., 2]
        ok = (disc >= 0) & (t > 0) & (along.abs() <= half_length)
        best = torch.where(ok & (t < best), t, best)
    for sign in (-1.0, 1.0):
        dz = d_l[..., 2]
        t = (sign * half_length - o_l[2]) / torch.where(dz.abs() > 1e-12, dz, torch.full_like(dz, 1e-12))
        x = o_l[0] + t * d_l[..., 0]
        y = o_l[1] + t * d_l[..., 1]
        ok = (t > 0) & (x * x + y * y <= 1.0)
        best = torch.where(ok & (t < best), t, best)
    return best


@dataclasses.dataclass
class EgocentricFrame:
    """A synthetic egocentric depth frame with its truth (see :func:`egocentric_frame`).

    Attributes:
        depth: (H, W) mm, the sensor-like frame (0 = no measurement).
        hand_mask: (H, W) bool, the hand's visible pixels (not hidden by the held object).
        params: the hand's true parameters (dict of (1, ...) tensors).
        keypoints: (21, 3) mm, the true keypoints (camera coordinates).
        wrist_mm: (3,) mm, the true wrist (keypoint 0); ``wrist_uv`` (2,) its pixel (col, row).
        border: where the forearm enters ('bottom', 'top', 'left' or 'right').
        object_mask: (H, W) bool, the held object's visible pixels (all False without one).
        occluded_fraction: the part of the hand's rendered pixels that the held object hides.
        camera: the frame's camera.
    """

    depth: torch.Tensor
    hand_mask: torch.Tensor
    params: dict
    keypoints: torch.Tensor
    wrist_mm: torch.Tensor
    wrist_uv: torch.Tensor
    border: str
    object_mask: torch.Tensor
    occluded_fraction: float
    camera: Camera


def egocentric_frame(model: HandModel, renderer, generator: torch.Generator, border: str = "bottom",
                     held_object: str | None = "cylinder", distractor: bool = True, table: bool = True,
                     camera: Camera | None = None, wrist_depth_mm: float = 330.0, noise_mm: float = 1.5,
                     dropout: float = 0.02, depth_unit_mm: float = 0.125) -> EgocentricFrame:
    """A head-mounted (egocentric) depth frame of a right hand with known truth.

    The camera is above and behind the wrist, looking down the forearm: the fingers point
    from the ``border`` into the image and about 30 degrees away from the camera, the back
    of the hand faces the camera, rolled by :data:`ROLL_DEG` about the fingers' axis, the
    fingers are flexed into a loose grip (MCP, PIP and DIP at :data:`GRIP_FLEXION` of their
    upper limits; the thumb at 10-40 %). The scene:

    - the forearm: an elliptic cylinder (semi-axes 27 x 18 mm, the model's wrist section)
      from the wrist to beyond the ``border``, tilted 15 degrees towards the camera;
    - ``held_object`` ``"cylinder"`` (a small container: radius 25 mm, 80 mm long, its axis
      across the palm) or ``"box"`` (70 x 40 x 40 mm) in the grip (:data:`GRIP_MM`), where it touches the
      hand and hides part of the curled fingers; None for none;
    - ``table``: a plane 110 mm below the palm, parallel to the unrolled back of the hand;
    - ``distractor``: a jar (radius 40 mm, 140 mm tall) on the table, about 170 mm beyond
      the hand and 120-170 mm to its side;
    - sensor noise: Gaussian ``noise_mm``, a fraction ``dropout`` of pixels unmeasured,
      depth quantised to ``depth_unit_mm``.

    The hand is rendered with ``renderer`` (its hard mask and depth); the rest is ray cast
    analytically (:func:`ray_cast_cylinder`, :func:`ray_cast_plane`) and the nearest surface
    wins.

    Args:
        model: the hand model; renderer: a renderer (e.g. :class:`renderers.HybridRenderer`).
        generator: the random source (pose, shape, placement, noise).
        border: 'bottom', 'top', 'left' or 'right'.
        camera: the frame's camera (default the SR305's, 640 x 480).
        wrist_depth_mm: the wrist's distance (z, mm), +- 30 mm.

    Returns:
        an :class:`EgocentricFrame`.

    Raises:
        ValueError: an unknown ``border`` or ``held_object``.
    """
    import math

    if border not in BORDERS:
        raise ValueError(f"border must be one of {sorted(BORDERS)}, got {border!r}")
    if held_object not in (None, "cylinder", "box"):
        raise ValueError(f"held_object must be 'cylinder', 'box' or None, got {held_object!r}")
    camera = camera or Camera(**SR305_CAMERA)

    def uniform(lo, hi):
        return float(lo + (hi - lo) * torch.rand((), generator=generator))

    def unit(x):
        return x / x.norm()

    # the hand's frame: fingers f (canonical -y), back of the hand b (canonical +z)
    eu, ev = BORDERS[border]
    f = unit(torch.tensor([eu, ev, 0.58]))
    b = unit(torch.tensor([0.0, 0.0, -1.0]) - f[2] * f)
    up = b  # the table's normal: the back of the hand before the roll
    roll = math.radians(ROLL_DEG * uniform(0.8, 1.2))
    side = torch.linalg.cross(f, b)
    b = unit(math.cos(roll) * b + math.sin(roll) * side)
    col_y, col_z = -f, b
    col_x = torch.linalg.cross(col_y, col_z)
    R = torch.stack([col_x, col_y, col_z], 1)
    from pytorch3d.transforms import matrix_to_axis_angle

    p = model.neutral_parameters(1)
    p = {k: v.to(torch.float32) for k, v in p.items()}
    p["global_orient"] = matrix_to_axis_angle(R[None])
    names = model.data.dof_names
    lower, upper = model.dof_lower.float(), model.dof_upper.float()
    theta = torch.zeros(model.num_dofs)
    for i, n in enumerate(names):
        if n.startswith("thumb"):
            theta[i] = uniform(0.1, 0.4) * (upper[i] if "flex" in n else 0.5 * upper[i])
        elif "_abd" in n:
            theta[i] = uniform(-0.1, 0.1)
        else:
            theta[i] = uniform(*GRIP_FLEXION) * upper[i]
    p["theta"] = theta[None]
    p["beta"] = (torch.randn(model.num_shapes, generator=generator) * 0.3)[None]
    with torch.no_grad():
        wrist0 = model(**p).keypoints[0, 0]
    # the wrist: a little off the image centre towards the border, at wrist_depth_mm
    z = wrist_depth_mm + uniform(-30, 30)
    cx, cy = float(camera.cx[0]), float(camera.cy[0])
    u = cx - eu * 0.12 * camera.width + uniform(-20, 20)
    v = cy - ev * 0.12 * camera.height + uniform(-20, 20)
    wrist = torch.tensor([(u - cx) / float(camera.fx[0]) * z, (v - cy) / float(camera.fy[0]) * z, z])
    p["transl"] = (wrist - wrist0)[None]
    with torch.no_grad():
        out = model(**p)
        render = renderer(out.vertices, model.faces, camera)
    hand_depth = torch.where(render.mask[0], render.depth[0].float(), torch.full_like(render.depth[0].float(), math.inf))
    keypoints = out.keypoints[0].float()

    rays = _rays(camera)
    far = _no_hit(rays)
    # forearm: from the wrist towards the border, tilted 15 degrees towards the camera
    toward_cam = unit(torch.tensor([0.0, 0.0, -1.0]) - (torch.tensor([0.0, 0.0, -1.0]) @ f) * f)
    a = unit(math.cos(math.radians(15)) * (-f) + math.sin(math.radians(15)) * toward_cam)
    forearm_len = 600.0
    # its near cap where the hand's mesh ends (about 4 mm beyond the wrist joint), its
    # cross-section the model's wrist's (about 54 x 36 mm), so the forearm hides no hand
    forearm = ray_cast_cylinder(rays, wrist + a * (forearm_len / 2 + 4.0), a, forearm_len / 2, (27.0, 18.0),
                                across=col_x)
    scene = torch.minimum(far, forearm)
    palm = keypoints[[5, 9, 13, 17]].mean(0)
    obj = far
    if held_object is not None:
        grip = palm - b * GRIP_MM[0] + f * GRIP_MM[1] + toward_cam * GRIP_MM[2]
        if held_object == "cylinder":
            obj = ray_cast_cylinder(rays, grip, col_x, 40.0, (25.0, 25.0))
        else:
            obj = _ray_cast_box(rays, grip, (col_x, b, f), (35.0, 20.0, 20.0))
    if table:
        scene = torch.minimum(scene, ray_cast_plane(rays, palm - up * 110.0, up))
    if distractor:
        jar_base = palm - up * 110.0 + f * 170.0 + side * uniform(120, 170) * (1 if uniform(0, 1) < 0.5 else -1)
        scene = torch.minimum(scene, ray_cast_cylinder(rays, jar_base + up * 70.0, up, 70.0, (40.0, 40.0)))
    scene = torch.minimum(scene, obj)
    hand_visible = render.mask[0] & (hand_depth <= scene)
    object_visible = torch.isfinite(obj) & (obj <= torch.minimum(hand_depth, scene)) if held_object else \
        torch.zeros_like(hand_visible)
    depth = torch.minimum(hand_depth, scene)
    depth = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
    depth = torch.where(depth > 0, depth + noise_mm * torch.randn(depth.shape, generator=generator), depth)
    holes = torch.rand(depth.shape, generator=generator) < dropout
    depth = torch.where(holes, torch.zeros_like(depth), depth)
    depth = (torch.round(depth / depth_unit_mm) * depth_unit_mm).clamp(min=0)
    hidden = render.mask[0] & ~hand_visible & (obj < hand_depth)
    occluded = float(hidden.sum()) / max(int(render.mask[0].sum()), 1)
    wrist_uv = camera.project(wrist[None, None].to(camera.fx.dtype))[0, 0].float()
    return EgocentricFrame(depth=depth, hand_mask=hand_visible, params=p, keypoints=keypoints, wrist_mm=wrist,
                           wrist_uv=wrist_uv, border=border, object_mask=object_visible,
                           occluded_fraction=occluded, camera=camera)


def _ray_cast_box(rays: torch.Tensor, centre: torch.Tensor, axes: tuple, half: tuple) -> torch.Tensor:
    """z-depth (H, W) mm of rays (H, W, 3) from the origin meeting an oriented box (slab
    method): ``centre`` (3,) mm, three orthogonal unit ``axes``, ``half`` extents mm."""
    t_near = torch.full(rays.shape[:-1], -float("inf"), dtype=rays.dtype)
    t_far = torch.full(rays.shape[:-1], float("inf"), dtype=rays.dtype)
    for axis, h in zip(axes, half):
        d = rays @ axis
        c = float(centre @ axis)
        d_safe = torch.where(d.abs() > 1e-12, d, torch.full_like(d, 1e-12))
        t1, t2 = (c - h) / d_safe, (c + h) / d_safe
        t_near = torch.maximum(t_near, torch.minimum(t1, t2))
        t_far = torch.minimum(t_far, torch.maximum(t1, t2))
    hit = (t_near <= t_far) & (t_near > 0)
    return torch.where(hit, t_near, _no_hit(rays))


# ----------------------------------------------------------------------------- calibrated rigs
def look_at_rig(centre_mm, azimuths_deg, distance_mm: float = 450.0, size: int = 64, focal: float | None = None,
                names=None):
    """A :class:`fitting.Rig` of V cameras on a horizontal circle around ``centre_mm``, each looking at it.

    View ``v`` sits at ``centre + distance (sin a, 0, -cos a)`` for azimuth ``a`` (degrees
    about the world's ``y`` axis, which points down in every view): azimuth 0 is a camera
    on the world's ``-z`` side, at the origin's side when ``centre`` is in front of it, with
    ``R = I``; 90 looks at the hand from the ``+x`` side. ``y`` stays down in every view.

    Args:
        centre_mm: (3,) mm, world frame: the point every camera looks at.
        azimuths_deg: V azimuths (degrees).
        distance_mm: camera-to-centre distance (mm).
        size: square image side (px); focal: px (default: a 300 mm wide field at the distance).
        names: V view names (default ``cam0``, ``cam1``, ...).
    """
    import math

    from .observation import Rig

    c = torch.as_tensor(centre_mm, dtype=torch.float64)
    focal = focal or size * distance_mm / 300.0
    Rs, ts = [], []
    for a in azimuths_deg:
        a = math.radians(a)
        z_axis = torch.tensor([-math.sin(a), 0.0, math.cos(a)], dtype=torch.float64)  # towards the centre
        y_axis = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        x_axis = torch.linalg.cross(y_axis, z_axis)
        R = torch.stack([x_axis, y_axis, z_axis])  # rows: the camera's axes in the world frame
        position = c - distance_mm * z_axis
        Rs.append(R)
        ts.append(-R @ position)
    names = list(names or [f"cam{v}" for v in range(len(Rs))])
    cams = [Camera(focal, focal, (size - 1) / 2, (size - 1) / 2, size, size) for _ in Rs]
    return Rig(names, cams, torch.stack(Rs), torch.stack(ts))


def render_views(model: HandModel, renderer, params: dict, rig, depth: bool = False, mask: bool = True,
                 keypoints: bool = False, name: str = "synthetic"):
    """A noise-free :class:`fitting.MultiViewObservation` of a hand in the rig's world frame.

    Each view gets the renderer's hard coverage as its mask (``mask``), its rendered depth
    (``depth``; mm, 0 off the hand) and the true keypoints' projections (``keypoints``, px,
    confidence 1); the true world keypoints are the observation's ``keypoints_3d``.

    Args:
        params: dict of (1, ...) tensors, the hand in the world frame; rig: a :class:`fitting.Rig`.
        depth, mask, keypoints: which data every view carries (one at least).

    Raises:
        InputError: a view in which the hand covers no pixel (while it carries a mask).
    """
    from .observation import MultiViewObservation, Observation

    with torch.no_grad():
        out = model(**params)
    views = []
    for v, (vname, cam) in enumerate(zip(rig.names, rig.cameras)):
        R, t = rig.rotation[v].to(out.vertices), rig.translation[v].to(out.vertices)
        verts = out.vertices @ R.T + t
        kp = out.keypoints @ R.T + t
        with torch.no_grad():
            r = renderer(verts, model.faces, cam.to(dtype=verts.dtype))
        views.append(Observation(depth=r.depth[0] if depth else None, camera=cam,
                                 mask=r.mask[0] if mask else None,
                                 keypoints_2d=cam.to(dtype=kp.dtype).project(kp)[0] if keypoints else None,
                                 name=vname))
    return MultiViewObservation(rig, views, keypoints_3d=out.keypoints[0].detach(), name=name)


# ----------------------------------------------------------------------------- textured views
def uv_pattern(size: int, cycles: float = 4.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """A known coloured test texture, (3, size, size) in [0.1, 0.9], row 0 at ``v = 1``.

    Smooth stripes in three directions: red ``0.5 + 0.4 sin(2 pi c u)``, green
    ``0.5 + 0.4 sin(2 pi c v)``, blue ``0.5 + 0.4 cos(2 pi c (u + v) / 2)`` (``c = cycles``
    across the square), so every texel's colour tells where it is in the atlas.
    """
    t = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size
    v, u = torch.meshgrid(1 - t, t, indexing="ij")
    c = 2 * math.pi * cycles
    return torch.stack([0.5 + 0.4 * torch.sin(c * u), 0.5 + 0.4 * torch.sin(c * v),
                        0.5 + 0.4 * torch.cos(c * (u + v) / 2)])


def orbit_views(vertices: torch.Tensor, angles_deg, axis: str = "y", centre: torch.Tensor | None = None) -> torch.Tensor:
    """The mesh as seen by cameras orbiting it: one copy turned about ``centre`` per angle.

    View ``k`` holds ``R_k (v - c) + c`` with ``R_k`` the rotation by ``angles_deg[k]`` about the
    camera's ``axis`` (``"x"`` or ``"y"``) through ``c`` (default: the vertices' mean), which is
    the mesh in the coordinates of a camera moved the other way round it (OpenCV axes, mm).

    Args:
        vertices: (V, 3) or (1, V, 3) mm; angles_deg: K angles in degrees.

    Returns:
        (K, V, 3) mm.
    """
    v = vertices[0] if vertices.dim() == 3 else vertices
    c = v.mean(0) if centre is None else centre
    out = []
    for a in angles_deg:
        r = math.radians(float(a))
        cos, sin = math.cos(r), math.sin(r)
        if axis == "y":
            R = [[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]]
        elif axis == "x":
            R = [[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]]
        else:
            raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
        R = torch.tensor(R, dtype=v.dtype, device=v.device)
        out.append((v - c) @ R.T + c)
    return torch.stack(out)


def render_textured(vertices: torch.Tensor, faces: torch.Tensor, uv: torch.Tensor, face_uvs: torch.Tensor,
                    texture: torch.Tensor, camera: Camera, background=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """RGB renders of a textured mesh with PyTorch3D (``TexturesUV``, ambient light only).

    ``MeshRenderer(MeshRasterizer, HardPhongShader)`` with ``AmbientLights`` of colour 1, so a
    pixel's colour is the texture at its surface point (PyTorch3D's bilinear lookup), through
    :meth:`renderers.PyTorch3DRenderer.to_pytorch3d_cameras` (OpenCV axes and pixel centres).

    Args:
        vertices: (B, V, 3) mm, camera coordinates; faces: (F, 3) long; uv: (T, 2) in [0, 1]
            (``v`` up) and face_uvs: (F, 3) long, e.g. a :class:`fitting.uv_atlas.UVAtlas`'s;
            texture: (3, S, S) in [0, 1], row 0 at ``v = 1``; camera: batch 1 or B;
            background: the colour of empty pixels.

    Returns:
        (B, 3, H, W) float32 in [0, 1], on ``vertices``' device.
    """
    from pytorch3d.renderer import (AmbientLights, BlendParams, HardPhongShader, MeshRasterizer, MeshRenderer,
                                    RasterizationSettings, TexturesUV)
    from pytorch3d.structures import Meshes

    from renderers import PyTorch3DRenderer

    device = vertices.device
    B = vertices.shape[0]
    cameras = PyTorch3DRenderer.to_pytorch3d_cameras(camera.expand(B) if camera.batch_size == 1 else camera,
                                                     device=device)
    maps = texture.to(device=device, dtype=torch.float32).permute(1, 2, 0)[None].expand(B, -1, -1, -1)
    textures = TexturesUV(maps=maps, faces_uvs=face_uvs.to(device)[None].expand(B, -1, -1),
                          verts_uvs=uv.to(device=device, dtype=torch.float32)[None].expand(B, -1, -1))
    meshes = Meshes(verts=vertices.float(), faces=faces.to(device)[None].expand(B, -1, -1), textures=textures)
    settings = RasterizationSettings(image_size=(camera.height, camera.width), blur_radius=0.0, faces_per_pixel=1,
                                     bin_size=0 if device.type == "cpu" else None)
    shader = HardPhongShader(device=device, cameras=cameras, lights=AmbientLights(device=device),
                             blend_params=BlendParams(background_color=tuple(background)))
    images = MeshRenderer(MeshRasterizer(cameras, settings), shader)(meshes)
    return images[..., :3].permute(0, 3, 1, 2).clamp(0, 1)
