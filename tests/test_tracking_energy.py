"""The articulated-ICP tracking energy: closed-form Jacobians against autograd, and fits with it."""

import copy
import math

import pytest
import torch
from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle

from fitting import FitConfig, Fitter
from fitting.tracking_energy import IcpEnergy, icp_stage

from test_fitting import perturbed_start
from test_residuals import frame


@pytest.fixture(scope="module")
def model64(hand_model):
    model = copy.deepcopy(hand_model).to(torch.float64)
    # the shipped rest frames are orthonormal to float32 precision (1e-7); orthonormalised,
    # the chain rule of kinematic_jacobian is exact, so autograd must agree to rounding
    U, _, Vh = torch.linalg.svd(model.rest_orientations)
    model.rest_orientations.copy_(U @ Vh)
    return model


def _pose_function(model, params):
    """x (B, 6 + D) -> the parameters moved by the rotation increment, translation and angles."""
    def move(x):
        p = dict(params)
        R = axis_angle_to_matrix(x[:, :3]) @ axis_angle_to_matrix(params["global_orient"])
        p["global_orient"] = matrix_to_axis_angle(R)
        p["transl"] = params["transl"] + x[:, 3:6]
        p["theta"] = params["theta"] + x[:, 6:]
        return p
    return move


def test_kinematic_jacobian_matches_autograd(model64):
    g = torch.Generator().manual_seed(0)
    B, dt = 2, torch.float64
    p = model64.neutral_parameters(B)
    p["global_orient"] = 0.5 * torch.randn(B, 3, generator=g, dtype=dt)
    p["transl"] = torch.tensor([[10.0, -5.0, 400.0], [-20.0, 0.0, 500.0]], dtype=dt)
    p["theta"] = 0.3 * torch.randn(B, model64.num_dofs, generator=g, dtype=dt)
    p["beta"] = 0.5 * torch.randn(B, model64.num_shapes, generator=g, dtype=dt)
    p["alpha"] = 1.0 + 0.05 * torch.randn(B, 6, generator=g, dtype=dt)
    p["offsets"] = 0.5 * torch.randn(B, model64.num_vertices, 3, generator=g, dtype=dt)
    jv, jk, _ = model64.kinematic_jacobian(p)
    P = 6 + model64.num_dofs
    assert jv.shape == (B, model64.num_vertices, 3, P) and jk.shape == (B, 21, 3, P) and jv.dtype == dt
    move = _pose_function(model64, p)

    def f(x):
        out = model64(**move(x))
        return torch.cat([out.vertices.flatten(1), out.keypoints.flatten(1)], 1)

    # forward mode (P tangents) through the model: the reference Jacobian (B, M, P)
    J = torch.func.jacfwd(f)(torch.zeros(B, P, dtype=dt))
    J = torch.stack([J[b, :, b] for b in range(B)])
    V = model64.num_vertices
    torch.testing.assert_close(jv, J[:, :3 * V].reshape(B, V, 3, P), rtol=0, atol=1e-9)
    torch.testing.assert_close(jk, J[:, 3 * V:].reshape(B, 21, 3, P), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="pose"):
        model64.kinematic_jacobian({**p, "pose": torch.zeros(B, model64.num_joints, 3, dtype=dt)})


def test_icp_jacobian_matches_autograd_per_term_and_for_the_whole_energy(model64):
    fitter = Fitter(model64, "soft")
    target, params = frame(model64, torch.float64)  # with keypoints, previous keypoints
    params["theta"][0, 0] = model64.dof_upper[0] + 0.2  # a joint past its limit
    energy = IcpEnergy(fitter, target)
    assert {"point_to_plane", "silhouette_2d", "joint_limits", "pose_prior", "temporal",
            "keypoints_3d", "keypoints_2d"} <= set(energy.keys)
    terms, jacs = energy.residuals(params, jacobian=True)
    P = 6 + model64.num_dofs
    move = _pose_function(model64, params)
    x = torch.zeros(1, P, dtype=torch.float64, requires_grad=True)
    ref, _ = energy.residuals(move(x), jacobian=False)  # autograd, same correspondences
    assert float(terms["silhouette_2d"].abs().sum()) > 0 and float(terms["joint_limits"].abs().sum()) > 0
    g = torch.Generator().manual_seed(1)
    for name in energy.keys:
        torch.testing.assert_close(ref[name].detach(), terms[name], rtol=1e-10, atol=1e-10)
        u = torch.randn(terms[name].shape, generator=g, dtype=torch.float64)
        (grad,) = torch.autograd.grad((u * ref[name]).sum(), x, retain_graph=True, allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        mine = (u[:, :, None] * jacs[name]).sum(1)
        assert float((mine - grad).abs().max() / grad.abs().max().clamp_min(1e-8)) < 1e-7, name
    # the whole energy: dE/dx = 2 J^T r
    r, J = energy.stack(terms), energy.stack(jacs)
    total = (energy.stack(ref) ** 2).sum()
    (grad,) = torch.autograd.grad(total, x)
    torch.testing.assert_close(2 * (J.transpose(1, 2) @ r[..., None])[..., 0], grad, rtol=1e-7, atol=1e-10)


def test_icp_stage_brings_a_perturbed_start_back_in_a_few_iterations(hand_model):
    truth, target, _, init = perturbed_start(hand_model)
    init["beta"] = truth["beta"].clone()  # the tracker's shape is frozen (calibrated)
    fitter = Fitter(hand_model, "soft", FitConfig())
    params = {k: v.clone() for k, v in init.items()}
    kp_true = hand_model(**truth).keypoints
    before = float((hand_model(**params).keypoints - kp_true).norm(dim=-1).mean())
    records = []
    energy, spent, nans = icp_stage(fitter, params, ("global_orient", "transl", "theta"), target, 10,
                                    record=records.append)
    after = float((hand_model(**params).keypoints - kp_true).norm(dim=-1).mean())
    assert int(spent) <= 10 and int(nans) == 0 and math.isfinite(float(energy))
    assert after < 5.0 < before, (before, after)
    totals = [float(r["total"]) for r in records]
    assert all(b <= a for a, b in zip(totals, totals[1:])), totals  # LM never accepts a rise
    with pytest.raises(ValueError, match="ICP energy optimises"):
        icp_stage(fitter, params, ("beta",), target, 1)


def test_an_icp_fit_stays_float64_and_renders_once_for_its_metrics():
    from fitting import SHARP_SILHOUETTE, Stage
    from fitting.preprocess import prepare
    from hands import load_hand

    from test_front_door import LowPrecisionWatch
    from test_tracking import jump_sequence

    model = load_hand("default", dtype=torch.float64)
    frames, path, truth = jump_sequence(model.to(torch.float32), 2, None)
    model = model.to(torch.float64)
    fitter = Fitter(model, "soft", FitConfig(working_size=48))
    init = {k: v.to(torch.float64) for k, v in path[0].items()}  # the previous frame's pose
    crop = prepare(frames[1], 220.0, 48)
    renders = []
    fitter.renderer.register_forward_hook(lambda *a: renders.append(1))
    watch = LowPrecisionWatch()
    with watch:
        result = fitter.fit_crops([crop], init=init, energy="icp",
                                  stages=(Stage("articulation", ("global_orient", "transl", "theta"), 8,
                                                SHARP_SILHOUETTE),))[0]
    assert not watch.calls, f"ops on other floating dtypes: {sorted(set(watch.calls))[:20]}"
    assert result.vertices.dtype == torch.float64 and all(v.dtype == torch.float64 for v in result.params.values())
    assert len(renders) == 1 and result.metrics["iou"] > 0.9 and 1 <= result.metrics["iterations"] <= 8
    assert float((result.keypoints - truth[1].to(torch.float64)).norm(dim=-1).mean()) < 3.0
    assert {"point_to_plane", "silhouette_2d"} <= {k for h in result.history for k in h}
    with pytest.raises(ValueError, match="energy must be one of"):
        fitter.run(None, init, energy="sdf")
