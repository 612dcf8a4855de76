import math

import pytest
import torch
from pytorch3d.transforms import axis_angle_to_matrix

from hands import KEYPOINT_NAMES, HandModel, HandModelData
from hands.model_data import MIRROR


def test_rest_pose_reproduces_template(hand_model):
    out = hand_model()
    assert out.vertices.shape == (1, hand_model.num_vertices, 3)
    assert out.keypoints.shape == (1, len(KEYPOINT_NAMES), 3)
    assert torch.allclose(out.vertices[0], hand_model.v_template, atol=1e-4)
    assert torch.allclose(out.joints[0], hand_model.rest_joints, atol=1e-4)


def test_identity_transforms_are_identity_skinning(hand_model):
    """With zero articulation and unit bone scales LBS leaves shaped rest vertices untouched."""
    g = torch.Generator().manual_seed(0)
    beta = torch.randn(2, hand_model.num_shapes, generator=g) * 0.3
    offsets = torch.randn(2, hand_model.num_vertices, 3, generator=g)
    out = hand_model(beta=beta, offsets=offsets)
    expected = hand_model.v_template + torch.einsum("bs,svc->bvc", beta, hand_model.shape_basis) + offsets
    assert torch.allclose(out.vertices, expected, atol=1e-4)
    eye = torch.eye(3).expand_as(out.transforms[..., :3, :3])
    rel = out.transforms[..., :3, :3] @ hand_model.rest_orientations.transpose(-1, -2)
    assert torch.allclose(rel, eye, atol=1e-5)


def test_neutral_hand_is_a_plausible_right_hand(hand_model):
    kp = hand_model().keypoints[0]
    length = (kp[12] - kp[0]).norm()  # wrist to middle fingertip
    assert 150.0 < length < 220.0, f"hand length {length:.0f} mm"
    # canonical frame: fingers towards -y, thumb towards +x
    assert kp[12, 1] < kp[0, 1] - 100.0
    assert kp[4, 0] > kp[20, 0] + 40.0


def test_left_hand_is_the_mirror_image(hand_data):
    right, left = HandModel(hand_data), HandModel(hand_data.mirrored())
    g = torch.Generator().manual_seed(1)
    theta = torch.rand(3, right.num_dofs, generator=g) * 0.8
    beta = torch.randn(3, right.num_shapes, generator=g) * 0.2
    a, b = right(theta=theta, beta=beta), left(theta=theta, beta=beta)
    assert torch.allclose(b.vertices, a.vertices @ MIRROR, atol=1e-3)
    assert torch.allclose(b.keypoints, a.keypoints @ MIRROR, atol=1e-3)
    # mirrored faces keep outward normals: the signed volume keeps its sign
    def volume(v, f):
        tri = v[f]
        return torch.linalg.det(tri).sum() / 6.0
    assert volume(b.vertices[0], left.faces) * volume(a.vertices[0], right.faces) > 0


def test_forward_kinematics_rotates_children_about_the_joint(hand_model):
    data = hand_model.data
    d = data.dof_names.index("index_mcp_flex")
    j = int(data.dof_joint[d])
    child = data.parents.tolist().index(j)
    angle = 0.9
    theta = torch.zeros(1, hand_model.num_dofs)
    theta[0, d] = angle
    rest, posed = hand_model(), hand_model(theta=theta)
    axis_world = hand_model.rest_orientations[j] @ data.dof_axis[d]
    R = axis_angle_to_matrix(axis_world * angle)
    pivot = rest.joints[0, j]
    expected = pivot + R @ (rest.joints[0, child] - pivot)
    assert torch.allclose(posed.joints[0, child], expected, atol=1e-3)
    # flexion bends towards the palm (-z in the canonical frame): the tip moves to -z
    assert posed.keypoints[0, 8, 2] < rest.keypoints[0, 8, 2] - 20.0
    # the other fingers did not move
    assert torch.allclose(posed.keypoints[0, 12], rest.keypoints[0, 12], atol=1e-4)


def test_global_transform(hand_model):
    rest = hand_model()
    g = torch.tensor([[0.0, 0.0, math.pi / 2]])
    t = torch.tensor([[10.0, -20.0, 500.0]])
    out = hand_model(global_orient=g, transl=t)
    x, y, z = rest.vertices[0].unbind(-1)
    expected = torch.stack([-y, x, z], -1) + t
    assert torch.allclose(out.vertices[0], expected, atol=1e-3)


def test_bone_scale_stretches_finger(hand_model):
    alpha = torch.ones(1, 6)
    alpha[0, 3] = 1.2  # middle finger
    rest, out = hand_model(), hand_model(alpha=alpha)
    seg = lambda o: float((o.keypoints[0, 11] - o.keypoints[0, 9]).norm())  # noqa: E731 MCP->DIP
    assert seg(out) == pytest.approx(1.2 * seg(rest), rel=1e-4)
    assert torch.allclose(out.keypoints[0, 5:9], rest.keypoints[0, 5:9], atol=1e-4)


def test_limits_clamp(hand_model):
    theta = torch.full((1, hand_model.num_dofs), 5.0)
    clamped = hand_model.clamp_theta(theta)
    assert torch.equal(clamped[0], hand_model.dof_upper)
    assert torch.equal(hand_model.clamp_theta(-theta)[0], hand_model.dof_lower)
    inside = (hand_model.dof_lower + hand_model.dof_upper)[None] / 2
    assert torch.equal(hand_model.clamp_theta(inside), inside)


@pytest.mark.parametrize("name", ["global_orient", "theta", "alpha", "beta", "offsets"])
def test_gradcheck(hand_data, name):
    model = HandModel(hand_data).double()
    params = {k: v.double() for k, v in model.neutral_parameters(1).items()}
    g = torch.Generator().manual_seed(2)
    params["theta"] = torch.rand(1, model.num_dofs, generator=g, dtype=torch.float64) * 0.5
    params["global_orient"] = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)
    x = params.pop(name)
    if name == "offsets":
        x = x[:, :40].clone()  # a few vertices keep the numerical Jacobian small
    x.requires_grad_(True)
    sample = torch.arange(0, model.num_vertices, 97)

    def f(x):
        kw = dict(params)
        if name == "offsets":
            full = torch.zeros(1, model.num_vertices, 3, dtype=x.dtype)
            full = torch.cat([x, full[:, 40:]], dim=1)
            kw[name] = full
            out = model(**kw)
            return out.vertices[:, :40]
        kw[name] = x
        out = model(**kw)
        return torch.cat([out.keypoints, out.vertices[:, sample]], dim=1)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


def test_bad_parameter_shapes(hand_model):
    with pytest.raises(ValueError, match="theta"):
        hand_model(theta=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="batch size"):
        hand_model(theta=torch.zeros(2, hand_model.num_dofs), beta=torch.zeros(3, hand_model.num_shapes))


def test_model_data_roundtrip_and_validation(hand_data, tmp_path):
    path = tmp_path / "hand.pt"
    hand_data.save(path)
    again = HandModelData.load(path)
    assert torch.equal(again.vertices, hand_data.vertices)
    assert again.dof_names == hand_data.dof_names
    with pytest.raises(ValueError, match="faces"):
        HandModelData(**{**hand_data.__dict__, "faces": hand_data.faces.clone().fill_(10**6)})
    with pytest.raises(ValueError, match="cannot read"):
        HandModelData.load(tmp_path / "missing.pt")


def test_model_files_without_the_optional_pose_fields_still_load(hand_data, tmp_path):
    """Caches written before pose correctives existed lack those fields; they load as None."""
    path = tmp_path / "hand.pt"
    hand_data.save(path)
    fields = torch.load(path, weights_only=True)
    for k in ("pose_basis", "pose_components", "pose_mean"):
        del fields[k]
    torch.save(fields, path)
    data = HandModelData.load(path)
    assert data.pose_basis is None and data.pose_components is None
    torch.testing.assert_close(data.vertices, hand_data.vertices)
    del fields["faces"]
    torch.save(fields, path)
    with pytest.raises(ValueError, match=r"lacks \['faces'\]"):
        HandModelData.load(path)


def test_pose_corrective_basis_is_checked_and_applied(hand_data):
    import dataclasses

    J, V = hand_data.num_joints, hand_data.num_vertices
    with pytest.raises(ValueError, match="pose_basis must have shape"):
        dataclasses.replace(hand_data, pose_basis=torch.zeros(9 * J, V, 3))
    basis = torch.zeros(9 * (J - 1), V, 3)
    basis[:, :, 2] = 1.0  # every entry of R - I pushes every vertex along +z
    model = HandModel(dataclasses.replace(hand_data, pose_basis=basis))
    torch.testing.assert_close(model().vertices[0], model.v_template)  # rest: R - I = 0
    theta = torch.zeros(1, model.num_dofs)
    theta[0, 0] = 0.5
    j = int(hand_data.dof_joint[0])
    R0 = hand_data.rest_orientations[j]
    axis = R0 @ hand_data.dof_axis[0]
    feat = (axis_angle_to_matrix(0.5 * axis) - torch.eye(3)).sum()
    plain = HandModel(hand_data)(theta=theta)
    moved = model(theta=theta).vertices[0] - plain.vertices[0]
    # the corrective is added before skinning: it moves by the blended rotation of each vertex
    G_R = plain.transforms[0, :, :3, :3] @ hand_data.rest_orientations.transpose(-1, -2)  # (J, 3, 3)
    blend = torch.einsum("vj,jab->vab", model.skin_matrix, G_R)
    torch.testing.assert_close(moved, blend[:, :, 2] * feat, atol=1e-3, rtol=0)
    assert moved.abs().max() > 0.1
