"""MANO model files supplied by the user, read without executing pickle code.

MANO (Romero, Tzionas, Black, "Embodied Hands", SIGGRAPH Asia 2017) is distributed by its
authors as ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` (Python 2 pickles holding numpy arrays, a
scipy sparse joint regressor and ``chumpy`` objects); handfit never ships them. An ``.npz``
with the same arrays works too.

Loading never runs code from the file: :class:`RestrictedUnpickler` resolves only numpy's
array/dtype reconstruction helpers, scipy's sparse matrix classes and ``copyreg``'s plain
object reconstructor; any ``chumpy`` class becomes an inert :class:`ChumpyStandIn` whose
pickled state is turned into a numpy array afterwards; every other global is refused with
:class:`UnsafePickleError`, before anything is called.

Mapping onto :class:`HandModelData` (lengths metres -> mm, the canonical hand frame of
:mod:`hands.model_data`):

- ``v_template`` (778, 3), ``f`` (1538, 3): template and faces;
- ``shapedirs`` (778, 3, 10): shape basis (betas), and ``J_regressor @ shapedirs`` for the joints;
  for a left hand the known sign fix ``shapedirs[:, 0, :] *= -1`` of the released MANO_LEFT
  file is applied (``fix_left_shapedirs``);
- ``posedirs`` (778, 3, 135): pose correctives on ``R_j - I`` of the 15 finger joints;
- ``J_regressor`` (16, 778): rest joints ``J_regressor @ v_template``;
- ``kintree_table`` (2, 16): parents; ``weights`` (778, 16): LBS weights;
- ``hands_components`` (45, 45), ``hands_mean`` (45,): the PCA pose space
  (:func:`mano_pca_pose`).

Joint frames are the canonical axes (MANO's joints have no frames of their own), so a MANO
axis-angle pose is the model's ``pose`` argument rotated into the canonical frame
(:func:`mano_pose`). The 20 articulation DoF of the default hand's layout
(:func:`hands.rig.articulation_table`) are defined on the MANO joints too, so the fitter works
unchanged. Keypoints: the 16 joints plus the fingertip vertices thumb 744, index 320,
middle 443, ring 554, little 671 (the common convention).
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .anny_hand import DIGITS
from .model_data import KEYPOINT_NAMES, HandModelData
from .rig import articulation_table, canonical_transform, check_side

__all__ = ["load_mano", "read_mano_arrays", "mano_pose", "mano_pca_pose", "ManoFrame", "ManoFileError",
           "UnsafePickleError", "RestrictedUnpickler", "ChumpyStandIn", "MANO_TIP_VERTICES", "MANO_CHAINS"]

NUM_VERTICES, NUM_FACES, NUM_JOINTS = 778, 1538, 16

#: MANO joint indices of each digit's three joints, proximal first (MANO's order: wrist,
#: index, middle, little, ring, thumb).
MANO_CHAINS = {"thumb": (13, 14, 15), "index": (1, 2, 3), "middle": (4, 5, 6), "ring": (10, 11, 12),
               "little": (7, 8, 9)}

#: Fingertip vertices of the MANO mesh (the common convention).
MANO_TIP_VERTICES = {"thumb": 744, "index": 320, "middle": 443, "ring": 554, "little": 671}

REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")


class ManoFileError(ValueError):
    """A MANO file that cannot be used; the message names the file, the key and the problem."""


class UnsafePickleError(ManoFileError):
    """The pickle asks for a global that is not on the allow-list (it could run code)."""


class ChumpyStandIn:
    """Inert stand-in for a pickled ``chumpy`` object: keeps its class name and state only."""

    chumpy_class = "chumpy.ch.Ch"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            raise ManoFileError(f"{self.chumpy_class} object with a {type(state).__name__} state, expected a dict")
        self.__dict__["_state"] = state

    def to_array(self) -> np.ndarray:
        """The array this chumpy object stands for (``Ch``: its ``x``; ``Select``: ``a.ravel()[idxs]``)."""
        state = self.__dict__.get("_state", {})
        if "x" in state:
            return _as_array(state["x"])
        if "a" in state and "idxs" in state:
            out = _as_array(state["a"]).ravel()[np.asarray(state["idxs"]).ravel()]
            shape = state.get("preferred_shape")
            return out.reshape(shape) if shape is not None else out
        if "a" in state and "axes" in state:  # chumpy.reordering.transpose
            return np.transpose(_as_array(state["a"]), state["axes"])
        if "a" in state and "newshape" in state:  # chumpy.reordering.Reshape
            return _as_array(state["a"]).reshape(state["newshape"])
        raise ManoFileError(f"cannot turn a pickled {self.chumpy_class} (fields {sorted(state)}) into an array")


def _as_array(value):
    if isinstance(value, ChumpyStandIn):
        return value.to_array()
    return np.asarray(value)


_stand_ins: dict[str, type] = {}


def _stand_in(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _stand_ins:
        _stand_ins[key] = type(f"ChumpyStandIn_{name}", (ChumpyStandIn,), {"chumpy_class": key})
    return _stand_ins[key]


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the globals a MANO file needs.

    Allowed: numpy's ``ndarray``, ``dtype`` and array/scalar reconstruction helpers; scipy's
    sparse ``csc``/``csr``/``coo`` matrices; ``copyreg._reconstructor`` with ``object``;
    ``_codecs.encode`` (how Python 3 writes bytes into protocol-2 pickles); the builtin
    ``set``/``frozenset`` (chumpy's pickled state, its ``__dict__``, holds a set of dirty names);
    ``chumpy.*`` classes, mapped to inert :class:`ChumpyStandIn` subclasses. Anything else
    (``os.system``, ``builtins.eval``, any function) raises :class:`UnsafePickleError` before
    it is called.
    """

    _NUMPY = {"_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype"}
    _NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                      "numpy._core.numeric"}
    _SPARSE = {"csc_matrix", "csr_matrix", "coo_matrix"}
    _SPARSE_MODULES = re.compile(r"^scipy\.sparse(\._?(csc|csr|coo|compressed))?$")

    def find_class(self, module: str, name: str):
        if module in self._NUMPY_MODULES and name in self._NUMPY:
            return super().find_class(module, name)
        if self._SPARSE_MODULES.match(module) and name in self._SPARSE:
            import scipy.sparse

            return getattr(scipy.sparse, name)
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return super().find_class("copyreg", name)
        if module == "_codecs" and name == "encode":  # bytes in protocol-2 pickles written by Python 3
            return super().find_class(module, name)
        if module in ("builtins", "__builtin__") and name in ("object", "set", "frozenset"):
            return {"object": object, "set": set, "frozenset": frozenset}[name]  # chumpy keeps sets
        if module == "chumpy" or module.startswith("chumpy."):
            return _stand_in(module, name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: a MANO file holds only numpy arrays, scipy sparse "
            "matrices and chumpy objects, and this global could run code"
        )


def _to_plain(value, key: str, path):
    if isinstance(value, ChumpyStandIn):
        return value.to_array()
    if hasattr(value, "toarray") and hasattr(value, "tocsr"):  # scipy sparse
        return np.asarray(value.toarray())
    if isinstance(value, (np.ndarray, np.generic, int, float, list, tuple)):
        return np.asarray(value)
    if isinstance(value, (str, bytes)):
        return value
    raise ManoFileError(f"mano_path {path}: key {key!r} holds a {type(value).__name__}, expected an array")


def read_mano_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a MANO ``.pkl`` (restricted unpickling) or ``.npz`` (no pickles) file.

    Returns:
        key -> numpy array (sparse matrices densified, chumpy objects turned into arrays,
        strings such as ``bs_style`` kept).

    Raises:
        ManoFileError: missing or unreadable file, not a dict of arrays.
        UnsafePickleError: the pickle refers to a global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise ManoFileError(f"mano_path {path}: no such file (MANO files are downloaded by the user from "
                            "https://mano.is.tue.mpg.de and passed with --mano-path)")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as err:
            raise ManoFileError(f"mano_path {path}: not a readable .npz of arrays ({err})") from err
    try:
        raw = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"mano_path {path}: {err}") from None
    except ManoFileError:
        raise
    except Exception as err:  # truncated or foreign files fail in many ways
        raise ManoFileError(f"mano_path {path}: not a readable MANO pickle ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict):
        raise ManoFileError(f"mano_path {path}: holds a {type(raw).__name__}, expected a dict of arrays")
    return {str(k): _to_plain(v, str(k), path) for k, v in raw.items()}


class ManoFrame(NamedTuple):
    """How a MANO file's frame maps into the canonical hand frame: ``x_c = R (1000 x - origin)``.

    Attributes:
        rotation: (3, 3) proper rotation; origin: (3,) mm, in MANO's axes.
    """

    rotation: torch.Tensor
    origin: torch.Tensor


def _check_shapes(arrays: dict, path) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ManoFileError(f"mano_path {path}: lacks the keys {missing} (a MANO file has {list(REQUIRED_KEYS)})")
    V, F, J = NUM_VERTICES, NUM_FACES, NUM_JOINTS
    S = arrays["shapedirs"].shape[-1] if arrays["shapedirs"].ndim == 3 else -1
    expect = {"v_template": (V, 3), "f": (F, 3), "shapedirs": (V, 3, S if S > 0 else 10),
              "posedirs": (V, 3, 9 * (J - 1)), "J_regressor": (J, V), "kintree_table": (2, J), "weights": (V, J)}
    if "hands_components" in arrays:
        expect["hands_components"] = (arrays["hands_components"].shape[0], 3 * (J - 1))
    if "hands_mean" in arrays:
        expect["hands_mean"] = (3 * (J - 1),)
    for key, shape in expect.items():
        got = tuple(arrays[key].shape)
        if got != shape:
            raise ManoFileError(f"mano_path {path}: {key} must have shape {shape}, got {got}")
    for key in expect:
        if key not in ("f", "kintree_table") and not np.isfinite(arrays[key]).all():
            raise ManoFileError(f"mano_path {path}: {key} holds NaN or infinite values")
    f = arrays["f"]
    if f.min() < 0 or f.max() >= V:
        raise ManoFileError(f"mano_path {path}: f indexes vertices outside [0, {V})")


def _side_from_name(path: Path) -> str | None:
    stem = path.stem.upper()
    if "LEFT" in stem:
        return "left"
    if "RIGHT" in stem:
        return "right"
    return None


def load_mano(path: str | Path, side: str | None = None, fix_left_shapedirs: bool = True,
              return_frame: bool = False):
    """Read a user-supplied MANO file into :class:`HandModelData` (mm, canonical hand frame).

    Args:
        path: ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` or an ``.npz`` with the same keys.
        side: ``"right"`` or ``"left"``; ``None`` reads it from the file name (``LEFT``/
            ``RIGHT``), else right. The geometry is checked against it.
        fix_left_shapedirs: for a left hand, apply ``shapedirs[:, 0, :] *= -1`` (the known
            error of the released MANO_LEFT file); turn off for files already fixed.
        return_frame: also return the :class:`ManoFrame` (to compare with MANO's own frame).

    Returns:
        HandModelData (with pose correctives and, if the file has them, the PCA pose space),
        or ``(data, frame)``.

    Raises:
        ManoFileError (ValueError): missing file or key, wrong shape, unreadable content.
        UnsafePickleError (ManoFileError): the pickle would run code.
        SideError (ValueError): the file is the other side (a left file given as right).
    """
    path = Path(path)
    if side is None:
        side = _side_from_name(path) or "right"
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right', 'left' or None, got {side!r}")
    arrays = read_mano_arrays(path)
    _check_shapes(arrays, path)
    f64 = lambda k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float64))  # noqa: E731
    v = f64("v_template") * 1000.0
    shapedirs = f64("shapedirs").clone() * 1000.0  # (V, 3, S)
    if side == "left" and fix_left_shapedirs:
        shapedirs[:, 0, :] *= -1.0
    posedirs = f64("posedirs") * 1000.0  # (V, 3, 135)
    J_reg = f64("J_regressor")
    weights = f64("weights")
    parents = np.asarray(arrays["kintree_table"][0]).astype(np.int64)
    parents[0] = -1
    if (parents[1:] < 0).any() or any(p >= i for i, p in enumerate(parents[1:], 1)):
        raise ManoFileError(f"mano_path {path}: kintree_table must list parents before children, root first; "
                            f"got parents {parents.tolist()}")
    if (weights < 0).any() or not np.allclose(weights.sum(1).numpy(), 1.0, atol=1e-3):
        raise ManoFileError(f"mano_path {path}: weights must be non-negative rows summing to 1")

    joints = J_reg @ v
    C = canonical_transform(joints[0], joints[1], joints[4], joints[7], side)
    origin = v.mean(0)
    to_c = lambda x: (x - origin) @ C.T  # noqa: E731
    verts_c, joints_c = to_c(v), to_c(joints)
    shape_basis = shapedirs.permute(2, 0, 1) @ C.T  # (S, V, 3)
    joint_basis = torch.einsum("jv,svc->sjc", J_reg, shape_basis)
    # posedirs: displacement d = P f with f = (R - I) flattened in MANO axes; in canonical axes
    # f = C^T F C and d_c = C d, so P_c[k, c, e] = C[c, a] C[e, b] P[k, a, b] rotated by C.
    P = posedirs.reshape(NUM_VERTICES, 3, NUM_JOINTS - 1, 3, 3)
    P_c = torch.einsum("ca,eb,xy,vykab->kcevx", C, C, C, P).reshape(9 * (NUM_JOINTS - 1), NUM_VERTICES, 3)

    tips = {d: verts_c[i] for d, i in MANO_TIP_VERTICES.items()}
    thumb = torch.stack([joints_c[15], tips["thumb"]])
    mcps = joints_c[[1, 4, 10, 7]]
    check_side(thumb, mcps, side, f"mano_path {path}")

    eye = torch.eye(3, dtype=torch.float64).expand(NUM_JOINTS, 3, 3).clone()
    dof_joint, dof_axis, dof_names, lower, upper = articulation_table(MANO_CHAINS, joints_c, eye, tips, side)
    group = torch.full((NUM_JOINTS,), -1, dtype=torch.long)
    for k, d in enumerate(DIGITS, 1):
        a, b, c = MANO_CHAINS[d]
        group[a], group[b], group[c] = 0, k, k
    kp_joint, kp_vertex = [0], [-1]
    for d in DIGITS:
        kp_joint += list(MANO_CHAINS[d]) + [-1]
        kp_vertex += [-1, -1, -1, MANO_TIP_VERTICES[d]]
    assert len(kp_joint) == len(KEYPOINT_NAMES)

    pose_components = pose_mean = None
    if "hands_components" in arrays:
        comps = f64("hands_components")
        pose_components = (comps.reshape(comps.shape[0], -1, 3) @ C.T).reshape(comps.shape[0], -1).float()
        mean = f64("hands_mean") if "hands_mean" in arrays else torch.zeros(3 * (NUM_JOINTS - 1), dtype=torch.float64)
        pose_mean = (mean.reshape(-1, 3) @ C.T).reshape(-1).float()

    faces = torch.from_numpy(np.asarray(arrays["f"]).astype(np.int64))
    names = ["wrist"] + [""] * (NUM_JOINTS - 1)
    parts = {"thumb": ("cmc", "mcp", "ip")}
    for d, chain in MANO_CHAINS.items():
        for j, part in zip(chain, parts.get(d, ("mcp", "pip", "dip"))):
            names[j] = f"{d}_{part}"
    data = HandModelData(
        vertices=verts_c.float(),
        faces=faces,
        uv_coords=torch.zeros(0, 2),
        face_uvs=torch.zeros(faces.shape[0], 3, dtype=torch.long),
        shape_basis=shape_basis.float(),
        joint_shape_basis=joint_basis.float(),
        shape_names=[f"beta{i}" for i in range(shape_basis.shape[0])],
        joint_names=names,
        parents=torch.from_numpy(parents),
        rest_joints=joints_c.float(),
        rest_orientations=eye.float(),
        dof_joint=dof_joint,
        dof_axis=dof_axis,
        dof_names=dof_names,
        dof_lower=lower,
        dof_upper=upper,
        skin_indices=torch.arange(NUM_JOINTS).expand(NUM_VERTICES, NUM_JOINTS).clone(),
        skin_weights=weights.float(),
        bone_scale_group=group,
        keypoint_joint=torch.tensor(kp_joint, dtype=torch.long),
        keypoint_vertex=torch.tensor(kp_vertex, dtype=torch.long),
        side=side,
        source=f"MANO {path.name}" + (" (left shapedirs sign fix)" if side == "left" and fix_left_shapedirs else ""),
        pose_basis=P_c.float(),
        pose_components=pose_components,
        pose_mean=pose_mean,
    )
    if return_frame:
        return data, ManoFrame(C.float(), origin.float())
    return data


def mano_pose(pose: torch.Tensor, frame: ManoFrame) -> torch.Tensor:
    """A MANO axis-angle pose as :class:`HandModel`'s ``pose`` argument.

    Args:
        pose: (B, 48) or (B, 16, 3) MANO axis-angle (global rotation of the wrist first, then
            the 15 finger joints in MANO's joint order), radians, MANO's axes.
        frame: the :class:`ManoFrame` from ``load_mano(..., return_frame=True)``.

    Returns:
        (B, 16, 3) axis-angle in the canonical axes (an axis-angle vector turns with the frame).
        ``HandModel(data)(pose=...)`` then equals MANO's LBS of the same pose (the root turns
        about the wrist joint, as in MANO) mapped by ``x_c = R (1000 x - origin)``.

    Raises:
        ValueError: ``pose`` has another shape.
    """
    if pose.ndim == 2 and pose.shape[1] == 3 * NUM_JOINTS:
        pose = pose.reshape(-1, NUM_JOINTS, 3)
    if pose.ndim != 3 or tuple(pose.shape[1:]) != (NUM_JOINTS, 3):
        raise ValueError(f"pose must have shape (B, 48) or (B, 16, 3), got {tuple(pose.shape)}")
    return pose @ frame.rotation.to(pose.dtype).T


def mano_pca_pose(data: HandModelData, coeffs: torch.Tensor, flat_hand_mean: bool = False,
                  global_orient: torch.Tensor | None = None) -> torch.Tensor:
    """MANO's PCA pose space as :class:`HandModel`'s ``pose`` argument (canonical axes).

    The 15 finger joints' axis-angle rotations are ``hands_mean + coeffs @ hands_components[:ncomps]``
    with ``ncomps = coeffs.shape[1]``; with ``flat_hand_mean=True`` the mean is dropped, so zero
    coefficients give the flat template hand, and with ``False`` (MANO's default) zero
    coefficients give MANO's mean, relaxed pose.

    Args:
        data: a MANO :class:`HandModelData` (with ``pose_components``).
        coeffs: (B, ncomps) PCA coefficients, 1 <= ncomps <= number of components.
        flat_hand_mean: see above.
        global_orient: optional (B, 3) root (wrist) axis-angle in the canonical axes, radians.

    Returns:
        (B, J, 3) axis-angle, radians.

    Raises:
        ValueError: the model has no PCA pose space, or ``coeffs`` has a bad shape.
    """
    if data.pose_components is None:
        raise ValueError("data has no PCA pose space (pose_components); load a MANO file with hands_components")
    C = data.pose_components.shape[0]
    if coeffs.ndim != 2 or not 1 <= coeffs.shape[1] <= C:
        raise ValueError(f"coeffs must have shape (B, ncomps) with 1 <= ncomps <= {C}, got {tuple(coeffs.shape)}")
    comps = data.pose_components[: coeffs.shape[1]].to(coeffs.dtype)
    fingers = coeffs @ comps
    if not flat_hand_mean:
        fingers = fingers + data.pose_mean.to(coeffs.dtype)
    B = coeffs.shape[0]
    root = torch.zeros(B, 3, dtype=coeffs.dtype) if global_orient is None else global_orient
    if tuple(root.shape) != (B, 3):
        raise ValueError(f"global_orient must have shape ({B}, 3), got {tuple(root.shape)}")
    return torch.cat([root[:, None], fingers.reshape(B, -1, 3)], dim=1)
