"""Energies as residuals (E_k = ||r_k||^2, term by term) and their forward-mode Jacobians."""

import copy
import dataclasses

import pytest
import torch

from fitting import FitConfig, Fitter
from fitting.synthetic import random_hand_parameters, render_fit_target
from losses import (depth_loss, depth_residuals, point_to_vertex_loss, point_to_vertex_residuals,
                    smooth_l1_residual)
from renderers import Camera, HybridRenderer

SIZE = 48


def crop_camera(size=SIZE):
    f = size * 450.0 / 220.0
    return Camera(fx=f, fy=f, cx=size / 2 - 0.5, cy=size / 2 - 0.5, width=size, height=size)


def frame(hand_model, dtype, seed=3, keypoints=True):
    """A synthetic target (float64) and a start off the truth, with every data term present."""
    g = torch.Generator().manual_seed(seed)
    truth = random_hand_parameters(hand_model, g)
    truth = {k: v.to(hand_model.v_template.dtype) for k, v in truth.items()}
    truth["transl"] = torch.tensor([[0.0, 0.0, 450.0]], dtype=hand_model.v_template.dtype)
    target, _ = render_fit_target(hand_model, HybridRenderer(), truth, crop_camera(), g, n_points=200)
    kp = hand_model(**truth).keypoints.detach()
    to = dict(dtype=dtype)
    target = dataclasses.replace(
        target, camera=target.camera.to(**to), mask=target.mask.to(**to), depth=target.depth.to(**to),
        points=target.points.to(**to))
    if keypoints:
        kp_missing = kp.clone()
        kp_missing[:, 3] = float("nan")
        target = dataclasses.replace(
            target, keypoints_3d=(kp_missing + 3.0).to(**to),
            keypoints_2d=target.camera.project(kp.to(**to)) + 1.5,
            keypoint_weights=torch.linspace(0.2, 1.0, 21, dtype=dtype)[None],
            previous_keypoints=torch.stack([kp - 2.0, kp - 1.0], 1).to(**to))
    start = {k: v.to(dtype) for k, v in truth.items()}
    start["theta"] = start["theta"] + 0.1 * torch.randn(start["theta"].shape, generator=g, dtype=dtype)
    start["theta"][0, 0] = hand_model.dof_upper[0] + 0.2  # a joint past its limit
    start["transl"] = start["transl"] + torch.tensor([[4.0, -3.0, 25.0]], dtype=dtype)  # depth residuals > beta
    start["alpha"] = start["alpha"] + 0.05
    start["offsets"] = 0.3 * torch.randn(start["offsets"].shape, generator=g, dtype=dtype)
    return target, start


ALL_WEIGHTS = dict(penetration=2e-3, collision=1e-3)


@pytest.fixture(scope="module")
def model64(hand_model):
    return copy.deepcopy(hand_model).to(torch.float64)  # Module.to works in place: copy the shared one


def test_smooth_l1_residual_squares_to_the_smooth_l1_cost():
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    for beta in (0.0, 1.0, 10.0):
        ref = torch.nn.functional.smooth_l1_loss(x, torch.zeros_like(x), beta=beta, reduction="none")
        torch.testing.assert_close(smooth_l1_residual(x, beta) ** 2, ref)
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_residual(x, -1.0)


def test_depth_and_point_residuals_reproduce_their_energies_with_missing_and_nan_depth():
    g = torch.Generator().manual_seed(0)
    pred = 500 + 30 * torch.rand(2, 8, 8, generator=g, dtype=torch.float64)
    target = 500 + 30 * torch.rand(2, 8, 8, generator=g, dtype=torch.float64)
    pred[0, :2] = 0.0
    target[1, 3] = float("nan")
    target[1, 4] = 0.0
    r = depth_residuals(pred, target, beta=10.0)
    assert r.shape == (2, 64) and torch.isfinite(r).all()
    torch.testing.assert_close((r ** 2).sum(-1), depth_loss(pred, target, beta=10.0))
    points = torch.randn(2, 30, 3, generator=g, dtype=torch.float64) * 20
    verts = torch.randn(2, 50, 3, generator=g, dtype=torch.float64) * 20
    lengths = torch.tensor([30, 17])
    r = point_to_vertex_residuals(points, verts, lengths)
    torch.testing.assert_close((r ** 2).sum(-1), point_to_vertex_loss(points, verts, lengths))
    with pytest.raises(ValueError, match="nearest"):
        point_to_vertex_residuals(points, verts, lengths, nearest=torch.zeros(2, 3, dtype=torch.long))


def test_every_energy_term_is_the_squared_norm_of_its_residuals(model64):
    fitter = Fitter(model64, "soft", config=FitConfig(weights=ALL_WEIGHTS))
    target, params = frame(model64, torch.float64)
    params["theta"][0, 5] -= 1.0  # curl a finger into the palm: penetration and collision > 0
    with torch.no_grad():
        energies, _, _ = fitter.energy_terms(params, target, True, {"sigma_px": 0.25})
        residuals, _, _ = fitter.residual_terms(params, target, True, {"sigma_px": 0.25})
    assert set(residuals) == set(energies)
    for name in ("silhouette", "depth", "points", "joint_limits", "temporal", "keypoints_3d", "keypoints_2d",
                 "penetration", "offset"):
        assert name in energies and float(energies[name]) > 0, name  # every term is tested on a nonzero value
    for name, e in energies.items():
        r = residuals[name]
        assert r.ndim == 2 and r.shape[0] == 1 and r.dtype == torch.float64, name
        torch.testing.assert_close((r ** 2).sum(-1), e, rtol=1e-10, atol=1e-12, msg=name)
    stacked = fitter.stack_residuals(residuals)
    torch.testing.assert_close((stacked ** 2).sum(-1), fitter.total(energies), rtol=1e-10, atol=0)
