"""MANO files: restricted unpickling, mapping onto HandModelData, LBS against a plain-numpy
reference, the PCA pose space, and clear errors for bad files."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from hands import HandModel
from hands.mano import (MANO_TIP_VERTICES, ManoFileError, UnsafePickleError, load_mano, mano_pca_pose,
                        mano_pose, read_mano_arrays)
from hands.rig import SideError

V, F, J = 778, 1538, 16
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]


# -- chumpy-like classes, pickled under chumpy's module names (chumpy itself is not needed) --
class Ch:
    """Pickles like chumpy's Ch: its state is its ``__dict__`` (``x`` and bookkeeping such as
    a set of dirty variable names)."""

    def __init__(self, x):
        self.x = x
        self._dirty_vars = {"x"}
        self._itr = None


class Select:
    def __init__(self, a, idxs, preferred_shape):
        self.a, self.idxs, self.preferred_shape = a, idxs, preferred_shape
        self._dirty_vars = set()


@pytest.fixture
def chumpy_names(monkeypatch):
    """Make ``Ch``/``Select`` picklable as ``chumpy.ch.Ch`` / ``chumpy.reordering.Select``."""
    ch, reordering = types.ModuleType("chumpy.ch"), types.ModuleType("chumpy.reordering")
    for cls, mod in ((Ch, ch), (Select, reordering)):
        monkeypatch.setattr(cls, "__module__", mod.__name__)
        setattr(mod, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch)
    monkeypatch.setitem(sys.modules, "chumpy.reordering", reordering)


def hand_skeleton_mm():
    """16 MANO joints of a plausible right hand in a canonical-like frame (mm): fingers -y,
    thumb +x, palm side -z; and the five fingertip points."""
    joints = np.zeros((J, 3))
    tips = {}
    for digit, first, (x, y) in (("index", 1, (25, -90)), ("middle", 4, (5, -95)),
                                 ("little", 7, (-33, -80)), ("ring", 10, (-15, -90))):
        pts = [np.array([x, y, 0.0])]
        for length in (40, 25, 20):
            pts.append(pts[-1] + [0, -length, 1.0])
        joints[first:first + 3] = pts[:3]
        tips[digit] = pts[3]
    thumb = np.array([[25, -20, -10], [45, -45, -20], [60, -65, -25], [70, -80, -28.0]])
    joints[13:16] = thumb[:3]
    tips["thumb"] = thumb[3]
    return joints, tips


def random_mano(seed=0, mirror=False):
    """Arrays of a MANO-format file (real keys, shapes and dtypes, random values), metres,
    in a frame rotated away from the canonical one."""
    rng = np.random.default_rng(seed)
    joints, tips = hand_skeleton_mm()
    verts = rng.uniform([-40, -190, -30], [80, 10, 20], size=(V, 3))
    reg = np.zeros((J, V))
    free = np.setdiff1d(np.arange(V), list(MANO_TIP_VERTICES.values()))
    chosen = rng.choice(free, size=(J, 4), replace=False)
    for j in range(J):
        offsets = rng.normal(size=(4, 3)) * 3.0
        verts[chosen[j]] = joints[j] + offsets - offsets.mean(0)
        reg[j, chosen[j]] = 0.25
    for d, i in MANO_TIP_VERTICES.items():
        verts[i] = tips[d]
    angle = 0.7
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]) @ \
        np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0.0]])
    if mirror:
        R = R @ np.diag([-1.0, 1, 1])
    verts = (verts @ R.T + [10.0, -20.0, 5.0]) / 1000.0
    weights = rng.uniform(size=(V, J)) ** 4
    weights /= weights.sum(1, keepdims=True)
    kintree = np.array([[4294967295] + PARENTS[1:], list(range(J))], dtype=np.int64)
    return {
        "v_template": verts,
        "f": rng.integers(0, V, size=(F, 3)).astype(np.uint32),
        "shapedirs": rng.normal(size=(V, 3, 10)) * 2e-3,
        "posedirs": rng.normal(size=(V, 3, 135)) * 5e-3,
        "J_regressor": reg,
        "kintree_table": kintree,
        "weights": weights,
        "hands_components": rng.normal(size=(45, 45)) * 0.3,
        "hands_mean": rng.normal(size=45) * 0.2,
        "hands_coeffs": rng.normal(size=(20, 45)),
        "J": reg @ verts,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_mano_pickle(path, arrays):
    """Pickle like the released files: shapedirs a chumpy Ch, hands_mean a chumpy Select,
    J_regressor a scipy csc_matrix, everything else numpy."""
    obj = dict(arrays)
    obj["shapedirs"] = Ch(arrays["shapedirs"])
    obj["hands_mean"] = Select(Ch(np.concatenate([[9.0], arrays["hands_mean"]])), np.arange(1, 46), (45,))
    obj["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def rodrigues(r):
    theta = np.linalg.norm(r)
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def reference_lbs(a, pose, beta):
    """MANO's forward pass in plain numpy (Romero et al. 2017 / SMPL Eqs. 2-10), metres."""
    v_shaped = a["v_template"] + a["shapedirs"] @ beta
    joints = a["J_regressor"] @ v_shaped
    R = [rodrigues(p) for p in pose.reshape(J, 3)]
    feat = np.concatenate([(R[j] - np.eye(3)).ravel() for j in range(1, J)])
    v_posed = v_shaped + a["posedirs"] @ feat
    G = []
    for j in range(J):
        local = np.eye(4)
        local[:3, :3] = R[j]
        local[:3, 3] = joints[j] - (joints[PARENTS[j]] if j else 0)
        G.append(local if j == 0 else G[PARENTS[j]] @ local)
    A = np.stack(G)
    A[:, :3, 3] -= np.einsum("jab,jb->ja", A[:, :3, :3], joints)
    T = np.einsum("vj,jab->vab", a["weights"], A)
    return np.einsum("vab,vb->va", T[:, :3, :3], v_posed) + T[:, :3, 3]


def to_canonical(x_m, frame):
    return (torch.from_numpy(x_m * 1000.0).float() - frame.origin) @ frame.rotation.T


@pytest.fixture
def mano_file(tmp_path, chumpy_names):
    arrays = random_mano()
    return write_mano_pickle(tmp_path / "MANO_RIGHT.pkl", arrays), arrays


def test_pickle_with_chumpy_and_sparse_loads_into_the_real_layout(mano_file):
    path, arrays = mano_file
    raw = read_mano_arrays(path)
    np.testing.assert_allclose(raw["shapedirs"], arrays["shapedirs"])
    np.testing.assert_allclose(raw["hands_mean"], arrays["hands_mean"])  # chumpy Select
    np.testing.assert_allclose(raw["J_regressor"], arrays["J_regressor"])  # sparse, densified
    data = load_mano(path)
    assert (data.num_vertices, data.faces.shape[0], data.num_joints, data.num_shapes) == (V, F, J, 10)
    assert data.num_dofs == 20 and data.side == "right"
    assert data.pose_basis.shape == (135, V, 3) and data.pose_components.shape == (45, 45)
    assert data.keypoint_vertex.tolist()[4::4] == [744, 320, 443, 554, 671]
    assert "chumpy" not in sys.modules or not hasattr(sys.modules["chumpy"], "__file__")


def test_npz_with_the_same_arrays_loads_the_same_model(tmp_path, mano_file):
    path, arrays = mano_file
    npz = tmp_path / "mano_right.npz"
    np.savez(npz, **{k: v for k, v in arrays.items() if not isinstance(v, str)})
    a, b = load_mano(path), load_mano(npz)
    torch.testing.assert_close(a.vertices, b.vertices)
    torch.testing.assert_close(a.pose_basis, b.pose_basis)


def test_rest_pose_reproduces_the_template(mano_file):
    path, arrays = mano_file
    data, frame = load_mano(path, return_frame=True)
    out = HandModel(data)()
    torch.testing.assert_close(out.vertices[0], to_canonical(arrays["v_template"], frame), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.joints[0], to_canonical(arrays["J_regressor"] @ arrays["v_template"], frame),
                               atol=1e-3, rtol=0)
    # canonical frame: fingers towards -y, thumb towards +x, thumb on the palm side (-z)
    kp = out.keypoints[0]
    assert kp[12, 1] < kp[0, 1] - 100 and kp[4, 0] > kp[20, 0] + 40 and kp[4, 2] < kp[9, 2]


def test_axis_angle_pose_matches_a_numpy_reference_lbs(mano_file):
    path, arrays = mano_file
    data, frame = load_mano(path, return_frame=True)
    model = HandModel(data)
    rng = np.random.default_rng(5)
    pose = rng.normal(size=48) * 0.4
    beta = rng.normal(size=10)
    expected = to_canonical(reference_lbs(arrays, pose, beta), frame)
    out = model(pose=mano_pose(torch.tensor(pose[None], dtype=torch.float32), frame),
                beta=torch.tensor(beta[None], dtype=torch.float32))
    torch.testing.assert_close(out.vertices[0], expected, atol=2e-3, rtol=0)
    # the correctives matter: without them the result is off by millimetres
    model.pose_basis = None
    off = model(pose=mano_pose(torch.tensor(pose[None], dtype=torch.float32), frame),
                beta=torch.tensor(beta[None], dtype=torch.float32))
    assert (off.vertices[0] - expected).norm(dim=-1).max() > 1.0


def test_pca_pose_with_and_without_flat_hand_mean(mano_file):
    path, arrays = mano_file
    data, frame = load_mano(path, return_frame=True)
    model = HandModel(data)
    zero = torch.zeros(1, 6)
    flat = model(pose=mano_pca_pose(data, zero, flat_hand_mean=True)).vertices[0]
    torch.testing.assert_close(flat, model.v_template, atol=1e-3, rtol=0)  # the flat template
    relaxed = model(pose=mano_pca_pose(data, zero, flat_hand_mean=False)).vertices[0]
    mean_pose = np.concatenate([np.zeros(3), arrays["hands_mean"]])
    torch.testing.assert_close(relaxed, to_canonical(reference_lbs(arrays, mean_pose, np.zeros(10)), frame),
                               atol=2e-3, rtol=0)
    coeffs = np.array([[0.5, -0.3, 0.2, 0.0, 0.1, -0.4]])
    got = model(pose=mano_pca_pose(data, torch.tensor(coeffs, dtype=torch.float32))).vertices[0]
    pose = np.concatenate([np.zeros(3), arrays["hands_mean"] + coeffs[0] @ arrays["hands_components"][:6]])
    torch.testing.assert_close(got, to_canonical(reference_lbs(arrays, pose, np.zeros(10)), frame),
                               atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="coeffs"):
        mano_pca_pose(data, torch.zeros(1, 46))


def test_the_26_dof_layout_bends_fingers_towards_the_palm(mano_file, hand_data):
    data = load_mano(mano_file[0])
    assert data.dof_names == hand_data.dof_names
    torch.testing.assert_close(data.dof_lower, hand_data.dof_lower)
    model = HandModel(data)
    rest = model().keypoints[0]
    for d, tip in (("index", 7), ("little", 19)):  # DIP joints (the tip vertices' weights are random)
        theta = torch.zeros(1, 20)
        theta[0, data.dof_names.index(f"{d}_mcp_flex")] = 1.0
        assert model(theta=theta).keypoints[0, tip, 2] < rest[tip, 2] - 20  # towards the palm side
        theta = torch.zeros(1, 20)
        theta[0, data.dof_names.index(f"{d}_mcp_abd")] = 0.3
        assert model(theta=theta).keypoints[0, tip, 0] < rest[tip, 0] - 5  # towards the little finger


class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['HANDFIT_BOOM']}",))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("HANDFIT_BOOM", str(marker))
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"v_template": Boom()}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load .*system"):
        load_mano(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"v_template": Boom()}, protocol=0))
    with pytest.raises(UnsafePickleError):
        read_mano_arrays(path)
    assert not marker.exists()


def test_missing_key_wrong_shape_and_missing_file_are_named(tmp_path, chumpy_names):
    arrays = random_mano()
    del arrays["posedirs"]
    with pytest.raises(ManoFileError, match=r"lacks the keys \['posedirs'\]"):
        load_mano(write_mano_pickle(tmp_path / "MANO_RIGHT.pkl", arrays))
    arrays = random_mano()
    arrays["weights"] = arrays["weights"][:, :15]
    with pytest.raises(ManoFileError, match=r"weights must have shape \(778, 16\), got \(778, 15\)"):
        load_mano(write_mano_pickle(tmp_path / "MANO_RIGHT.pkl", arrays))
    with pytest.raises(ManoFileError, match="no such file"):
        load_mano(tmp_path / "nothing.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ManoFileError, match="not a readable MANO pickle"):
        load_mano(tmp_path / "junk.pkl")


def test_a_left_file_given_as_right_is_refused(tmp_path, chumpy_names):
    arrays = random_mano(mirror=True)
    path = write_mano_pickle(tmp_path / "MANO_LEFT.pkl", arrays)
    with pytest.raises(SideError, match="expected a right hand.*left hand"):
        load_mano(path, side="right")
    left = load_mano(path)  # the name says left
    assert left.side == "left"
    kp = HandModel(left)().keypoints[0]
    assert kp[4, 0] < kp[20, 0] - 40  # thumb towards -x: a left hand in the canonical frame
    # the known sign fix of MANO_LEFT's shapedirs: x components flipped before mapping
    unfixed = load_mano(path, fix_left_shapedirs=False)
    assert not torch.allclose(left.shape_basis, unfixed.shape_basis)
    # the fix is exactly the reflection of the x components in MANO's frame
    _, frame = load_mano(path, return_frame=True)
    flip = frame.rotation @ torch.diag(torch.tensor([-1.0, 1.0, 1.0])) @ frame.rotation.T
    torch.testing.assert_close(left.shape_basis, unfixed.shape_basis @ flip.T, atol=1e-4, rtol=0)


def test_mirrored_mano_keeps_correctives_and_pca_space_mirror_symmetric(mano_file):
    from hands.model_data import MIRROR

    right = load_mano(mano_file[0])
    left = right.mirrored()
    g = torch.Generator().manual_seed(2)
    theta = torch.rand(2, 20, generator=g) * 0.8
    coeffs = torch.randn(2, 8, generator=g) * 0.5
    a = HandModel(right)(theta=theta, pose=mano_pca_pose(right, coeffs))
    b = HandModel(left)(theta=theta, pose=mano_pca_pose(left, coeffs))
    torch.testing.assert_close(b.vertices, a.vertices @ MIRROR, atol=2e-3, rtol=0)


def test_cli_model_info_reads_a_mano_file(mano_file, capsys):
    from fitting.cli import main

    assert main(["model", "info", "--model", "mano", "--mano-path", str(mano_file[0])]) == 0
    out = capsys.readouterr().out
    assert "vertices 778  faces 1538  joints 16  shape dimensions 10  articulation DoF 20" in out
    assert "pose correctives: yes; PCA pose components: 45" in out
