"""Every layer follows its inputs' device and dtype (kornia-style ``device`` / ``dtype`` fixtures).

CUDA cases skip without a GPU; on the CPU the float64 cases catch tensors made in the default
dtype, the way a CUDA run would catch tensors made on the CPU.
"""

import pytest
import torch

import losses
from hands import CollisionProxies, load_hand
from renderers import Camera, make_renderer


def posed(device, dtype):
    """The default hand on ``device`` in ``dtype``, and two posed parameter sets in front of the camera."""
    model = load_hand("default", device=device, dtype=dtype)
    p = model.neutral_parameters(2)
    p["transl"] = torch.tensor([[0.0, 0.0, 450.0], [10.0, 5.0, 480.0]], device=device, dtype=dtype)
    p["theta"] = p["theta"] + 0.2
    return model, p


def test_hand_model_and_proxies_follow_device_and_dtype(device, dtype):
    model, p = posed(device, dtype)
    out = model(**p)
    for t in out:
        assert t.device.type == device.type and t.dtype == dtype
    proxies = CollisionProxies(model).to(device, dtype)
    centers = proxies.centers(out)
    assert centers.device.type == device.type and centers.dtype == dtype
    largest, pairs = losses.sphere_overlap_stats(centers, proxies.radii, proxies.allowed)
    assert largest.dtype == dtype and largest.device.type == device.type


@pytest.mark.parametrize("name", ["soft", "splat"])
def test_renderers_follow_device_and_dtype(name, device, dtype):
    model, p = posed(device, dtype)
    verts = model(**p).vertices.requires_grad_(True)
    cam = Camera(180.0, 180.0, 31.5, 31.5, 64, 64).to(device, dtype)
    out = make_renderer(name)(verts, model.faces, cam)
    for t in (out.silhouette, out.depth):
        assert t.dtype == dtype and t.device.type == device.type
    assert out.mask.dtype == torch.bool and out.mask.device.type == device.type
    (out.silhouette.sum() + out.depth.sum()).backward()
    assert verts.grad.dtype == dtype and bool(torch.isfinite(verts.grad).all())


def test_losses_follow_device_and_dtype(device, dtype):
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.rand(*s, generator=g).to(device, dtype)  # noqa: E731
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]], device=device)
    values = [
        losses.silhouette_loss(rand(2, 8, 8), rand(2, 8, 8)),
        losses.depth_loss(rand(2, 8, 8) * 500, rand(2, 8, 8) * 500),
        losses.laplacian_loss(rand(2, 4, 3), faces),
        losses.edge_loss(rand(2, 4, 3), faces),
        losses.normal_consistency_loss(rand(2, 4, 3), faces),
        losses.offset_loss(rand(2, 4, 3)),
        losses.point_to_vertex_loss(rand(2, 5, 3), rand(2, 4, 3)),
        losses.keypoint_3d_loss(rand(2, 21, 3), rand(2, 21, 3)),
        losses.keypoint_2d_loss(rand(2, 21, 2), rand(2, 21, 2)),
        losses.joint_limit_loss(rand(2, 20), rand(20) - 1, rand(20)),
        losses.pose_prior_loss(rand(2, 20)),
        losses.temporal_smoothness_loss(rand(2, 21, 3), rand(2, 21, 3), rand(2, 21, 3)),
        losses.sphere_penetration_loss(rand(2, 3, 3) * 20, rand(3) * 10, ~torch.eye(3, dtype=torch.bool,
                                                                                   device=device)),
    ]
    for v in values:
        assert v.shape == (2,) and v.dtype == dtype and v.device.type == device.type
