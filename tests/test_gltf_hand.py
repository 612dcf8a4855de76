"""Rigged glTF/GLB hands (../shared/models): loading, bind pose, DoF, errors, and fits of a
frame rendered from the Godot hand with the default model (model mismatch) and with itself."""

import json

import numpy as np
import pytest
import torch

from fitting import SHARP_SILHOUETTE, FitConfig, Fitter, Stage
from fitting.synthetic import random_hand_parameters, render_fit_target
from hands import HandModel
from hands.gltf_hand import GltfHandError, _Reader, joint_key, load_gltf_hand
from hands.rig import SideError
from renderers import Camera, HybridRenderer

HANDS = {
    "godot_right": ("godot_xr_hand/hand_r.gltf", "right", 1764, 26),
    "godot_left": ("godot_xr_hand/hand_l.gltf", "left", 1764, 26),
    "webxr_right": ("webxr_hand/right.glb", "right", 1360, 25),
    "webxr_left": ("webxr_hand/left.glb", "left", 1360, 25),
}
SIZE = 96


@pytest.fixture(scope="module")
def models_dir(shared_dir):
    path = shared_dir / "models"
    if not (path / "godot_xr_hand").is_dir() or not (path / "webxr_hand").is_dir():
        pytest.skip(f"rigged hands not found under {path}")
    return path


def quat_matrix(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def node_world_matrices(doc):
    """World matrix of every node from the node hierarchy's TRS (the file's own pose)."""
    parent = {c: i for i, n in enumerate(doc.nodes) for c in (n.children or [])}

    def local(n):
        M = np.eye(4)
        if n.matrix:
            return np.array(n.matrix).reshape(4, 4).T
        if n.rotation:
            M[:3, :3] = quat_matrix(n.rotation)
        if n.scale:
            M[:3, :3] = M[:3, :3] * np.array(n.scale)
        if n.translation:
            M[:3, 3] = n.translation
        return M

    out = []
    for i in range(len(doc.nodes)):
        M, j = local(doc.nodes[i]), i
        while j in parent:
            j = parent[j]
            M = local(doc.nodes[j]) @ M
        out.append(M)
    return out


@pytest.mark.parametrize("name", sorted(HANDS))
def test_shared_hands_load_with_their_layout(models_dir, name):
    rel, side, n_vertices, n_joints = HANDS[name]
    data = load_gltf_hand(models_dir / rel)
    assert data.side == side
    assert (data.num_vertices, data.num_joints, data.num_dofs, data.num_shapes) == (n_vertices, n_joints, 20, 1)
    assert data.uv_coords.shape == (n_vertices, 2) and 0 <= float(data.uv_coords.min()) <= float(data.uv_coords.max()) <= 1
    kp = HandModel(data)().keypoints[0]
    length = float((kp[12] - kp[0]).norm())  # wrist to middle fingertip, mm
    assert 150 < length < 230, length
    assert kp[12, 1] < kp[0, 1] - 100  # fingers towards -y
    thumb_x = float(kp[4, 0] - kp[20, 0])
    assert (thumb_x > 40) if side == "right" else (thumb_x < -40)


@pytest.mark.parametrize("name", ["godot_right", "webxr_right", "webxr_left"])
def test_rest_pose_reproduces_the_bind_pose(models_dir, name):
    """Skin the mesh with the file's own node transforms (plain numpy, glTF's LBS) and compare
    with the model's rest pose mapped back into the file's frame."""
    path = models_dir / HANDS[name][0]
    data, (C, origin) = load_gltf_hand(path, return_frame=True)
    reader = _Reader(path)
    doc = reader.doc
    node = next(n for n in doc.nodes if n.mesh is not None and n.skin is not None)
    prim = doc.meshes[node.mesh].primitives[0]
    pos = reader.accessor(prim.attributes.POSITION).astype(np.float64)
    joints = reader.accessor(prim.attributes.JOINTS_0).astype(np.int64)
    weights = reader.accessor(prim.attributes.WEIGHTS_0).astype(np.float64)
    weights /= weights.sum(1, keepdims=True)
    skin = doc.skins[node.skin]
    ibm = reader.accessor(skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
    world = node_world_matrices(doc)
    M = np.stack([world[j] @ ibm[k] for k, j in enumerate(skin.joints)])  # (K, 4, 4)
    blend = np.einsum("vk,vkab->vab", weights, M[joints])
    skinned = np.einsum("vab,vb->va", blend[:, :3, :3], pos) + blend[:, :3, 3]

    out = HandModel(data)()
    back = (out.vertices[0].double() @ C.double()) + origin.double()  # canonical -> file frame, mm
    np.testing.assert_allclose(back.numpy(), skinned * 1000.0, atol=2e-2)
    heads = {doc.nodes[j].name: world[j][:3, 3] * 1000.0 for j in skin.joints}
    back_joints = (out.joints[0].double() @ C.double()) + origin.double()
    for k, jname in enumerate(data.joint_names):
        src = next(n for n in heads if joint_key(n) == (tuple(jname.split("_")) if "_" in jname else (jname, "")))
        np.testing.assert_allclose(back_joints[k].numpy(), heads[src], atol=2e-2, err_msg=jname)


def test_joint_names_of_openxr_and_webxr_are_recognised():
    assert joint_key("Index_Proximal_R") == ("index", "proximal")
    assert joint_key("pinky-finger-phalanx-intermediate") == ("little", "intermediate")
    assert joint_key("thumb-tip") == ("thumb", "tip")
    assert joint_key("XRHand_Wrist_L") == ("wrist", "")
    assert joint_key("Palm_R") == ("palm", "")
    assert joint_key("Armature") is None and joint_key("forearm") is None


def test_articulation_bends_towards_the_palm_and_the_little_finger(models_dir):
    for name in ("godot_right", "webxr_left"):
        data = load_gltf_hand(models_dir / HANDS[name][0])
        model = HandModel(data)
        rest = model().keypoints[0]
        theta = torch.zeros(1, 20)
        theta[0, data.dof_names.index("middle_mcp_flex")] = 1.0
        assert model(theta=theta).keypoints[0, 12, 2] < rest[12, 2] - 30  # palm side is -z
        theta = torch.zeros(1, 20)
        theta[0, data.dof_names.index("middle_mcp_abd")] = 0.3
        dx = float(model(theta=theta).keypoints[0, 12, 0] - rest[12, 0])
        assert (dx < -10) if data.side == "right" else (dx > 10)  # towards the little finger


def test_bad_gltf_input_is_named(models_dir, tmp_path):
    with pytest.raises(SideError, match="expected a right hand.*left hand"):
        load_gltf_hand(models_dir / "webxr_hand" / "left.glb", side="right")
    with pytest.raises(GltfHandError, match="no such file"):
        load_gltf_hand(tmp_path / "none.glb")
    (tmp_path / "junk.gltf").write_text("{not json")
    with pytest.raises(GltfHandError, match="not a readable glTF"):
        load_gltf_hand(tmp_path / "junk.gltf")
    # a hand whose index finger joints are renamed away
    doc = json.loads((models_dir / "godot_xr_hand" / "Hand_low_R.gltf").read_text())
    for node in doc["nodes"]:
        if node.get("name", "").startswith("Index_Distal"):
            node["name"] = "Bone_17"
    (tmp_path / "renamed_R.gltf").write_text(json.dumps(doc))
    with pytest.raises(GltfHandError, match="Bone_17.*not OpenXR/WebXR hand joints"):
        load_gltf_hand(tmp_path / "renamed_R.gltf")


# -- fits of a frame rendered from the Godot hand ------------------------------------------------

def crop_camera():
    f = SIZE * 450.0 / 220.0
    return Camera(fx=f, fy=f, cx=SIZE / 2 - 0.5, cy=SIZE / 2 - 0.5, width=SIZE, height=SIZE)


@pytest.fixture(scope="module")
def godot_frame(models_dir):
    godot = HandModel(load_gltf_hand(models_dir / "godot_xr_hand" / "hand_r.gltf"))
    renderer = HybridRenderer()
    truth = random_hand_parameters(godot, torch.Generator().manual_seed(3))
    truth["transl"] = torch.tensor([[0.0, 0.0, 450.0]])
    truth["beta"] = torch.zeros(1, 1)
    target, render = render_fit_target(godot, renderer, truth, crop_camera(), torch.Generator().manual_seed(0))
    return godot, renderer, truth, target, render


def iou_of(model, renderer, params, render):
    with torch.no_grad():
        fit = renderer(model(**params).vertices, model.faces, crop_camera())
    return float((fit.mask & render.mask).sum() / (fit.mask | render.mask).sum())


@pytest.mark.slow
def test_godot_frame_fitted_with_the_godot_hand_recovers_its_keypoints(godot_frame):
    godot, renderer, truth, target, render = godot_frame
    g = torch.Generator().manual_seed(1)
    init = {k: v.clone() for k, v in truth.items()}
    init["transl"] = truth["transl"] + torch.tensor([[4.0, -3.0, 6.0]])
    init["global_orient"] = truth["global_orient"] + 0.05
    init["theta"] = truth["theta"] + 0.1 * torch.randn(truth["theta"].shape, generator=g)
    config = FitConfig(stages=(Stage("global", ("global_orient", "transl"), 20, SHARP_SILHOUETTE),
                               Stage("articulation", ("global_orient", "transl", "theta"), 60, SHARP_SILHOUETTE)))
    state = Fitter(godot, renderer, config).run(target, init)
    with torch.no_grad():
        start = (godot(**init).keypoints - godot(**truth).keypoints).norm(dim=-1).mean()
        error = (godot(**state.params).keypoints - godot(**truth).keypoints).norm(dim=-1).mean()
    assert start > 6.0  # the start is off by more than the bound
    assert error < 3.0, f"mean keypoint error {error:.2f} mm (start {start:.1f} mm)"


@pytest.mark.slow
def test_godot_frame_fitted_with_the_default_model_reaches_iou(godot_frame, hand_model):
    """Model mismatch: the default hand explains a frame of another hand mesh."""
    godot, renderer, truth, target, render = godot_frame
    init = hand_model.neutral_parameters(1)
    for k in ("global_orient", "transl", "theta"):  # same canonical frame and DoF layout
        init[k] = truth[k].clone()
    start = iou_of(hand_model, renderer, init, render)
    late = {"global_orient": 0.005, "transl": 0.5, "theta": 0.01}
    config = FitConfig(stages=(
        Stage("global", ("global_orient", "transl"), 20, SHARP_SILHOUETTE),
        Stage("articulation", ("global_orient", "transl", "theta"), 80, SHARP_SILHOUETTE),
        Stage("shape", ("global_orient", "transl", "theta", "alpha", "beta", "offsets"), 80, SHARP_SILHOUETTE,
              learning_rates=late)))
    state = Fitter(hand_model, config=config).run(target, init)  # the default renderer
    iou = iou_of(hand_model, renderer, state.params, render)  # in the exact rasterization
    assert start < 0.8  # the two hands differ: the start is far from the bound
    assert iou > 0.9, f"IoU {iou:.3f} (start {start:.3f})"
