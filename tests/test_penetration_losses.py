"""Penetration, collision and temporal energies: values, gradients (gradcheck), zero cases, errors."""

import pytest
import torch

from losses import (
    cylinder_collision_loss,
    fingertip_palm_penetration_loss,
    sphere_overlap_stats,
    sphere_penetration_loss,
    temporal_smoothness_loss,
)


def chain_spheres(dtype=torch.float64):
    """Two crossing chains of 3 spheres (radius 4 mm): chain 0 along x, chain 1 along y."""
    t = torch.tensor([-6.0, 0.0, 6.0], dtype=dtype)
    zero = torch.zeros(3, dtype=dtype)
    a = torch.stack([t, zero, zero], -1)
    b = torch.stack([zero + 1.0, t + 0.5, zero + 1.5], -1)
    centers = torch.cat([a, b])[None]
    radii = torch.full((6,), 4.0, dtype=dtype)
    bone = torch.tensor([0, 0, 0, 1, 1, 1])
    allowed = bone[:, None] != bone[None, :]
    return centers, radii, allowed


def test_sphere_penetration_value_is_the_sum_of_overlaps_of_allowed_pairs():
    centers, radii, allowed = chain_spheres()
    loss = sphere_penetration_loss(centers, radii, allowed)
    d = (centers[0, :3, None] - centers[0, None, 3:]).norm(dim=-1)
    expected = torch.relu(8.0 - d).sum()
    torch.testing.assert_close(loss, expected[None])
    assert float(loss) > 0
    # the same spheres with every pair disallowed cost nothing
    none = torch.zeros(6, 6, dtype=torch.bool)
    assert float(sphere_penetration_loss(centers, radii, none)) == 0.0


def test_sphere_overlap_stats_counts_pairs_and_largest_overlap():
    centers, radii, allowed = chain_spheres()
    largest, count = sphere_overlap_stats(centers, radii, allowed)
    d = (centers[0, :3, None] - centers[0, None, 3:]).norm(dim=-1)
    assert int(count) == int((8.0 - d > 0).sum())
    torch.testing.assert_close(largest, (8.0 - d).max()[None])
    apart = centers.clone()
    apart[:, 3:, 2] += 100.0
    largest, count = sphere_overlap_stats(apart, radii, allowed)
    assert float(largest) == 0.0 and int(count) == 0


def test_gradcheck_sphere_penetration():
    centers, radii, allowed = chain_spheres()
    centers.requires_grad_(True)
    radii.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, r: sphere_penetration_loss(c, r, allowed), (centers, radii))


def test_gradcheck_fingertip_palm():
    g = torch.Generator().manual_seed(1)
    palm = (torch.rand(1, 12, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([40.0, 40.0, 2.0],
                                                                                          dtype=torch.float64)
    z = torch.tensor([12.0, 6.0, 2.5, -1.0], dtype=torch.float64)  # the chain dips into the palm plane
    tips = torch.stack([torch.full_like(z, 1.3), torch.full_like(z, -0.7), z], -1)[None, None]
    radii = torch.full((1, 4), 5.0, dtype=torch.float64)
    assert float(fingertip_palm_penetration_loss(tips, radii, palm)) > 0
    tips.requires_grad_(True)
    palm.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, p: fingertip_palm_penetration_loss(t, radii, p), (tips, palm))


def test_fingertip_palm_holds_every_sphere_from_the_entry_point_to_the_tip():
    palm = torch.zeros(1, 1, 3)
    tips = torch.tensor([[[[0.0, 0.0, 30.0], [0.0, 0.0, 4.0], [0.0, 0.0, 9.0], [0.0, 0.0, 2.0]]]])
    radii = torch.full((1, 4), 5.0)
    # entry at k = 2 (4 < 5); k = 3 is outside but after the entry, so it is pulled to the surface too
    torch.testing.assert_close(fingertip_palm_penetration_loss(tips, radii, palm), torch.tensor([1.0 + 4.0 + 3.0]))
    outside = tips.clone()
    outside[..., 2] += 20.0
    outside.requires_grad_(True)
    loss = fingertip_palm_penetration_loss(outside, radii, palm)
    loss.sum().backward()
    assert float(loss.detach()) == 0.0 and float(outside.grad.abs().sum()) == 0.0


def test_gradcheck_cylinder_collision():
    a = torch.tensor([[[0.0, 0.0, -10.0], [20.0, 0.0, 0.0]]], dtype=torch.float64)
    b = torch.tensor([[[0.3, 0.2, 10.0], [20.0, 15.0, 0.5]]], dtype=torch.float64)
    points = torch.tensor([[[1.0, 0.5, 2.0], [19.0, 7.0, 0.2], [0.5, -0.5, 9.0], [50.0, 0.0, 0.0]]],
                          dtype=torch.float64)
    radii = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert float(cylinder_collision_loss(points, a, b, radii)) > 0
    for x in (a, b, points, radii):
        x.requires_grad_(True)
    assert torch.autograd.gradcheck(cylinder_collision_loss, (points, a, b, radii))


def test_cylinder_collision_value_and_allowed_mask():
    a, b = torch.tensor([[[0.0, 0.0, -10.0]]]), torch.tensor([[[0.0, 0.0, 10.0]]])
    # on the axis near the cap: min(f1 = 100 - 9.5^2, f2 = 9); beside the centre: min(100, 9 - 4); beyond the cap: 0
    points = torch.tensor([[[0.0, 0.0, 9.5], [2.0, 0.0, 0.0], [0.0, 0.0, 11.0]]])
    loss = cylinder_collision_loss(points, a, b, torch.tensor([3.0]))
    torch.testing.assert_close(loss, torch.tensor([(min(100 - 90.25, 9.0) + min(100.0, 9.0 - 4.0)) / 3]))
    mask = torch.tensor([[False, True, True]])
    torch.testing.assert_close(cylinder_collision_loss(points, a, b, torch.tensor([3.0]), mask),
                               torch.tensor([5.0 / 3]))


def test_temporal_smoothness_is_zero_on_constant_velocity_and_gradcheck():
    x0 = torch.randn(2, 5, 3, dtype=torch.float64)
    v = torch.randn(2, 5, 3, dtype=torch.float64)
    assert float(temporal_smoothness_loss(x0 + 2 * v, x0 + v, x0).abs().max()) < 1e-20
    cur = (x0 + 2.5 * v).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: temporal_smoothness_loss(c, x0 + v, x0), (cur,))
    torch.testing.assert_close(temporal_smoothness_loss(x0 + v, x0), (v ** 2).sum(-1).mean(-1))


@pytest.mark.parametrize(
    "arg, call",
    [
        ("centers", lambda: sphere_penetration_loss(torch.zeros(4, 3), torch.ones(4), torch.ones(4, 4, dtype=torch.bool))),
        ("radii", lambda: sphere_penetration_loss(torch.zeros(1, 4, 3), torch.ones(3), torch.ones(4, 4, dtype=torch.bool))),
        ("allowed", lambda: sphere_penetration_loss(torch.zeros(1, 4, 3), torch.ones(4), torch.ones(4, 4))),
        ("tip_radii", lambda: fingertip_palm_penetration_loss(torch.zeros(1, 2, 3, 3), torch.ones(2, 2), torch.zeros(1, 5, 3))),
        ("palm_vertices", lambda: fingertip_palm_penetration_loss(torch.zeros(1, 2, 3, 3), torch.ones(2, 3), torch.zeros(2, 5, 3))),
        ("seg_end", lambda: cylinder_collision_loss(torch.zeros(1, 5, 3), torch.zeros(1, 2, 3), torch.zeros(1, 3, 3), torch.ones(2))),
        ("radii", lambda: cylinder_collision_loss(torch.zeros(1, 5, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(3))),
        ("previous", lambda: temporal_smoothness_loss(torch.zeros(1, 5, 3), torch.zeros(1, 4, 3))),
    ],
)
def test_errors_name_the_argument(arg, call):
    with pytest.raises(ValueError, match=arg):
        call()
