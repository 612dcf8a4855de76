"""Batched Levenberg-Marquardt: forward-mode Jacobians against autograd, and fits with it."""

import copy
import math

import pytest
import torch

from fitting import FitConfig, Fitter, Stage
from fitting.levenberg_marquardt import LM_PARAMETERS, ParameterLayout, residual_jacobian
from renderers import HybridRenderer, make_renderer

from test_fitting import NaNAfter, crop_camera, perturbed_start, synthetic_target
from test_residuals import ALL_WEIGHTS, frame


@pytest.fixture(scope="module")
def model64(hand_model):
    return copy.deepcopy(hand_model).to(torch.float64)


@pytest.mark.parametrize("renderer", ["soft", "splat"])
def test_forward_mode_jacobian_matches_autograd_per_term_and_for_the_whole_energy(model64, renderer):
    fitter = Fitter(model64, renderer, config=FitConfig(weights=ALL_WEIGHTS))
    target, params = frame(model64, torch.float64)
    params["theta"][0, 5] -= 1.0  # penetration > 0
    names = list(LM_PARAMETERS)
    settings = {"sigma_px": 0.25} if renderer == "soft" else {}
    r, J, energies, keys = residual_jacobian(fitter, params, names, target, False, settings)
    layout = ParameterLayout(params, names)
    assert J.shape == (1, r.shape[1], layout.size) and J.dtype == torch.float64

    # autograd through the same residuals (the same correspondences: searched at params)
    x = layout.flatten(params).clone().requires_grad_(True)
    p = dict(params)
    p.update(layout.unflatten(x))
    terms, _, _ = fitter.residual_terms(p, target, False, settings)
    assert list(terms) == keys
    w = fitter.config.weights
    start = 0
    g = torch.Generator().manual_seed(1)
    for name, rk in terms.items():
        if not w[name]:
            continue
        m = rk.shape[1]
        Jk = J[:, start:start + m] / math.sqrt(w[name])
        start += m
        u = torch.randn(rk.shape, generator=g, dtype=torch.float64)
        (grad,) = torch.autograd.grad((u * rk).sum(), x, retain_graph=True, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        ref = (u[:, :, None] * Jk).sum(1)
        scale = grad.abs().max().clamp_min(1e-8)
        assert float((ref - grad).abs().max() / scale) < 1e-7, name
    # the whole energy: dE/dx = 2 J^T r
    energy = fitter.total({k: (v ** 2).sum(-1) for k, v in terms.items()})
    (grad,) = torch.autograd.grad(energy.sum(), x)
    torch.testing.assert_close(2 * (J.transpose(1, 2) @ r[..., None])[..., 0], grad, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close((r ** 2).sum(-1), energy.detach(), rtol=1e-10, atol=0)


def test_lm_recovers_synthetic_truth_from_a_perturbed_start_in_few_iterations(hand_model):
    truth, target, render, init = perturbed_start(hand_model)
    fitter = Fitter(hand_model, "soft", config=FitConfig(optimizer="lm"))
    state = fitter.run(target, init)
    with torch.no_grad():
        fit = hand_model(**state.params)
        fit_render = HybridRenderer()(fit.vertices, hand_model.faces, target.camera)
    error = float((fit.keypoints - hand_model(**truth).keypoints).norm(dim=-1).mean())
    iou = float((fit_render.mask & render.mask).sum() / (fit_render.mask | render.mask).sum())
    lm_iterations = {}
    for h in state.history:
        if "lambda" in h:  # LM records carry the damping; the offsets' Adam records do not
            lm_iterations[h["stage"]] = lm_iterations.get(h["stage"], 0) + 1
    print(f"LM: keypoint error {error:.2f} mm, IoU {iou:.3f}, LM iterations {lm_iterations}, {state.seconds:.1f} s")
    assert error < 5.0 and iou > 0.95, (error, iou)
    assert set(lm_iterations) == {"global", "articulation", "shape"}
    assert max(lm_iterations.values()) <= 20, lm_iterations
    # every accepted LM step lowers the energy: the recorded totals never rise within a stage
    for stage in lm_iterations:
        totals = [float(h["total"][0]) for h in state.history if h["stage"] == stage and "lambda" in h]
        assert all(b <= a for a, b in zip(totals, totals[1:])), (stage, totals)
    assert int(state.nan_events) == 0


def test_lm_configuration_is_checked():
    with pytest.raises(ValueError, match="optimizer"):
        FitConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="lm_iterations"):
        FitConfig(lm_iterations=0)
    with pytest.raises(ValueError, match="lm_offset_iterations"):
        FitConfig(lm_offset_iterations=-1)


def test_lm_refuses_renderers_without_forward_mode_and_names_them(hand_model):
    with pytest.raises(ValueError, match="forward-mode.*hybrid"):
        Fitter(hand_model, "hybrid", FitConfig(optimizer="lm"))
    target, _ = synthetic_target(hand_model, HybridRenderer(), nan_truth(hand_model, 1), crop_camera(1))
    config = FitConfig(optimizer="lm", stages=(Stage("global", ("global_orient", "transl"), 2),))
    with pytest.raises(ValueError, match="forward-mode.*HybridRenderer"):
        Fitter(hand_model, HybridRenderer(), config).run(target, nan_truth(hand_model, 1))


def nan_truth(hand_model, batch):
    truth = hand_model.neutral_parameters(batch)
    truth["transl"][:, 2] = 450.0
    return truth


def test_lm_nan_guard_keeps_the_best_state_per_frame(hand_model):
    truth = nan_truth(hand_model, 2)
    target, _ = synthetic_target(hand_model, HybridRenderer(), truth, crop_camera(2))
    init = {k: v.clone() for k, v in truth.items()}
    init["transl"] = truth["transl"] + torch.tensor([5.0, 0.0, 0.0])
    config = FitConfig(optimizer="lm", stages=(Stage("global", ("global_orient", "transl"), 6),))
    # renders 1-3 are fine (Jacobian, trial, Jacobian), then frame 1's depth turns NaN
    state = Fitter(hand_model, NaNAfter(make_renderer("soft"), frame=1, after=3), config).run(target, init)
    for v in state.params.values():
        assert torch.isfinite(v).all()
    assert int(state.nan_events[1]) >= 1 and int(state.nan_events[0]) == 0
    assert int(state.iterations[1]) < int(state.iterations[0])
    assert float(state.energy[0]) < float(state.history[0]["total"][0])
    assert math.isfinite(float(state.energy[1]))
