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
