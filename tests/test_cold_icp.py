"""The fast cold path, ``FitConfig(cold="icp")``: ICP-fitted in-plane hypotheses, shortened stages."""

import copy
import dataclasses
import math

import pytest
import torch
from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle

import fitting.fitter as fitter_module
from fitting import FitConfig, Fitter
from fitting.config import COLD_SHAPE_LR_SCALE, DEFAULT_STAGES, ICP_COLD_WEIGHTS
from fitting.fitter import FitTarget, cold_stages
from fitting.initialize import search_hypotheses

from test_fitting import perturbed_start
from test_front_door import LowPrecisionWatch


def test_cold_settings_are_checked_and_scale_the_stages():
    for bad in (dict(cold="fast"), dict(icp_hypothesis_iterations=0), dict(icp_hypothesis_iterations=2.5),
                dict(cold_pose_scale=-1.0), dict(cold_shape_scale=math.inf), dict(cold_pose_scale=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FitConfig(**bad)
    config = FitConfig(cold="icp", cold_pose_scale=0.25, cold_shape_scale=0.5)
    stages = cold_stages(config, DEFAULT_STAGES)
    assert [(s.name, s.iterations) for s in stages] == [("global", 10), ("articulation", 30), ("shape", 40)]
    assert [s.name for s in cold_stages(FitConfig(cold_pose_scale=0.0), DEFAULT_STAGES)] == ["shape"]
    shape = stages[-1]
    assert shape.learning_rates["offsets"] == pytest.approx(COLD_SHAPE_LR_SCALE * config.learning_rates["offsets"])
    assert shape.learning_rates["theta"] == DEFAULT_STAGES[2].learning_rates["theta"]  # pose steps kept
    # ICP hypotheses only for single-view targets with data points (a multi-view target has no mask)
    from types import SimpleNamespace
    from fitting.initialize import _cold_icp

    points = torch.zeros(1, 3, 3)
    assert _cold_icp(config, SimpleNamespace(mask=None, points=points))
    assert not _cold_icp(config, SimpleNamespace(points=points))
    assert not _cold_icp(config, SimpleNamespace(mask=None, points=None))
    assert not _cold_icp(FitConfig(), SimpleNamespace(mask=None, points=points))


def test_the_cold_icp_search_and_stages_from_a_start_stay_float64_and_find_the_hand(hand_model, monkeypatch):
    # a synthetic 64 px crop; the start: the template's articulation and shape, the hand turned
    # 15 degrees in the image plane and moved 8 mm (what the principal-axis candidate leaves)
    model = copy.deepcopy(hand_model).to(torch.float64)
    truth, target, render, _ = perturbed_start(hand_model)
    to64 = lambda x: x.to(torch.float64) if torch.is_tensor(x) and x.is_floating_point() else x  # noqa: E731
    target = FitTarget(**{f.name: to64(getattr(target, f.name)) for f in dataclasses.fields(target)})
    target = dataclasses.replace(target, camera=target.camera.to(dtype=torch.float64))
    truth = {k: v.to(torch.float64) for k, v in truth.items()}
    start = model.neutral_parameters(1)
    R = axis_angle_to_matrix(truth["global_orient"])
    turn = axis_angle_to_matrix(math.radians(15.0) * R[:, :, 2])
    start["global_orient"] = matrix_to_axis_angle(turn @ R)
    start["transl"] = truth["transl"] + torch.tensor([[8.0, -6.0, 10.0]], dtype=torch.float64)
    calls = []
    real = fitter_module.icp_stage

    def spy(*args, **kwargs):
        calls.append((tuple(args[2]), kwargs.get("weights")))
        return real(*args, **kwargs)

    monkeypatch.setattr(fitter_module, "icp_stage", spy)
    fitter = Fitter(model, "soft", FitConfig(cold="icp", cold_shape_scale=0.25))
    watch = LowPrecisionWatch()
    with watch:
        init, spent = search_hypotheses(fitter, target, start)
        state = fitter.run(target, init, stages=cold_stages(fitter.config, DEFAULT_STAGES[1:]))
        fit = model(**state.params)
        fit_render = fitter.renderer(fit.vertices, model.faces, target.camera)
    assert not watch.calls, f"ops on other floating dtypes: {sorted(set(watch.calls))[:20]}"
    assert all(v.dtype == torch.float64 for v in state.params.values())
    # the five in-plane hypotheses ran on the ICP energy (the whole pose, the cold weights)
    assert calls == [(("global_orient", "transl", "theta"), ICP_COLD_WEIGHTS)]
    assert int(spent) <= 5 * fitter.config.icp_hypothesis_iterations
    assert int(state.iterations) <= 15 + 20  # the articulation and shape stages at the cold scales
    error = float((fit.keypoints - model(**truth).keypoints).norm(dim=-1).mean())
    iou = float((fit_render.mask & render.mask).sum() / (fit_render.mask | render.mask).sum())
    print(f"cold icp from a start: IoU {iou:.3f}, keypoint error {error:.2f} mm, {int(spent)} ICP + "
          f"{int(state.iterations)} stage iterations")
    assert iou > 0.9 and error < 8.0, (iou, error)


def test_the_cold_flag_reaches_the_fit_config():
    from fitting.cli import _fitter, build_parser

    parser = build_parser()
    args = parser.parse_args(["fit", "f.png", "--out", "o", "--cold", "icp", "--fast"])
    assert _fitter(args).config.cold == "icp"
    assert _fitter(parser.parse_args(["fit", "f.png", "--out", "o", "--fast"])).config.cold == "search"
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "f.png", "--out", "o", "--cold", "fast"])


def test_the_network_stages_flag_sets_the_short_stages_for_a_network_start_only():
    from fitting.cli import _fitter, build_parser
    from fitting.config import FAST_NETWORK_START
    from fitting.errors import InputError

    parser = build_parser()
    short = _fitter(parser.parse_args(["fit", "f.png", "--out", "o", "--fast", "--init", "network",
                                       "--network-stages", "short"])).config
    assert {k: getattr(short, k) for k in FAST_NETWORK_START} == FAST_NETWORK_START
    plain = _fitter(parser.parse_args(["fit", "f.png", "--out", "o", "--fast", "--init", "network"])).config
    assert plain.network_shape_lr_scale == 1.0 and plain.network_pose_scale != FAST_NETWORK_START["network_pose_scale"]
    with pytest.raises(InputError, match="--init network"):
        _fitter(parser.parse_args(["fit", "f.png", "--out", "o", "--fast", "--network-stages", "short"]))


def test_the_point_to_point_term_and_its_jacobian_match_autograd(hand_model):
    from fitting.tracking_energy import IcpEnergy
    from test_residuals import frame
    from test_tracking_energy import _pose_function

    model = copy.deepcopy(hand_model).to(torch.float64)
    U, _, Vh = torch.linalg.svd(model.rest_orientations)  # orthonormal rest frames (exact chain rule)
    model.rest_orientations.copy_(U @ Vh)
    fitter = Fitter(model, "soft")
    target, params = frame(model, torch.float64, keypoints=False)
    assert "point_to_point" not in IcpEnergy(fitter, target).keys  # off while tracking
    energy = IcpEnergy(fitter, target, ICP_COLD_WEIGHTS)
    assert energy.keys[:2] == ["point_to_plane", "point_to_point"]
    terms, jacs = energy.residuals(params, jacobian=True)
    N = target.points.shape[1] if target.point_lengths is None else int(target.point_lengths[0])
    assert terms["point_to_point"].shape == (1, 3 * target.points.shape[1]) and float(terms["point_to_point"].abs().sum()) > 0
    # the mean squared point-to-vertex distance of the nearest front-facing vertices
    pairs = terms["point_to_point"].view(1, -1, 3)[:, :N]
    plane = terms["point_to_plane"][:, :N]
    assert bool(((pairs ** 2).sum(-1) >= plane ** 2 - 1e-12).all())  # |d| >= |n . d| for unit normals
    x = torch.zeros(1, 6 + model.num_dofs, dtype=torch.float64, requires_grad=True)
    ref, _ = energy.residuals(_pose_function(model, params)(x), jacobian=False)
    torch.testing.assert_close(ref["point_to_point"].detach(), terms["point_to_point"], rtol=1e-10, atol=1e-10)
    u = torch.randn(terms["point_to_point"].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (grad,) = torch.autograd.grad((u * ref["point_to_point"]).sum(), x)
    mine = (u[:, :, None] * jacs["point_to_point"]).sum(1)
    assert float((mine - grad).abs().max() / grad.abs().max()) < 1e-7


def test_the_cold_candidates_are_ranked_by_icp_and_only_the_best_two_get_the_render_fit(hand_model, monkeypatch):
    # the four principal-axis candidates of a synthetic 64 px crop: one ICP global fit of the
    # four, one render evaluation each, then the render fit of the best two (batch 2), whose energy picks
    from fitting.initialize import initial_parameters

    for bad in (dict(cold_candidates="adam"), dict(cold_global_iterations=0), dict(cold_spare_candidates=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FitConfig(**bad)
    truth, target, _, _ = perturbed_start(hand_model)
    points = target.points[0, : int(target.point_lengths[0])] if target.point_lengths is not None else target.points[0]
    runs = []
    real = Fitter.run

    def spy(self, tgt, init, stages=None, **kwargs):
        runs.append((tgt.batch_size, kwargs.get("energy", "render"), tuple(s.iterations for s in stages)))
        return real(self, tgt, init, stages=stages, **kwargs)

    monkeypatch.setattr(Fitter, "run", spy)
    config = FitConfig(cold="icp")
    params, spent = initial_parameters(Fitter(hand_model, "soft", config), [points], target)
    assert runs == [(4, "icp", (config.cold_candidate_iterations,)), (2, "render", (config.cold_global_iterations,))]
    assert params["global_orient"].shape == (1, 3)
    assert 0 < int(spent) <= 4 * config.cold_candidate_iterations + 2 * config.cold_global_iterations
    # the winner: the candidate whose fingers and palm face as the truth's (canonical -y and -z)
    R, R_true = axis_angle_to_matrix(params["global_orient"])[0], axis_angle_to_matrix(truth["global_orient"])[0]
    assert float(R[:, 1] @ R_true[:, 1]) > 0.5 and float(R[:, 2] @ R_true[:, 2]) > 0.5
    runs.clear()
    initial_parameters(Fitter(hand_model, "soft", FitConfig(cold="icp", cold_candidates="render")), [points], target)
    assert runs == [(4, "render", (config.cold_global_iterations,))]


def test_lm_solve_leaves_converged_frames_out_and_takes_the_same_steps():
    # three independent least-squares problems r = A_b x - y_b (linear: one LM step each, then
    # converged) and one nonlinear one that keeps going: with subsets the converged frames are
    # no longer evaluated, and the iterates are those of the full batch
    from fitting.levenberg_marquardt import lm_solve

    g = torch.Generator().manual_seed(0)
    B, P, M = 4, 3, 6
    A = torch.randn(B, M, P, generator=g, dtype=torch.float64)
    y = torch.randn(B, M, generator=g, dtype=torch.float64)
    curved = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # frame 3: r + 0.5 x^2

    def residual(x, rows):
        a, yy, c = (A, y, curved) if rows is None else (A[rows], y[rows], curved[rows])
        return (a @ x[..., None])[..., 0] - yy + 0.5 * c[:, None] * (x ** 2).sum(-1, keepdim=True)

    def jacobian(x, rows):
        a, c = (A, curved) if rows is None else (A[rows], curved[rows])
        return a + c[:, None, None] * x[:, None, :]

    def run(subsets):
        seen = []
        params = {"x": torch.zeros(B, P, dtype=torch.float64)}

        def linearize(p, rows=None):
            seen.append(B if rows is None else rows.numel())
            x = p["x"] if rows is None else p["x"][rows]
            r = residual(x, rows)
            return r, jacobian(x, rows), (r ** 2).sum(-1, keepdim=True), ["r"]

        def evaluate(p, rows=None):
            seen.append(B if rows is None else rows.numel())
            x = p["x"] if rows is None else p["x"][rows]
            e = (residual(x, rows) ** 2).sum(-1)
            return e, e[:, None]

        def retract(p, d):
            return {"x": p["x"] + d}, d

        energy, spent, _ = lm_solve(params, ["x"], P, B, 12, 1e-9, linearize, evaluate, retract,
                                    stop_on_prediction=True, subsets=subsets)
        return params["x"], energy, spent, seen

    x0, e0, s0, seen0 = run(False)
    x1, e1, s1, seen1 = run(True)
    assert torch.allclose(x0, x1, rtol=0, atol=1e-12) and torch.allclose(e0, e1, rtol=1e-12, atol=1e-15)
    assert torch.equal(s0, s1) and int(s1[3]) > int(s1[:3].max())
    assert set(seen0) == {B} and min(seen1) < B and sum(seen1) < sum(seen0)
