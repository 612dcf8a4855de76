"""Synthetic depth frames of the hand model with known truth (the demo and the tests)."""

from __future__ import annotations

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
