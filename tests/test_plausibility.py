"""Physically plausible hands: sphere proxies, penetration in a fit, joint limits (energy and clamp)."""

import pytest
import torch

from fitting import Fitter, FitConfig, Stage
from fitting.result import fit_metrics
from fitting.synthetic import render_fit_target
from hands import CollisionProxies
from losses import (
    cylinder_collision_loss,
    fingertip_palm_penetration_loss,
    joint_limit_loss,
    sphere_overlap_stats,
    sphere_penetration_loss,
)
from renderers import Camera, HybridRenderer

#: Index MCP, PIP and DIP flexion (radians) that push the index fingertip into the palm.
INDEX_IN_PALM = {"index_mcp_flex": 1.4, "index_pip_flex": 1.6, "index_dip_flex": 0.4}


def pose(model, angles):
    theta = torch.zeros(1, model.num_dofs)
    for name, value in angles.items():
        theta[0, model.data.dof_names.index(name)] = value
    return theta


def crop_camera(size):
    f = size * 450.0 / 220.0
    return Camera(fx=f, fy=f, cx=size / 2 - 0.5, cy=size / 2 - 0.5, width=size, height=size)


@pytest.fixture(scope="module")
def proxies(hand_model):
    return CollisionProxies(hand_model)


def all_terms(proxies, out):
    centers = proxies.centers(out)
    tips, tip_radii = proxies.fingertip_spheres(centers)
    start, end = proxies.cylinders(centers)
    return {
        "rigid": sphere_penetration_loss(centers, proxies.radii, proxies.allowed),
        "nonrigid": fingertip_palm_penetration_loss(tips, tip_radii, proxies.palm_vertices(out)),
        "cylinder": cylinder_collision_loss(centers, start, end, proxies.cylinder_radii, proxies.cylinder_allowed),
    }


def test_proxies_shapes_and_allowed_pairs(hand_model, proxies):
    S = proxies.num_spheres
    assert S == 20 * 10
    assert proxies.radii.shape == (S,) and bool((proxies.radii >= 0).all()) and float(proxies.radii.max()) > 10
    assert torch.equal(proxies.allowed, proxies.allowed.T) and not bool(proxies.allowed.diagonal().any())
    bone = proxies.sphere_bone
    # spheres of one bone, and of bones sharing a keypoint, are never paired
    assert not bool(proxies.allowed[bone == 5][:, bone == 5].any())
    assert not bool(proxies.allowed[bone == 5][:, bone == 6].any())  # index proximal / middle phalanx
    assert bool(proxies.allowed[bone == 4][:, bone == 7].any())  # index metacarpal / distal phalanx
    out = hand_model(theta=torch.zeros(3, hand_model.num_dofs))
    assert proxies.centers(out).shape == (3, S, 3)
    tips, tip_radii = proxies.fingertip_spheres(proxies.centers(out))
    assert tips.shape == (3, 5, 10, 3) and tip_radii.shape == (5, 10)


def test_centres_follow_the_posed_hand_rigidly(hand_model, proxies):
    params = hand_model.neutral_parameters(1)
    params["global_orient"] = torch.tensor([[0.3, -0.2, 0.5]])
    params["transl"] = torch.tensor([[10.0, -5.0, 400.0]])
    moved = proxies.centers(hand_model(**params))
    rest = proxies.centers(hand_model())
    d_moved = (moved[0, :, None] - moved[0, None]).norm(dim=-1)
    d_rest = (rest[0, :, None] - rest[0, None]).norm(dim=-1)
    torch.testing.assert_close(d_moved, d_rest, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["rest", "flat", "spread"])
def test_open_hand_has_zero_energy_and_zero_gradient(hand_model, proxies, name):
    angles = {n: 0.0 for n in hand_model.data.dof_names}
    if name in ("flat", "spread"):  # fingers straightened (the rest pose is slightly curled)
        angles = {n: (-0.3 if "flex" in n else (0.25 if name == "spread" and "abd" in n else 0.0)) for n in angles}
    theta = pose(hand_model, angles).requires_grad_(True)
    out = hand_model(theta=theta)
    terms = all_terms(proxies, out)
    total = sum(terms.values())
    total.sum().backward()
    assert all(float(v.detach()) == 0.0 for v in terms.values()), terms
    assert float(theta.grad.abs().sum()) == 0.0
    largest, count = sphere_overlap_stats(proxies.centers(out), proxies.radii, proxies.allowed)
    assert float(largest) == 0.0 and int(count) == 0


def test_fingertip_in_the_palm_is_penetration_for_every_term(hand_model, proxies):
    theta = pose(hand_model, INDEX_IN_PALM).requires_grad_(True)
    out = hand_model(theta=theta)
    terms = all_terms(proxies, out)
    largest, count = sphere_overlap_stats(proxies.centers(out), proxies.radii, proxies.allowed)
    assert float(largest) > 3.0 and int(count) >= 3
    for name, value in terms.items():
        assert float(value.detach()) > 0, name
        (grad,) = torch.autograd.grad(value.sum(), theta, retain_graph=True)
        # the gradient acts on the index finger's DoF, not on the other fingers (the thumb's
        # base skins some palm vertices, so the palm term may move it)
        names = hand_model.data.dof_names
        index = [i for i, n in enumerate(names) if n.startswith("index")]
        others = [i for i, n in enumerate(names) if n.startswith(("middle", "ring", "little"))]
        assert float(grad[0, index].abs().sum()) > 0, name
        assert float(grad[0, others].abs().sum()) == 0, name


@pytest.mark.slow
def test_penetration_energy_moves_the_fingertip_out_of_the_palm_and_keeps_the_silhouette(hand_model):
    renderer = HybridRenderer()
    camera = crop_camera(64)
    truth = hand_model.neutral_parameters(1)
    truth["transl"][:, 2] = 450.0
    truth["theta"] = pose(hand_model, INDEX_IN_PALM)
    target, _ = render_fit_target(hand_model, renderer, truth, camera, torch.Generator().manual_seed(0))
    results = {}
    for weight in (0.0, 2e-3):
        config = FitConfig(stages=(Stage("articulation", ("theta",), 40, {"sigma_px": 0.25}),),
                           weights={"penetration": weight})
        fitter = Fitter(hand_model, renderer, config)
        state = fitter.run(target, truth)
        with torch.no_grad():
            out = hand_model(**state.params)
            iou = float(fit_metrics(renderer(out.vertices, hand_model.faces, camera), target)["iou"])
            largest, _ = sphere_overlap_stats(fitter.proxies.centers(out), fitter.proxies.radii, fitter.proxies.allowed)
        results[weight] = (float(largest), iou)
    (off_overlap, off_iou), (on_overlap, on_iou) = results[0.0], results[2e-3]
    assert off_overlap > 3.0, results  # without the energy the finger stays in the palm
    assert on_overlap < 1.0, results
    assert abs(on_iou - off_iou) < 0.02, results


def test_joint_limit_table_energy_and_clamp(hand_model):
    table = hand_model.limits_table()
    assert list(table) == list(hand_model.data.dof_names)
    lo, hi = table["index_pip_flex"]
    theta = pose(hand_model, {"index_pip_flex": hi + 0.5, "thumb_cmc_abd": table["thumb_cmc_abd"][0] - 0.2})
    energy = joint_limit_loss(theta, hand_model.dof_lower, hand_model.dof_upper)
    torch.testing.assert_close(energy, torch.tensor([0.5 ** 2 + 0.2 ** 2]))  # documented squared hinge
    clamped = hand_model.clamp_theta(theta)
    assert float(clamped[0, hand_model.data.dof_names.index("index_pip_flex")]) == pytest.approx(hi)
    assert float(joint_limit_loss(clamped, hand_model.dof_lower, hand_model.dof_upper)) == 0.0


def test_limits_are_configurable_and_the_fitter_clamps_only_when_asked(hand_data):
    from hands import HandModel

    model = HandModel(hand_data)
    with pytest.raises(ValueError, match="index_pip_flx"):
        model.set_limits({"index_pip_flx": (0.0, 1.0)})
    with pytest.raises(ValueError, match="index_pip_flex"):
        model.set_limits({"index_pip_flex": (1.0, 0.0)})
    model.set_limits({"index_pip_flex": (-0.1, 0.5)})
    assert model.limits_table()["index_pip_flex"] == pytest.approx((-0.1, 0.5))
    i = hand_data.dof_names.index("index_pip_flex")
    theta = torch.zeros(1, model.num_dofs)
    theta[0, i] = 1.2
    renderer = HybridRenderer()
    camera = crop_camera(32)
    target, _ = render_fit_target(model, renderer, {"theta": theta, "transl": torch.tensor([[0.0, 0.0, 450.0]])},
                                  camera, torch.Generator().manual_seed(0))
    init = {"theta": theta, "transl": torch.tensor([[0.0, 0.0, 450.0]])}
    stage = (Stage("articulation", ("theta",), 2),)
    clamped = Fitter(model, renderer, FitConfig(stages=stage, clamp_limits=True)).run(target, init)
    free = Fitter(model, renderer, FitConfig(stages=stage, clamp_limits=False)).run(target, init)
    assert float(clamped.params["theta"][0, i]) <= 0.5 + 1e-6
    assert float(free.params["theta"][0, i]) > 1.0
    assert float(free.terms["joint_limits"][0]) > 0.2  # (1.2 - 0.5)^2 = 0.49 minus a few steps



def test_fitter_terms_penetration_is_rigid_plus_five_nonrigid_and_collision_is_the_cylinders(hand_model, proxies):
    renderer = HybridRenderer()
    camera = crop_camera(32)
    params = hand_model.neutral_parameters(1)
    params["transl"][:, 2] = 450.0
    params["theta"] = pose(hand_model, INDEX_IN_PALM)
    target, _ = render_fit_target(hand_model, renderer, params, camera, torch.Generator().manual_seed(0))
    fitter = Fitter(hand_model, renderer, FitConfig(weights={"penetration": 1e-3, "collision": 1e-3}))
    terms, _, out = fitter.energy_terms(params, target, surface_terms=False)
    expected = all_terms(proxies, out)
    torch.testing.assert_close(terms["penetration"], expected["rigid"] + 5.0 * expected["nonrigid"])
    torch.testing.assert_close(terms["collision"], expected["cylinder"])
    plain, _, _ = Fitter(hand_model, renderer).energy_terms(params, target, surface_terms=False)
    assert "penetration" not in plain and "collision" not in plain and "temporal" not in plain
