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

The file is untrusted: it and every buffer it names are bounded in size before they are read
(:data:`MAX_FILE_BYTES`, :data:`MAX_BUFFER_BYTES` per buffer, :data:`MAX_TOTAL_BYTES` for the
file and its buffers together; a ``data:`` URI's decoded size is checked before decoding).
Buffer (and image) URIs are resolved only inside the model file's folder, symlinks followed
(:func:`resolve_uri`); absolute paths and every scheme but ``data:`` (``file:``, ``http:``,
``https:``, ...) are refused. Images are never read. Buffer views must lie inside their
buffer and accessors inside their view, with at most :data:`MAX_ACCESSOR_COUNT` elements.
Every failure is a one-line :class:`GltfHandError` naming the file and what is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .anny_hand import DIGITS
from .model_data import KEYPOINT_NAMES, HandModelData
from .rig import SideError, articulation_table, canonical_transform, check_side

__all__ = ["load_gltf_hand", "GltfHandError", "joint_key", "resolve_uri"]

PARTS = ("metacarpal", "proximal", "intermediate", "distal", "tip")

_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


#: Bounds of what a glTF file may make the loader read or allocate (checked before reading).
MAX_FILE_BYTES = 64 * 2**20  #: the .gltf / .glb file itself
MAX_BUFFER_BYTES = 32 * 2**20  #: one buffer (external .bin, GLB chunk or decoded data: URI)
MAX_TOTAL_BYTES = 128 * 2**20  #: the file and all the buffers it reads, together
MAX_ACCESSOR_COUNT = 2**21  #: elements of one accessor (the shared hands have < 2,000 vertices)


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


class GltfHandError(ValueError):
    """A glTF file that cannot be read as a rigged hand; the one-line message names file and problem."""

    def __init__(self, message="", *args):
        super().__init__(" ".join(str(message).split()), *args)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def resolve_uri(model_path: Path, uri, what: str) -> Path:
    """The file a relative glTF ``uri`` names, inside the model file's folder.

    ``data:`` URIs are handled by the caller; every other scheme (``file:``, ``http:``,
    ``https:``, ...) and absolute paths are refused, the relative path is percent-decoded and
    resolved with symlinks followed (``Path.resolve``) and must stay inside
    ``model_path.parent.resolve()``; it must be an existing regular file.

    Raises:
        GltfHandError: any of the above fails.
    """
    from urllib.parse import unquote

    where = f"model_path {model_path}: {what}"
    if not isinstance(uri, str) or not uri:
        raise GltfHandError(f"{where}: uri must be a non-empty string, got {type(uri).__name__}")
    if _SCHEME.match(uri):
        raise GltfHandError(f"{where}: uri scheme {uri.split(':', 1)[0][:20]!r}: refused (only relative paths "
                            "inside the model's folder and data: URIs are read)")
    rel = unquote(uri)
    if "\x00" in rel:
        raise GltfHandError(f"{where}: uri holds a NUL character")
    if rel.startswith(("/", "\\")) or Path(rel).is_absolute():
        raise GltfHandError(f"{where}: absolute uri {uri[:80]!r} refused (only paths inside the model's folder)")
    folder = model_path.parent.resolve()
    try:
        target = (folder / rel).resolve()
    except (OSError, RuntimeError, ValueError) as err:
        raise GltfHandError(f"{where}: uri {uri[:80]!r} cannot be resolved ({err})") from None
    if not target.is_relative_to(folder):
        raise GltfHandError(f"{where}: uri {uri[:80]!r} points outside the model's folder {folder} "
                            "(after following symlinks); refused")
    try:
        exists, is_file = target.exists(), target.is_file()
    except OSError as err:
        raise GltfHandError(f"{where}: uri {uri[:80]!r} cannot be opened ({err.strerror})") from None
    if not exists:
        raise GltfHandError(f"{where}: uri {uri[:80]!r}: no such file next to the model")
    if not is_file:
        raise GltfHandError(f"{where}: uri {uri[:80]!r} is not a regular file (a directory?)")
    return target


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
    """Accessor data of a pygltflib document as numpy arrays, every range checked."""

    def __init__(self, path: Path):
        try:
            import pygltflib
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise RuntimeError("reading glTF hands needs pygltflib (pip install pygltflib)") from err
        self.path = path
        try:
            size = path.stat().st_size
        except OSError as err:
            raise GltfHandError(f"model_path {path}: unreadable ({err})") from None
        if size > MAX_FILE_BYTES:
            raise GltfHandError(f"model_path {path}: {size} bytes, more than the bound of "
                                f"{_mib(MAX_FILE_BYTES)} for a glTF/GLB file")
        self._total = size
        try:
            self.doc = pygltflib.GLTF2().load(str(path))
        except Exception as err:  # pygltflib raises assorted errors on broken files
            raise GltfHandError(f"model_path {path}: not a readable glTF/GLB file ({type(err).__name__}: "
                                f"{str(err)[:200]})") from None
        if self.doc is None:
            raise GltfHandError(f"model_path {path}: not a readable glTF/GLB file")
        for i, image in enumerate(self.doc.images or []):  # never read, but held to the same rule
            uri = getattr(image, "uri", None)
            if uri is not None and not (isinstance(uri, str) and uri.startswith("data:")):
                resolve_uri(path, uri, f"image {i}")
        self._buffers: dict[int, bytes] = {}

    def _item(self, name: str, index):
        items = getattr(self.doc, name) or []
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(items):
            raise GltfHandError(f"model_path {self.path}: {name[:-1]} index {index!r} outside the "
                                f"{len(items)} {name}")
        return items[index]

    def _count(self, nbytes: int, what: str) -> None:
        if nbytes > MAX_BUFFER_BYTES:
            raise GltfHandError(f"model_path {self.path}: {what} has {nbytes} bytes, more than the bound of "
                                f"{_mib(MAX_BUFFER_BYTES)} per buffer")
        if self._total + nbytes > MAX_TOTAL_BYTES:
            raise GltfHandError(f"model_path {self.path}: the file and its buffers exceed "
                                f"{_mib(MAX_TOTAL_BYTES)} in all")
        self._total += nbytes

    def buffer(self, index: int) -> bytes:
        if index in self._buffers:
            return self._buffers[index]
        buf = self._item("buffers", index)
        what = f"buffer {index}"
        uri = buf.uri
        if uri is None:
            data = self.doc.binary_blob()
            if data is None:
                raise GltfHandError(f"model_path {self.path}: {what} has no uri and the file has no GLB binary chunk")
        elif isinstance(uri, str) and uri.startswith("data:"):
            import base64
            import binascii

            head, sep, payload = uri.partition(",")
            if not sep or not head.endswith(";base64"):
                raise GltfHandError(f"model_path {self.path}: {what}: a data: uri that is not base64")
            self._count(len(payload) // 4 * 3, f"{what} (data: uri)")  # before decoding
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as err:
                raise GltfHandError(f"model_path {self.path}: {what}: malformed base64 in its data: uri ({err})") from None
        else:
            target = resolve_uri(self.path, uri, what)
            try:
                size = target.stat().st_size
                self._count(size, f"{what} ({target.name})")
                with open(target, "rb") as fh:
                    data = fh.read(size + 1)
            except OSError as err:
                raise GltfHandError(f"model_path {self.path}: {what}: cannot read {target.name} ({err})") from None
            if len(data) != size:
                raise GltfHandError(f"model_path {self.path}: {what}: {target.name} changed size while read")
        length = buf.byteLength
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise GltfHandError(f"model_path {self.path}: {what}: byteLength must be a non-negative integer")
        if len(data) < length:
            raise GltfHandError(f"model_path {self.path}: {what} is truncated: {len(data)} bytes, its byteLength "
                                f"says {length}")
        self._buffers[index] = data = bytes(data[:length])
        return data

    def accessor(self, index: int) -> np.ndarray:
        acc = self._item("accessors", index)
        where = f"model_path {self.path}: accessor {index}"
        if acc.sparse is not None:
            raise GltfHandError(f"{where}: sparse accessors are not supported")
        if acc.componentType not in _COMPONENTS or acc.type not in _WIDTH:
            raise GltfHandError(f"{where}: componentType {acc.componentType!r} / type {str(acc.type)[:20]!r} "
                                "not supported")
        count = acc.count
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_ACCESSOR_COUNT:
            raise GltfHandError(f"{where}: count {count!r} outside [1, {MAX_ACCESSOR_COUNT}]")
        dtype = np.dtype(_COMPONENTS[acc.componentType]).newbyteorder("<")
        width = _WIDTH[acc.type]
        if acc.bufferView is None:
            return np.zeros((count, width), dtype)
        view = self._item("bufferViews", acc.bufferView)
        ints = {"bufferView.byteOffset": view.byteOffset or 0, "bufferView.byteLength": view.byteLength,
                "accessor.byteOffset": acc.byteOffset or 0, "bufferView.byteStride": view.byteStride or 0}
        for name, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise GltfHandError(f"{where}: {name} must be a non-negative integer, got {value!r}")
        data = self.buffer(view.buffer)
        v_off, v_len, a_off = ints["bufferView.byteOffset"], ints["bufferView.byteLength"], ints["accessor.byteOffset"]
        if v_off + v_len > len(data):
            raise GltfHandError(f"{where}: its bufferView (bytes {v_off}..{v_off + v_len}) lies outside buffer "
                                f"{view.buffer} ({len(data)} bytes)")
        item = dtype.itemsize * width
        stride = ints["bufferView.byteStride"] or item
        if stride < item or stride > 252 + item:
            raise GltfHandError(f"{where}: byteStride {stride} smaller than an element ({item} bytes) or too large")
        end = a_off + stride * (count - 1) + item
        if end > v_len:
            raise GltfHandError(f"{where}: {count} elements need bytes {a_off}..{end} of a bufferView of "
                                f"{v_len} bytes")
        raw = np.frombuffer(data, np.uint8, count=end - a_off, offset=v_off + a_off)
        rows = np.lib.stride_tricks.as_strided(raw, (count, item), (stride, 1), writeable=False)
        out = np.ascontiguousarray(rows).view(dtype).reshape(count, width)
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
    if side not in (None, "right", "left"):
        raise ValueError(f"side must be 'right', 'left' or None, got {side!r}")
    if not path.is_file():
        raise GltfHandError(f"model_path {path}: no such file")
    reader = _Reader(path)
    try:
        return _build_gltf(reader, path, side, return_frame)
    except (GltfHandError, SideError):
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError, RuntimeError,
            np.linalg.LinAlgError) as err:  # a malformed document pygltflib let through
        raise GltfHandError(f"model_path {path}: malformed glTF hand ({type(err).__name__}: "
                            f"{str(err)[:200]})") from None


def _build_gltf(reader, path, side, return_frame):
    doc = reader.doc
    node = _skinned_node(doc, path)
    skin = reader._item("skins", node.skin)
    reader._item("meshes", node.mesh)
    if not skin.joints:
        raise GltfHandError(f"model_path {path}: the skin has no joints")
    names = [reader._item("nodes", j).name or f"node{j}" for j in skin.joints]
    names = [n if isinstance(n, str) else f"node{j}" for n, j in zip(names, skin.joints)]
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
        if attr.POSITION is None:
            raise GltfHandError(f"model_path {path}: a primitive without POSITION")
        pos = reader.accessor(attr.POSITION).astype(np.float64)
        if pos.shape[1] != 3 or not np.isfinite(pos).all():
            raise GltfHandError(f"model_path {path}: POSITION must be finite VEC3 values")
        positions.append(pos)
        tri = np.arange(len(pos)) if prim.indices is None else reader.accessor(prim.indices).astype(np.int64)
        if tri.shape[1] != 1 or tri.size % 3 or (tri.size and (tri.min() < 0 or tri.max() >= len(pos))):
            raise GltfHandError(f"model_path {path}: indices must be a triangle list (SCALAR, a multiple of 3) "
                                f"indexing the primitive's {len(pos)} vertices")
        tri = tri.reshape(-1, 3)
        faces.append(tri + offset)
        uv = reader.accessor(attr.TEXCOORD_0).astype(np.float64) if attr.TEXCOORD_0 is not None else np.zeros((len(pos), 2))
        uvs.append(uv)
        pj = reader.accessor(attr.JOINTS_0).astype(np.int64)
        pw = reader.accessor(attr.WEIGHTS_0).astype(np.float64)
        if len(uv) != len(pos) or uv.shape[1] != 2 or not np.isfinite(uv).all():
            raise GltfHandError(f"model_path {path}: TEXCOORD_0 must be finite VEC2 values, one per vertex")
        if pj.shape != (len(pos), 4) or pw.shape != pj.shape:
            raise GltfHandError(f"model_path {path}: JOINTS_0/WEIGHTS_0 must be VEC4, one per vertex")
        if pj.min() < 0 or pj.max() >= len(names):
            raise GltfHandError(f"model_path {path}: JOINTS_0 indexes joints outside the skin's {len(names)}")
        if not np.isfinite(pw).all() or (pw < 0).any():
            raise GltfHandError(f"model_path {path}: WEIGHTS_0 must be finite and non-negative")
        joints.append(pj)
        weights.append(pw)
        offset += len(pos)
    positions, faces, uvs = np.concatenate(positions), np.concatenate(faces), np.concatenate(uvs)
    skin_joints, skin_weights = np.concatenate(joints), np.concatenate(weights)
    if skin.inverseBindMatrices is None:
        raise GltfHandError(f"model_path {path}: the skin has no inverseBindMatrices")
    ibm = reader.accessor(skin.inverseBindMatrices)
    if ibm.shape != (len(names), 16) or not np.isfinite(ibm).all():
        raise GltfHandError(f"model_path {path}: inverseBindMatrices must be {len(names)} finite MAT4, "
                            f"got {ibm.shape[0]} x {ibm.shape[1]}")
    ibm = ibm.reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major
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
