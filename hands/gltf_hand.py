"""Rigged glTF / GLB hands (an artist's hand, the OpenXR and WebXR hand meshes) as
:class:`HandModelData`.

:func:`load_gltf_hand` reads the skinned mesh of a glTF 2.0 file (``.gltf`` with embedded or
external buffers, or ``.glb``) with ``pygltflib``: positions, triangles, ``TEXCOORD_0``, the
skin's joints, inverse bind matrices and ``JOINTS_0``/``WEIGHTS_0``. Joints are recognised by
name, OpenXR style (``Index_Proximal_R``, ``Thumb_Metacarpal``, ``Wrist``, ``Palm``) or WebXR
style (``index-finger-phalanx-proximal``, ``pinky-finger-tip``, ``wrist``); the kinematic tree
is built from the names (WebXR files keep all joints flat under one node), not from the node
hierarchy.

The rest pose is the bind pose: a joint's rest frame is the inverse of its inverse bind
matrix, and the vertices are the mesh's own positions (glTF skinning reproduces them when
every joint sits at its bind pose). Metres become millimetres and the hand is put into the
canonical hand frame of :mod:`hands.model_data`. Articulation: the default hand's 26-DoF layout
and limits (:func:`hands.rig.articulation_table`) on the joints thumb metacarpal / proximal /
distal and finger proximal / intermediate / distal. Keypoints: the wrist, the digit joints and
the ``*_Tip`` joints (or, without tip joints, the vertex of the distal segment farthest along
the bone). Shape: one coefficient, ``hand_scale``, growing the hand by 10 % per unit about the
canonical origin (a rigged hand has no shape space of its own). UVs are flipped to the
bottom-up ``v`` convention of OBJ files and the default hand (``v = 1 - v_gltf``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .anny_hand import DIGITS
from .model_data import KEYPOINT_NAMES, HandModelData
from .rig import articulation_table, canonical_transform, check_side

__all__ = ["load_gltf_hand", "GltfHandError", "joint_key"]

PARTS = ("metacarpal", "proximal", "intermediate", "distal", "tip")

_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


class GltfHandError(ValueError):
    """A glTF file that cannot be read as a rigged hand; the message names file and problem."""


def joint_key(name: str) -> tuple[str, str] | None:
    """``(digit, part)``, ``("wrist", "")`` or ``("palm", "")`` for an OpenXR / WebXR joint name.

    ``digit`` is one of ``hands.anny_hand.DIGITS`` (WebXR's ``pinky`` is ``little``), ``part``
    one of :data:`PARTS` (WebXR's ``phalanx-proximal`` is ``proximal``). ``None`` when the name
    is not a hand joint.
    """
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    tokens = [t for t in tokens if t not in ("l", "r", "left", "right", "xrhand", "hand", "finger", "phalanx")]
    words = set(tokens)
    if "wrist" in words:
        return ("wrist", "")
    if "palm" in words:
        return ("palm", "")
    digit = next((d for d in DIGITS if d in words), "little" if "pinky" in words else None)
    part = next((p for p in PARTS if p in words), None)
    if digit is None or part is None:
        return None
    return (digit, part)


def _side_from_names(names: list[str], path: Path) -> str | None:
    ends = {n.split("_")[-1].split(".")[-1].upper() for n in names}
    if ends == {"R"}:
        return "right"
    if ends == {"L"}:
        return "left"
    stem = path.stem.lower()
    if re.search(r"(^|[^a-z])(r|right)($|[^a-z])", stem):
        return "right"
    if re.search(r"(^|[^a-z])(l|left)($|[^a-z])", stem):
        return "left"
    return None


class _Reader:
    """Accessor data of a pygltflib document as numpy arrays."""

    def __init__(self, path: Path):
        try:
            import pygltflib
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise RuntimeError("reading glTF hands needs pygltflib (pip install pygltflib)") from err
        self.path = path
        try:
            self.doc = pygltflib.GLTF2().load(str(path))
        except Exception as err:  # pygltflib raises assorted errors on broken files
            raise GltfHandError(f"model_path {path}: not a readable glTF/GLB file ({err})") from err
        if self.doc is None:
            raise GltfHandError(f"model_path {path}: not a readable glTF/GLB file")
        self._buffers: dict[int, bytes] = {}

    def buffer(self, index: int) -> bytes:
        if index not in self._buffers:
            buf = self.doc.buffers[index]
            if buf.uri is None:
                data = self.doc.binary_blob()
            elif buf.uri.startswith("data:"):
                data = self.doc.decode_data_uri(buf.uri)
            else:
                data = (self.path.parent / buf.uri).read_bytes()
            if data is None:
                raise GltfHandError(f"model_path {self.path}: buffer {index} has no data")
            self._buffers[index] = data
        return self._buffers[index]

    def accessor(self, index: int) -> np.ndarray:
        acc = self.doc.accessors[index]
        if acc.sparse is not None:
            raise GltfHandError(f"model_path {self.path}: sparse accessors are not supported")
        dtype = np.dtype(_COMPONENTS[acc.componentType]).newbyteorder("<")
        width = _WIDTH[acc.type]
        if acc.bufferView is None:
            return np.zeros((acc.count, width), dtype)
        view = self.doc.bufferViews[acc.bufferView]
        data = self.buffer(view.buffer)
        start = (view.byteOffset or 0) + (acc.byteOffset or 0)
        item = dtype.itemsize * width
        stride = view.byteStride or item
        raw = np.frombuffer(data, np.uint8, count=stride * (acc.count - 1) + item, offset=start)
        rows = np.lib.stride_tricks.as_strided(raw, (acc.count, item), (stride, 1))
        out = np.ascontiguousarray(rows).view(dtype).reshape(acc.count, width)
        if acc.normalized and dtype.kind in "iu":
            out = out.astype(np.float64) / np.iinfo(dtype).max
        return out


def _skinned_node(doc, path):
    nodes = [n for n in doc.nodes if n.mesh is not None and n.skin is not None]
    if not nodes:
        raise GltfHandError(f"model_path {path}: no skinned mesh (a node with both mesh and skin)")
    if len(nodes) > 1:
        raise GltfHandError(f"model_path {path}: {len(nodes)} skinned meshes, expected one hand")
    return nodes[0]


def load_gltf_hand(path: str | Path, side: str | None = None, return_frame: bool = False):
    """Read a rigged glTF/GLB hand into :class:`HandModelData` (mm, canonical hand frame).

    Args:
        path: a ``.gltf`` or ``.glb`` file whose one skinned mesh is a hand rigged with OpenXR
            or WebXR joint names, lengths in metres (glTF's unit).
        side: ``"right"`` or ``"left"``; ``None`` takes it from the joint names' ``_R``/``_L``
            suffixes or the file name (``right.glb``, ``hand_l.gltf``), else right.
        return_frame: also return ``(rotation (3, 3), origin (3,) mm)`` with
            ``x_canonical = rotation (1000 x_gltf - origin)``.

    Returns:
        HandModelData, or ``(data, (rotation, origin))``.

    Raises:
        GltfHandError (a ValueError): the file is missing or unreadable, has no or several
            skinned meshes, lacks a required joint (wrist; per digit the three articulated
            joints), a skinning joint with weight is not a hand joint, or the triangles are
            not a triangle list.
        SideError (a ValueError): the hand is the other side.
    """
    path = Path(path)
    if not path.is_file():
        raise GltfHandError(f"model_path {path}: no such file")
    reader = _Reader(path)
    doc = reader.doc
    node = _skinned_node(doc, path)
    skin = doc.skins[node.skin]
    names = [doc.nodes[j].name or f"node{j}" for j in skin.joints]
    if side is None:
        side = _side_from_names(names, path) or "right"
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right', 'left' or None, got {side!r}")

    # -- mesh: positions, triangles, UVs, skin -------------------------------------------
    positions, faces, uvs, joints, weights = [], [], [], [], []
    offset = 0
    for prim in doc.meshes[node.mesh].primitives:
        if prim.mode not in (None, 4):
            raise GltfHandError(f"model_path {path}: primitive mode {prim.mode}, expected triangles (4)")
        attr = prim.attributes
        if attr.JOINTS_0 is None or attr.WEIGHTS_0 is None:
            raise GltfHandError(f"model_path {path}: the skinned mesh lacks JOINTS_0/WEIGHTS_0")
        pos = reader.accessor(attr.POSITION).astype(np.float64)
        positions.append(pos)
        if prim.indices is None:
            tri = np.arange(len(pos)).reshape(-1, 3)
        else:
            tri = reader.accessor(prim.indices).reshape(-1, 3).astype(np.int64)
        faces.append(tri + offset)
        uv = reader.accessor(attr.TEXCOORD_0).astype(np.float64) if attr.TEXCOORD_0 is not None else np.zeros((len(pos), 2))
        uvs.append(uv)
        joints.append(reader.accessor(attr.JOINTS_0).astype(np.int64))
        weights.append(reader.accessor(attr.WEIGHTS_0).astype(np.float64))
        offset += len(pos)
    positions, faces, uvs = np.concatenate(positions), np.concatenate(faces), np.concatenate(uvs)
    skin_joints, skin_weights = np.concatenate(joints), np.concatenate(weights)
    if skin.inverseBindMatrices is None:
        raise GltfHandError(f"model_path {path}: the skin has no inverseBindMatrices")
    ibm = reader.accessor(skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major
    bind = np.linalg.inv(ibm.astype(np.float64))  # joint frames at the bind pose, mesh space

    # -- joint layout from the names ---------------------------------------------------------
    keys = [joint_key(n) for n in names]
    used = np.zeros(len(names))
    np.add.at(used, skin_joints.reshape(-1), skin_weights.reshape(-1))
    unknown = [n for n, k, u in zip(names, keys, used) if k is None and u > 0]
    if unknown:
        raise GltfHandError(f"model_path {path}: skinning joints {unknown} are not OpenXR/WebXR hand joints")
    found = {k: i for i, k in enumerate(keys) if k is not None}
    required = [("wrist", "")] + [(d, p) for d in DIGITS
                                 for p in (("metacarpal", "proximal", "distal") if d == "thumb"
                                           else ("proximal", "intermediate", "distal"))]
    missing = [f"{d}_{p}".strip("_") for d, p in required if (d, p) not in found]
    if missing:
        raise GltfHandError(f"model_path {path}: lacks the joints {missing} (OpenXR/WebXR names expected)")

    order = [("wrist", "")] + ([("palm", "")] if ("palm", "") in found else [])
    parent_key = {("palm", ""): ("wrist", "")}
    for d in DIGITS:
        prev = ("wrist", "")
        for p in PARTS:
            if (d, p) in found:
                order.append((d, p))
                parent_key[(d, p)] = prev
                prev = (d, p)
    index = {k: i for i, k in enumerate(order)}
    parents = [-1] + [index[parent_key[k]] for k in order[1:]]
    src = [found[k] for k in order]  # skin joint index of each model joint

    remap = np.zeros(len(names), dtype=np.int64)
    for i, k in enumerate(keys):
        remap[i] = index[k] if k is not None else 0
    skin_idx = remap[skin_joints]
    wsum = skin_weights.sum(1, keepdims=True)
    if (wsum <= 0).any():
        raise GltfHandError(f"model_path {path}: {int((wsum <= 0).sum())} vertices have no skinning weight")
    skin_w = skin_weights / wsum

    # -- canonical frame, mm -----------------------------------------------------------------
    R_bind = bind[src, :3, :3]
    U, _, Vt = np.linalg.svd(R_bind)  # remove scale from the bind frames (polar part)
    R_bind = U @ Vt
    heads = torch.from_numpy(bind[src, :3, 3] * 1000.0)
    verts = torch.from_numpy(positions * 1000.0)
    j = lambda d, p="": heads[index[(d, p)]]  # noqa: E731
    C = canonical_transform(j("wrist"), j("index", "proximal"), j("middle", "proximal"), j("little", "proximal"), side)
    origin = verts.mean(0)
    to_canonical = lambda x: (x - origin) @ C.T  # noqa: E731
    verts_c, heads_c = to_canonical(verts), to_canonical(heads)
    orient_c = C @ torch.from_numpy(R_bind)

    # fingertips: tip joints, or the distal segment's farthest vertex along the bone
    tips, kp_joint, kp_vertex = {}, [index[("wrist", "")]], [-1]
    dominant = torch.from_numpy(np.take_along_axis(skin_idx, skin_w.argmax(1)[:, None], 1)[:, 0])
    for d in DIGITS:
        chain = ("metacarpal", "proximal", "distal") if d == "thumb" else ("proximal", "intermediate", "distal")
        kp_joint += [index[(d, p)] for p in chain]
        kp_vertex += [-1, -1, -1]
        distal = index[(d, "distal")]
        if (d, "tip") in index:
            kp_joint.append(index[(d, "tip")])
            kp_vertex.append(-1)
            tips[d] = heads_c[index[(d, "tip")]]
        else:
            sel = (dominant == distal).nonzero()[:, 0]
            if len(sel) == 0:
                raise GltfHandError(f"model_path {path}: no tip joint and no vertex skinned to the {d} distal joint")
            bone = heads_c[distal] - heads_c[index[(d, chain[1])]]
            far = int(sel[((verts_c[sel] - heads_c[distal]) @ bone).argmax()])
            kp_joint.append(-1)
            kp_vertex.append(far)
            tips[d] = verts_c[far]
    assert len(kp_joint) == len(kp_vertex) == len(KEYPOINT_NAMES)

    thumb = torch.stack([heads_c[index[("thumb", "distal")]], tips["thumb"]])
    mcps = torch.stack([heads_c[index[(d, "proximal")]] for d in DIGITS[1:]])
    check_side(thumb, mcps, side, f"model_path {path}")

    chains = {d: tuple(index[(d, p)] for p in (("metacarpal", "proximal", "distal") if d == "thumb"
                                                 else ("proximal", "intermediate", "distal"))) for d in DIGITS}
    dof_joint, dof_axis, dof_names, lower, upper = articulation_table(chains, heads_c, orient_c, tips, side)

    group = torch.full((len(order),), -1, dtype=torch.long)
    for k, d in enumerate(DIGITS, 1):
        for p in PARTS:
            if (d, p) in index:
                first_articulated = "metacarpal" if d == "thumb" else "proximal"
                group[index[(d, p)]] = 0 if p in ("metacarpal", first_articulated) else k

    faces_t = torch.from_numpy(faces).long()
    uv_t = torch.from_numpy(uvs).float()
    uv_t[:, 1] = 1.0 - uv_t[:, 1]
    data = HandModelData(
        vertices=verts_c.float(),
        faces=faces_t,
        uv_coords=uv_t,
        face_uvs=faces_t.clone(),
        shape_basis=(0.1 * verts_c).float()[None],
        joint_shape_basis=(0.1 * heads_c).float()[None],
        shape_names=["hand_scale"],
        joint_names=[f"{d}_{p}".strip("_") for d, p in order],
        parents=torch.tensor(parents, dtype=torch.long),
        rest_joints=heads_c.float(),
        rest_orientations=orient_c.float(),
        dof_joint=dof_joint,
        dof_axis=dof_axis,
        dof_names=dof_names,
        dof_lower=lower,
        dof_upper=upper,
        skin_indices=torch.from_numpy(skin_idx).long(),
        skin_weights=torch.from_numpy(skin_w).float(),
        bone_scale_group=group,
        keypoint_joint=torch.tensor(kp_joint, dtype=torch.long),
        keypoint_vertex=torch.tensor(kp_vertex, dtype=torch.long),
        side=side,
        source=f"glTF {path.name} (bind pose, {len(names)} skin joints)",
    )
    return (data, (C.float(), origin.float())) if return_frame else data
