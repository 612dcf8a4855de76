"""Tests for the losses package: values, per-element independence, gradients, errors."""

from __future__ import annotations

import ast
import doctest
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from pytorch3d.loss import mesh_edge_loss, mesh_laplacian_smoothing, mesh_normal_consistency
from pytorch3d.structures import Meshes

import losses
from losses import (
    depth_loss,
    edge_loss,
    joint_limit_loss,
    keypoint_2d_loss,
    keypoint_3d_loss,
    laplacian_loss,
    normal_consistency_loss,
    offset_loss,
    pose_prior_loss,
    silhouette_loss,
)

LOSSES_DIR = Path(losses.__file__).parent

# pytorch3d builds its uniform Laplacian with torch.sparse_coo_tensor, which warns once.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")


def grid_mesh(n: int = 5, size: float = 40.0, dtype=torch.float32):
    """A flat square of n x n vertices in the z = 0 plane (mm), split into 2 (n-1)^2 triangles."""
    lin = torch.linspace(0.0, size, n, dtype=dtype)
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    verts = torch.stack([x, y, torch.zeros_like(x)], dim=-1).reshape(-1, 3)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, b, d], [a, d, c]]
    return verts, torch.tensor(faces, dtype=torch.long)


def depth_pair(B=2, H=8, W=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    target = 400.0 + 100.0 * torch.rand(B, H, W, generator=g, dtype=dtype)
    target[:, :2] = 0.0  # no depth in the first two rows
    pred = target + 3.0  # well inside the quadratic zone of beta = 10 mm
    pred[:, :, :2] = 0.0  # nothing rendered in the first two columns
    return pred, target


# --------------------------------------------------------------------------------------------
# Zero at the target, positive away from it, shape (B,)
# --------------------------------------------------------------------------------------------


def _cases():
    """(name, fn(x) -> (B,), x at the target, x away from the target), B = 3."""
    B = 3
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(B, 6, 7, generator=g) > 0.5
    pred_d, target_d = depth_pair(B=B)
    verts, faces = grid_mesh()
    offsets0 = torch.full((B, verts.shape[0], 3), 2.5)  # constant field: a translation
    offsets1 = offsets0 + torch.randn(B, verts.shape[0], 3, generator=g)
    flat = verts.expand(B, -1, -1).clone()
    crumpled = flat + torch.randn(flat.shape, generator=g) * 3.0
    lower, upper = torch.tensor([-0.1, 0.0, -0.5]), torch.tensor([1.6, 0.0, 0.5])
    kp3 = torch.randn(B, 21, 3, generator=g) * 50
    kp2 = torch.rand(B, 21, 2, generator=g) * 128
    mean = torch.tensor([0.1, 0.2, 0.3])
    return [
        ("silhouette", lambda x: silhouette_loss(x, mask), mask.float(), mask.float() * 0.5),
        ("depth", lambda x: depth_loss(x, target_d), torch.where(pred_d > 0, target_d, 0.0), pred_d),
        ("laplacian", lambda x: laplacian_loss(x, faces), offsets0, offsets1),
        ("edge", lambda x: edge_loss(x, faces), offsets0, offsets1),
        ("normal", lambda x: normal_consistency_loss(x, faces), flat, crumpled),
        ("offset", offset_loss, torch.zeros_like(offsets1), offsets1),
        ("joint_limit", lambda x: joint_limit_loss(x, lower, upper),
         torch.tensor([[0.5, 0.0, 0.0]] * B), torch.tensor([[2.0, 0.1, -1.0]] * B)),
        ("keypoint_3d", lambda x: keypoint_3d_loss(x, kp3), kp3.clone(), kp3 + 1.0),
        ("keypoint_2d", lambda x: keypoint_2d_loss(x, kp2), kp2.clone(), kp2 - 2.0),
        ("pose_prior", lambda x: pose_prior_loss(x, mean), mean.expand(B, 3).clone(), torch.zeros(B, 3)),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, fn, at, away", CASES, ids=IDS)
def test_zero_at_target_positive_away(name, fn, at, away):
    zero = fn(at)
    assert zero.shape == (at.shape[0],)
    assert torch.allclose(zero, torch.zeros_like(zero), atol=1e-5), zero
    pos = fn(away)
    assert pos.shape == (at.shape[0],)
    assert (pos > 1e-4).all(), pos


@pytest.mark.parametrize("name, fn, at, away", CASES, ids=IDS)
def test_batch_elements_are_independent(name, fn, at, away):
    mixed = at.clone()
    mixed[1] = away[1]
    out = fn(mixed)
    assert out[0] == fn(at)[0]
    assert out[2] == fn(at)[2]
    assert out[1] == fn(away)[1]


@pytest.mark.parametrize("name, fn, at, away", CASES, ids=IDS)
def test_gradient_is_finite_and_per_element(name, fn, at, away):
    x = away.clone().requires_grad_(True)
    out = fn(x)
    out[0].backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[1:] == 0).all()  # loss[0] only depends on element 0


# --------------------------------------------------------------------------------------------
# Gradcheck (float64)
# --------------------------------------------------------------------------------------------


def test_gradcheck_silhouette():
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 4, 5, generator=g, dtype=torch.float64) > 0.5
    weight = torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: silhouette_loss(p, target), (pred,))
    assert torch.autograd.gradcheck(lambda p: silhouette_loss(p, target, weight), (pred,))


def test_gradcheck_depth_both_sides_of_the_kink():
    _, target = depth_pair(B=2, H=4, W=5, dtype=torch.float64)
    # residuals of 3 mm (quadratic) and 30 mm (linear) with beta = 10: away from |x| = beta.
    # pred stays > 0 everywhere (a finite difference must not switch pixels on or off); the
    # invalid pixels come from target == 0 and target_mask.
    pred = target + 3.0
    pred[..., 3:] = target[..., 3:] - 30.0
    pred[target == 0] = 450.0
    keep = torch.ones_like(target, dtype=torch.bool)
    keep[:, -1, -1] = False
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: depth_loss(p, target, target_mask=keep, beta=10.0), (pred,))
    assert torch.autograd.gradcheck(lambda p: depth_loss(p, target, beta=0.0), (pred,))


def test_gradcheck_keypoints():
    g = torch.Generator().manual_seed(3)
    for dim, fn in ((3, keypoint_3d_loss), (2, keypoint_2d_loss)):
        pred = torch.randn(2, 5, dim, generator=g, dtype=torch.float64, requires_grad=True)
        target = torch.randn(2, 5, dim, generator=g, dtype=torch.float64)
        w = torch.rand(2, 5, generator=g, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda p: fn(p, target), (pred,))
        assert torch.autograd.gradcheck(lambda p: fn(p, target, w), (pred,))
        assert torch.autograd.gradcheck(lambda p: fn(p, target, w[0]), (pred,))


def test_gradcheck_joint_limits_and_prior():
    angles = torch.tensor(
        [[0.5, 2.0, -1.0, 0.3], [-0.4, 0.1, 0.2, 0.9]], dtype=torch.float64, requires_grad=True
    )
    lower = torch.tensor([-0.1, -0.1, -0.5, 0.0], dtype=torch.float64)
    upper = torch.tensor([1.6, 1.2, 0.5, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: joint_limit_loss(a, lower, upper), (angles,))
    mean = torch.rand(4, dtype=torch.float64)
    w = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: pose_prior_loss(a, mean, w), (angles,))


def test_gradcheck_offset():
    offsets = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(offset_loss, (offsets,))


def test_gradcheck_mesh_regularizers_float64():
    verts, faces = grid_mesh(n=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    x = (verts.expand(2, -1, -1) + torch.randn(2, 9, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: edge_loss(v, faces), (x,))
    assert torch.autograd.gradcheck(lambda v: edge_loss(v, faces, target_length=5.0), (x,))
    assert torch.autograd.gradcheck(lambda v: laplacian_loss(v, faces), (x,))
    assert torch.autograd.gradcheck(lambda v: normal_consistency_loss(v, faces), (x,))


# --------------------------------------------------------------------------------------------
# Silhouette
# --------------------------------------------------------------------------------------------


def test_silhouette_normalised_by_pixel_count():
    for H, W in ((4, 4), (16, 32)):
        pred = torch.ones(1, H, W)
        target = torch.zeros(1, H, W)
        target[:, : H // 2] = 1.0
        assert torch.allclose(silhouette_loss(pred, target), torch.tensor([0.5]))


def test_silhouette_weight():
    pred = torch.ones(1, 2, 2)
    target = torch.zeros(1, 2, 2)
    weight = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert torch.allclose(silhouette_loss(pred, target, weight), torch.tensor([0.75]))


# --------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------


def test_depth_ignores_pixels_without_depth_on_either_side():
    pred, target = depth_pair()
    base = depth_loss(pred, target)
    pred2, target2 = pred.clone(), target.clone()
    target_empty, pred_empty = target == 0, pred == 0
    pred2[target_empty] = 1234.0  # rendered hand where the sensor saw nothing
    target2[pred_empty] = float("nan")  # sensor depth (even NaN) where nothing was rendered
    assert torch.equal(depth_loss(pred2, target2), base)
    p = pred2.clone().requires_grad_(True)
    depth_loss(p, target2).sum().backward()
    assert torch.isfinite(p.grad).all()
    assert (p.grad[target_empty] == 0).all()


def test_depth_value_is_mean_smooth_l1_over_valid_pixels():
    pred, target = depth_pair()
    valid = (pred > 0) & (target > 0)
    expected = torch.stack(
        [
            torch.nn.functional.smooth_l1_loss(pred[b][valid[b]], target[b][valid[b]], beta=10.0)
            for b in range(pred.shape[0])
        ]
    )
    assert torch.allclose(depth_loss(pred, target, beta=10.0), expected)
    assert torch.allclose(depth_loss(pred, target, beta=10.0), torch.full((2,), 0.5 * 9 / 10))


def test_depth_no_overlap_is_zero_not_nan():
    pred = torch.zeros(2, 4, 4)
    pred[:, :2] = 500.0
    target = torch.zeros(2, 4, 4)
    target[:, 2:] = 480.0
    p = pred.clone().requires_grad_(True)
    out = depth_loss(p, target)
    assert torch.equal(out, torch.zeros(2))
    out.sum().backward()
    assert torch.equal(p.grad, torch.zeros_like(p))


def test_depth_masks():
    pred, target = depth_pair(B=1)
    both = (pred > 0) & (target > 0)
    pred_bad = pred.clone()
    pred_bad[..., -1] += 100.0  # last column is wrong ...
    keep = torch.ones_like(pred, dtype=torch.bool)
    keep[..., -1] = False  # ... but masked out
    assert torch.allclose(depth_loss(pred_bad, target, target_mask=keep), depth_loss(pred, target))
    assert torch.allclose(depth_loss(pred_bad, target, pred_mask=keep.float() * 0.9), depth_loss(pred, target))
    none = torch.zeros_like(keep)
    assert torch.equal(depth_loss(pred, target, pred_mask=none), torch.zeros(1))
    assert both.any()


# --------------------------------------------------------------------------------------------
# Joint limits, keypoints, prior
# --------------------------------------------------------------------------------------------


def test_joint_limit_values():
    lower = torch.tensor([-0.1, -0.5, 0.0])
    upper = torch.tensor([1.6, 0.5, 0.0])
    inside = torch.tensor([[0.0, 0.0, 0.0], [1.6, -0.5, 0.0], [-0.1, 0.5, 0.0]])
    assert torch.equal(joint_limit_loss(inside, lower, upper), torch.zeros(3))
    above = torch.tensor([[2.1, 0.0, 0.0]])  # 0.5 above the upper limit
    assert torch.allclose(joint_limit_loss(above, lower, upper), torch.tensor([0.25]))
    below = torch.tensor([[-0.4, -0.7, 0.1]])  # 0.3 below, 0.2 below, 0.1 above a locked DoF
    assert torch.allclose(joint_limit_loss(below, lower, upper), torch.tensor([0.09 + 0.04 + 0.01]))


def test_joint_limit_infinite_bounds_and_per_element_limits():
    lower = torch.tensor([-math.inf, 0.0])
    upper = torch.tensor([math.inf, 1.0])
    a = torch.tensor([[100.0, 1.5], [-100.0, 0.5]], requires_grad=True)
    out = joint_limit_loss(a, lower, upper)
    assert torch.allclose(out, torch.tensor([0.25, 0.0]))
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad[:, 0].eq(0).all()
    per_elem = joint_limit_loss(a.detach(), lower.expand(2, 2), upper.expand(2, 2))
    assert torch.allclose(per_elem, out.detach())


def test_keypoint_weights_and_missing():
    target = torch.zeros(2, 3, 3)
    pred = torch.zeros(2, 3, 3)
    pred[:, 0, 0] = 2.0  # 4 mm^2
    pred[:, 1, 1] = 4.0  # 16 mm^2
    assert torch.allclose(keypoint_3d_loss(pred, target), torch.full((2,), 20.0 / 3))
    w = torch.tensor([1.0, 3.0, 0.0])
    assert torch.allclose(keypoint_3d_loss(pred, target, w), torch.full((2,), (4 + 48) / 4.0))
    wb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # element 1 has no keypoint
    p = pred.clone().requires_grad_(True)
    out = keypoint_3d_loss(p, target, wb)
    assert torch.allclose(out, torch.tensor([4.0, 0.0]))
    out.sum().backward()
    assert torch.equal(p.grad[1], torch.zeros(3, 3))
    # a NaN target is a missing keypoint: ignored in value and gradient
    target_nan = target.clone()
    target_nan[:, 1] = float("nan")
    p = pred.clone().requires_grad_(True)
    out = keypoint_3d_loss(p, target_nan, w)
    assert torch.allclose(out, torch.full((2,), 4.0))
    out.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_keypoint_2d_in_pixels():
    pred = torch.tensor([[[0.0, 0.0], [10.0, 10.0]]])
    target = torch.tensor([[[3.0, 4.0], [10.0, 10.0]]])
    assert torch.allclose(keypoint_2d_loss(pred, target), torch.tensor([12.5]))


def test_pose_prior_default_mean_is_zero():
    a = torch.tensor([[0.3, -0.4]])
    assert torch.allclose(pose_prior_loss(a), torch.tensor([0.25]))
    assert torch.allclose(pose_prior_loss(a, weight=torch.tensor([0.0, 2.0])), torch.tensor([0.32]))


# --------------------------------------------------------------------------------------------
# Mesh regularizers
# --------------------------------------------------------------------------------------------


def test_laplacian_and_edge_of_constant_offsets_are_zero_with_finite_gradient():
    verts, faces = grid_mesh()
    for value in (0.0, 7.0):
        offsets = torch.full((2, verts.shape[0], 3), value, requires_grad=True)
        lap = laplacian_loss(offsets, faces)
        edge = edge_loss(offsets, faces)
        assert torch.allclose(lap, torch.zeros(2), atol=1e-5)
        assert torch.allclose(edge, torch.zeros(2), atol=1e-10)
        (lap.sum() + edge.sum()).backward()
        assert torch.isfinite(offsets.grad).all()


def test_laplacian_and_edge_of_noisy_offsets_are_positive():
    verts, faces = grid_mesh()
    noisy = torch.randn(2, verts.shape[0], 3, generator=torch.Generator().manual_seed(5))
    assert (laplacian_loss(noisy, faces) > 0.1).all()
    assert (edge_loss(noisy, faces) > 0.1).all()


def test_edge_loss_is_mean_squared_edge_length_in_mm2():
    verts, faces = grid_mesh(n=2, size=10.0)  # 4 sides of 10 mm, 1 diagonal of 10 sqrt(2) mm
    out = edge_loss(verts[None], faces)
    assert torch.allclose(out, torch.tensor([(4 * 100.0 + 200.0) / 5]))
    # size dependence on a posed mesh: scaling the mesh by s scales the loss by s^2
    assert torch.allclose(edge_loss(3.0 * verts[None], faces), 9.0 * out)


def test_laplacian_methods():
    verts, faces = grid_mesh()
    bumped = verts.clone()
    bumped[12, 2] = 5.0  # centre vertex of the 5 x 5 grid
    x = torch.stack([verts, bumped])
    for method in ("uniform", "cot", "cotcurv"):
        out = laplacian_loss(x, faces, method=method)
        assert out.shape == (2,)
        # a flat grid is not 0 (boundary vertices have an in-plane Laplacian); the bump adds to it
        assert torch.isfinite(out).all() and out[1] > 1.05 * out[0], (method, out)
    out64 = laplacian_loss(x.double(), faces, method="cot")
    assert out64.dtype == torch.float64
    assert torch.allclose(out64.float(), laplacian_loss(x, faces, method="cot"), atol=1e-5)


def test_normal_consistency_flat_vs_crumpled():
    verts, faces = grid_mesh(n=6)
    flat = verts[None]
    assert normal_consistency_loss(flat, faces).abs().max() < 1e-6
    z = torch.randn(verts.shape[0], generator=torch.Generator().manual_seed(6)) * 5.0
    crumpled = verts.clone()
    crumpled[:, 2] = z
    assert normal_consistency_loss(crumpled[None], faces) > 0.05
    # unitless: independent of the mesh's size
    assert torch.allclose(
        normal_consistency_loss(10.0 * crumpled[None], faces), normal_consistency_loss(crumpled[None], faces)
    )


def test_mesh_losses_match_pytorch3d_per_element():
    verts, faces = grid_mesh()
    x = verts + torch.randn(3, verts.shape[0], 3, generator=torch.Generator().manual_seed(7))
    for ours, theirs in (
        (laplacian_loss, mesh_laplacian_smoothing),
        (normal_consistency_loss, mesh_normal_consistency),
        (edge_loss, mesh_edge_loss),
    ):
        out = ours(x, faces)
        ref = torch.stack([theirs(Meshes(verts=x[b : b + 1], faces=faces[None])) for b in range(3)])
        assert torch.allclose(out, ref.reshape(3), rtol=1e-5, atol=1e-6), ours.__name__


def test_mesh_losses_accept_int32_faces_and_empty_batch():
    verts, faces = grid_mesh(n=3)
    x = verts[None].expand(2, -1, -1)
    assert torch.equal(edge_loss(x, faces.int()), edge_loss(x, faces))
    assert edge_loss(x[:0], faces).shape == (0,)


def test_offset_loss_value():
    offsets = torch.zeros(1, 4, 3)
    offsets[0, 0] = torch.tensor([3.0, 4.0, 0.0])
    assert torch.allclose(offset_loss(offsets), torch.tensor([25.0 / 4]))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

_verts, _faces = grid_mesh(n=3)
_V = _verts.shape[0]

ERROR_CASES = [
    ("pred", lambda: silhouette_loss(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))),
    ("target", lambda: silhouette_loss(torch.rand(2, 8, 8), torch.rand(2, 8, 9))),
    ("weight", lambda: silhouette_loss(torch.rand(2, 8, 8), torch.rand(2, 8, 8), torch.rand(8, 8))),
    ("pred_depth", lambda: depth_loss(torch.rand(2, 8), torch.rand(2, 8))),
    ("target_depth", lambda: depth_loss(torch.rand(2, 64, 64), torch.rand(2, 32, 32))),
    ("pred_mask", lambda: depth_loss(torch.rand(2, 8, 8), torch.rand(2, 8, 8), pred_mask=torch.rand(1, 8, 8))),
    ("target_mask", lambda: depth_loss(torch.rand(2, 8, 8), torch.rand(2, 8, 8), target_mask=torch.rand(2, 8))),
    ("beta", lambda: depth_loss(torch.rand(2, 8, 8), torch.rand(2, 8, 8), beta=-1.0)),
    ("verts", lambda: laplacian_loss(_verts, _faces)),
    ("verts", lambda: edge_loss(torch.rand(1, _V, 2), _faces)),
    ("faces", lambda: normal_consistency_loss(_verts[None], _faces[None])),
    ("faces", lambda: edge_loss(_verts[None], _faces.float())),
    ("method", lambda: laplacian_loss(_verts[None], _faces, method="cotan")),
    ("offsets", lambda: offset_loss(torch.rand(5, 3))),
    ("angles", lambda: joint_limit_loss(torch.rand(5), torch.rand(5), torch.rand(5))),
    ("lower", lambda: joint_limit_loss(torch.rand(2, 5), torch.rand(4), torch.rand(5))),
    ("upper", lambda: joint_limit_loss(torch.rand(2, 5), torch.rand(5), torch.rand(3, 5))),
    ("pred", lambda: keypoint_3d_loss(torch.rand(2, 21, 2), torch.rand(2, 21, 2))),
    ("target", lambda: keypoint_3d_loss(torch.rand(2, 21, 3), torch.rand(2, 20, 3))),
    ("weights", lambda: keypoint_3d_loss(torch.rand(2, 21, 3), torch.rand(2, 21, 3), torch.rand(20))),
    ("pred", lambda: keypoint_2d_loss(torch.rand(2, 21, 3), torch.rand(2, 21, 3))),
    ("weights", lambda: keypoint_2d_loss(torch.rand(2, 21, 2), torch.rand(2, 21, 2), torch.rand(3, 21))),
    ("mean", lambda: pose_prior_loss(torch.rand(2, 5), torch.rand(6))),
    ("weight", lambda: pose_prior_loss(torch.rand(2, 5), None, torch.rand(1, 5))),
    ("pred", lambda: silhouette_loss([[0.0]], torch.rand(1, 1, 1))),
]


@pytest.mark.parametrize("arg, call", ERROR_CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(ERROR_CASES)])
def test_errors_name_the_argument(arg, call):
    with pytest.raises(ValueError, match=rf"^{arg} must"):
        call()


def test_error_message_shows_expected_and_actual_shape():
    with pytest.raises(ValueError) as info:
        depth_loss(torch.rand(2, 32, 32), torch.rand(2, 64, 64))
    assert str(info.value) == (
        "target_depth must have shape (B, H, W) like pred_depth (2, 32, 32), got (2, 64, 64)"
    )


# --------------------------------------------------------------------------------------------
# Package hygiene
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["image", "mesh", "pose", "penetration", "temporal"])
def test_docstring_examples_run(module):
    mod = __import__(f"losses.{module}", fromlist=[module])
    result = doctest.testmod(mod, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_losses_does_not_import_other_layers():
    for path in LOSSES_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"hands", "renderers", "fitting"}, (path.name, name)


def test_public_api():
    assert set(losses.__all__) == {
        "silhouette_loss", "depth_loss", "laplacian_loss", "normal_consistency_loss", "edge_loss",
        "offset_loss", "joint_limit_loss", "keypoint_3d_loss", "keypoint_2d_loss", "pose_prior_loss",
        "point_to_vertex_loss", "nearest_vertex", "sphere_penetration_loss", "fingertip_palm_penetration_loss",
        "cylinder_collision_loss", "sphere_overlap_stats", "temporal_smoothness_loss",
        # the energies as residual vectors (losses.residuals), for Levenberg-Marquardt
        "smooth_l1_residual", "silhouette_residuals", "depth_residuals", "point_to_vertex_residuals",
        "keypoint_residuals", "joint_limit_residuals", "temporal_residuals",
        "hinge_residuals", "sqrt_energy_residual", "penetration_residuals", "cylinder_collision_residuals",
        # the texture consistency energy (losses.texture, DeepHandMesh supp. Eq. 5)
        "texture_ncc_loss",
    }
    for name in losses.__all__:
        assert getattr(losses, name).__doc__


# -- data-to-model -------------------------------------------------------------------------
def test_point_to_vertex_loss_matches_a_brute_force_nearest_vertex():
    g = torch.Generator().manual_seed(0)
    points, verts = torch.randn(2, 30, 3, generator=g) * 20, torch.randn(2, 50, 3, generator=g) * 20
    got = losses.point_to_vertex_loss(points, verts, beta=5.0)
    d = torch.cdist(points, verts).min(-1).values
    want = torch.where(d < 5.0, 0.5 * d ** 2 / 5.0, d - 2.5).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_vertex_agrees_with_pytorch3d_knn_in_blocks_and_with_padding(dtype, monkeypatch):
    from pytorch3d.ops import knn_points

    import losses.points

    g = torch.Generator().manual_seed(1)
    verts = (torch.randn(3, 200, 3, generator=g) * 40 + torch.tensor([0.0, 0.0, 450.0])).to(dtype)
    points = verts[:, torch.randint(0, 200, (90,), generator=g)] + torch.randn(3, 90, 3, generator=g).to(dtype)
    points[2, 60:] = 0.0  # padding
    lengths = torch.tensor([90, 90, 60])
    want = knn_points(points.float(), verts.float(), lengths1=lengths, K=1).idx[..., 0]
    monkeypatch.setattr(losses.points, "_CPU_BLOCK", 200 * 7)  # blocks of 7 points
    got = losses.nearest_vertex(points, verts, lengths)
    assert got.shape == (3, 90) and got.dtype == torch.long
    assert torch.equal(got[:2], want[:2]) and torch.equal(got[2, :60], want[2, :60])


@pytest.mark.parametrize("n_verts, groups", [(5, 64), (200, 64), (1609, 64), (97, 7)])
def test_nearest_vertex_two_level_minimum_is_the_exact_argmin(n_verts, groups, monkeypatch):
    """The CPU search's group minima (vertices padded to S x G) pick the exact float64 argmin."""
    import losses.points

    g = torch.Generator().manual_seed(2)
    verts = torch.randn(2, n_verts, 3, generator=g) * 40 + torch.tensor([0.0, 0.0, 450.0])
    points = verts[:, torch.randint(0, n_verts, (300,), generator=g)] + torch.randn(2, 300, 3, generator=g) * 2
    monkeypatch.setattr(losses.points, "_CPU_GROUPS", groups)
    got = losses.nearest_vertex(points, verts)
    d = torch.cdist(points.double(), verts.double())
    want = d.argmin(-1)
    # equal, or a float32 near-tie: the chosen vertex is as near as the exact one to 1e-3 mm^2
    chosen, best = d.gather(-1, got[..., None])[..., 0] ** 2, d.min(-1).values ** 2
    assert (got == want).float().mean() > 0.99 and bool(((chosen - best) < 1e-3).all())
    assert int(got.max()) < n_verts


def test_point_to_vertex_loss_is_zero_on_the_vertices_and_ignores_padding():
    verts = torch.randn(1, 40, 3) * 10
    points = torch.cat([verts[:, :25], torch.full((1, 5, 3), 1e4)], 1)  # 5 padded far points
    loss = losses.point_to_vertex_loss(points, verts, lengths=torch.tensor([25]))
    assert float(loss) < 1e-6
    assert float(losses.point_to_vertex_loss(points, verts)) > 100.0


def test_point_to_vertex_loss_pulls_the_nearest_vertex_towards_the_point():
    verts = torch.tensor([[[0.0, 0.0, 0.0], [100.0, 0.0, 0.0]]], requires_grad=True)
    points = torch.tensor([[[3.0, 0.0, 0.0]]])
    losses.point_to_vertex_loss(points, verts).sum().backward()
    assert verts.grad[0, 0, 0] < 0  # descending moves vertex 0 towards +x
    assert verts.grad[0, 1].abs().sum() == 0


def test_point_to_vertex_loss_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="verts"):
        losses.point_to_vertex_loss(torch.zeros(2, 5, 3), torch.zeros(3, 4, 3))


def test_mesh_losses_reuse_the_topology_only_for_the_same_faces_and_match_pytorch3d_gradients():
    # the topology is cached per faces tensor values, vertex count, device and dtype: the same
    # vertices under other faces of the same shape must not hit the cached entry
    verts, faces = grid_mesh()
    other = faces.flip(0).roll(1, dims=1).clone()
    other[0] = torch.tensor([0, 5, 1])  # another triangle: another edge set
    x = (verts + torch.randn(2, verts.shape[0], 3, generator=torch.Generator().manual_seed(8))).double()
    for f in (faces, other, faces):
        for ours, theirs in ((laplacian_loss, mesh_laplacian_smoothing), (normal_consistency_loss, mesh_normal_consistency),
                             (edge_loss, mesh_edge_loss)):
            a = x.clone().requires_grad_(True)
            out = ours(a, f)
            out.sum().backward()
            b = x.clone().requires_grad_(True)
            L = None
            if theirs is mesh_laplacian_smoothing:  # pytorch3d builds it in float32: cast once
                m = Meshes(verts=b[:1].detach(), faces=f[None])
                L = m.laplacian_packed().double()
            ref = []
            for i in range(2):
                m = Meshes(verts=b[i : i + 1], faces=f[None])
                if L is not None:
                    m._laplacian_packed = L
                ref.append(theirs(m).reshape(()))
            torch.stack(ref).sum().backward()
            assert out.dtype == torch.float64
            # (pytorch3d weights by 1 / count in float32: agreement to about 1e-7)
            assert torch.allclose(out, torch.stack(ref).detach(), rtol=1e-6, atol=1e-12), ours.__name__
            assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-12), ours.__name__


def test_mesh_losses_reuse_the_topology_of_the_same_faces_tensor_without_reading_its_values():
    # in the fitting loop the same faces tensor comes every iteration: the hit must not compare
    # values (torch.equal reads them, a host-device synchronization on a GPU), and a faces tensor
    # changed in place must be checked again, not taken from the cache
    verts, faces = grid_mesh()
    faces = faces.clone()
    x = verts[None].double()
    before = edge_loss(x, faces)
    with mock.patch("torch.equal", side_effect=AssertionError("faces values read")):
        for fn in (edge_loss, normal_consistency_loss, laplacian_loss):
            fn(x, faces)
    faces[[0, 1]] = faces[[1, 0]].clone()  # the same triangles: equal topology, modified tensor
    with pytest.raises(AssertionError, match="faces values read"):
        with mock.patch("torch.equal", side_effect=AssertionError("faces values read")):
            edge_loss(x, faces)
    assert torch.allclose(edge_loss(x, faces), before)
