"""Differentiable articulated morphable hand: shape blend -> forward kinematics -> LBS."""

from __future__ import annotations

from typing import NamedTuple

import torch
from pytorch3d.transforms import axis_angle_to_matrix
from torch import nn

from .model_data import BONE_SCALE_NAMES, HandModelData


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a x b`` over the last axis (3), broadcast (cheaper than ``torch.linalg.cross`` on
    broadcast operands)."""
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], -1)


class HandOutput(NamedTuple):
    """What :class:`HandModel` returns (all in the caller's frame, millimetres).

    Attributes:
        vertices: (B, V, 3) posed mesh vertices, mm.
        keypoints: (B, 21, 3) the standard hand keypoints (``hands.KEYPOINT_NAMES`` order), mm.
        joints: (B, J, 3) posed joint (bone head) positions, mm.
        transforms: (B, J, 4, 4) posed joint frames (rotation + position in mm).
    """

    vertices: torch.Tensor
    keypoints: torch.Tensor
    joints: torch.Tensor
    transforms: torch.Tensor


class HandModel(nn.Module):
    """Articulated morphable hand model (DeepHPS hand pose and shape layer).

    Forward, for a batch of B hands (Malik et al., "DeepHPS", 3DV 2018, Eqs. 3-5):

    1. shape blend: ``v = v0 + sum_s beta_s S_s + delta_v`` and the same blend of the rest
       joints (Eq. 3), with per-vertex offsets ``delta_v`` in the canonical rest frame;
    2. forward kinematics with scaled bones (Eq. 4): each joint's rest offset from its
       parent is multiplied by its bone-length scale ``alpha`` (palm + 5 fingers), then rotated
       by the articulation angles ``theta`` about the DoF axes of ``HandModelData``;
    3. linear blend skinning (Eq. 5) of the shaped rest vertices;
    4. global rigid transform ``x -> R(global_orient) x + transl``.

    Parameters (all optional; ``None`` means the neutral value):
        global_orient: (B, 3) axis-angle, radians.
        transl: (B, 3) mm, position of the canonical origin (the rest template's centroid).
        theta: (B, D) articulation angles, radians (D = 20 for the default hand).
        alpha: (B, 6) bone-length scales (palm, thumb, index, middle, ring, little), 1 = rest.
        beta: (B, S) shape coefficients, 0 = template.
        offsets: (B, V, 3) per-vertex offsets, mm, canonical rest frame.
        pose: (B, J, 3) extra per-joint axis-angle rotations (radians) in each joint's local
            frame, applied after the DoF rotations (``L_j = R(dofs) R(pose_j)``): the free
            axis-angle mode of MANO-style models (``hands.mano.mano_pose_to_parameters``).
            Not a fitting parameter; ``None`` means none.

    If the model data has pose correctives (``HandModelData.pose_basis``, MANO's posedirs),
    the shaped rest vertices move by them before skinning (Romero et al. 2017, Eq. 9).

    Raises:
        ValueError: a parameter has the wrong shape or batch size (the message names it).

    Example:
        >>> model = HandModel(default_hand_data())           # doctest: +SKIP
        >>> out = model(theta=torch.zeros(2, model.num_dofs))  # doctest: +SKIP
        >>> out.vertices.shape                                # doctest: +SKIP
        torch.Size([2, 1609, 3])
    """

    def __init__(self, data: HandModelData):
        super().__init__()
        self.data = data
        self.register_buffer("v_template", data.vertices.clone())
        self.register_buffer("faces", data.faces.clone())
        self.register_buffer("shape_basis", data.shape_basis.clone())
        self.register_buffer("joint_shape_basis", data.joint_shape_basis.clone())
        self.register_buffer("rest_joints", data.rest_joints.clone())
        self.register_buffer("rest_orientations", data.rest_orientations.clone())
        self.register_buffer("dof_axis", data.dof_axis.clone())
        self.register_buffer("dof_lower", data.dof_lower.clone())
        self.register_buffer("dof_upper", data.dof_upper.clone())
        # Dense (V, J) skinning matrix: blending the joint transforms is then one matmul.
        dense = torch.zeros(data.num_vertices, data.num_joints, dtype=data.skin_weights.dtype)
        dense.scatter_add_(1, data.skin_indices, data.skin_weights)
        self.register_buffer("skin_matrix", dense)
        self.parents = data.parents.tolist()
        J = data.num_joints
        # Local rotation of joint j = R(dof a) R(dof b): slots index a table whose entry 0 is
        # the identity, so joints with 0, 1 or 2 DoF are handled by one gather.
        slots = torch.zeros(J, 2, dtype=torch.long)
        count = [0] * J
        for d, j in enumerate(data.dof_joint.tolist()):
            if count[j] >= 2:
                raise ValueError(f"joint {data.joint_names[j]} has more than 2 DoF")
            slots[j, count[j]] = d + 1
            count[j] += 1
        self.register_buffer("dof_slots", slots)
        self.articulated = [j for j in range(J) if count[j] > 0]
        group = data.bone_scale_group
        self.register_buffer("scale_group", group.clamp(min=0))
        self.register_buffer("scale_mask", (group >= 0).to(data.vertices.dtype))
        # Rest offset of each joint from its parent, in the parent's rest frame.
        self.register_buffer("keypoint_joint", data.keypoint_joint.clone())
        self.register_buffer("keypoint_vertex", data.keypoint_vertex.clone())
        if data.pose_basis is not None:
            self.register_buffer("pose_basis", data.pose_basis.reshape(data.pose_basis.shape[0], -1).clone())
        else:
            self.pose_basis = None

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return self.data.num_vertices

    @property
    def num_joints(self) -> int:
        return self.data.num_joints

    @property
    def num_dofs(self) -> int:
        return self.data.num_dofs

    @property
    def num_shapes(self) -> int:
        return self.data.num_shapes

    @property
    def num_bone_scales(self) -> int:
        return len(BONE_SCALE_NAMES)

    def neutral_parameters(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Neutral parameters (rest pose, template shape, at the origin) for ``batch_size`` hands."""
        dev, dt = self.v_template.device, self.v_template.dtype
        z = lambda *s: torch.zeros(batch_size, *s, device=dev, dtype=dt)  # noqa: E731
        return {
            "global_orient": z(3),
            "transl": z(3),
            "theta": z(self.num_dofs),
            "alpha": z(self.num_bone_scales) + 1.0,
            "beta": z(self.num_shapes),
            "offsets": z(self.num_vertices, 3),
        }

    def limits_table(self) -> dict[str, tuple[float, float]]:
        """The joint-limit table: DoF name -> (lower, upper) in radians, in DoF order.

        For the default hand these are ``hands.anny_hand.LIMITS`` (seed 001 Table 1 adapted
        to the 20 articulation DoF); :meth:`set_limits` changes them. The fitter uses them as
        the soft ``joint_limits`` energy (:func:`losses.joint_limit_loss`, a squared hinge in
        rad^2) and, with ``FitConfig.clamp_limits``, as a hard clamp after every step.
        """
        return {n: (float(lo), float(hi))
                for n, lo, hi in zip(self.data.dof_names, self.dof_lower.tolist(), self.dof_upper.tolist())}

    def set_limits(self, table: dict) -> None:
        """Override the limits of some DoF: ``{name: (lower, upper)}`` in radians.

        DoF not named keep their limits; ``float('inf')`` leaves a side unbounded. The model's
        ``HandModelData`` is not changed.

        Raises:
            ValueError: an unknown DoF name (the message lists the known ones) or a pair that
                is not two numbers with lower <= upper.
        """
        names = list(self.data.dof_names)
        lower, upper = self.dof_lower.clone(), self.dof_upper.clone()
        for name, bounds in table.items():
            if name not in names:
                raise ValueError(f"set_limits: unknown DoF {name!r}; known: {names}")
            try:
                lo, hi = (float(b) for b in bounds)
            except (TypeError, ValueError) as err:
                raise ValueError(f"set_limits: limits of {name!r} must be (lower, upper), got {bounds!r}") from err
            if lo > hi:
                raise ValueError(f"set_limits: lower limit of {name!r} exceeds its upper limit: {lo} > {hi}")
            lower[names.index(name)], upper[names.index(name)] = lo, hi
        self.dof_lower.copy_(lower)
        self.dof_upper.copy_(upper)

    def clamp_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """Articulation angles (B, D) clamped to the model's limits (radians)."""
        return torch.maximum(torch.minimum(theta, self.dof_upper), self.dof_lower)

    # -- forward -----------------------------------------------------------------------------
    def _batch_size(self, params: dict) -> int:
        sizes = {k: v.shape[0] for k, v in params.items() if v is not None}
        if not sizes:
            return 1
        if len(set(sizes.values())) != 1:
            raise ValueError(f"HandModel parameters must share one batch size, got {sizes}")
        return next(iter(sizes.values()))

    def _check(self, name: str, value, shape: tuple) -> None:
        if value is not None and tuple(value.shape[1:]) != shape:
            raise ValueError(
                f"HandModel: {name} must have shape (B, {', '.join(map(str, shape))}), "
                f"got {tuple(value.shape)}"
            )

    def forward(
        self,
        global_orient: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
        theta: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
        beta: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
    ) -> HandOutput:
        params = dict(global_orient=global_orient, transl=transl, theta=theta, alpha=alpha, beta=beta, offsets=offsets)
        for name, shape in (
            ("global_orient", (3,)),
            ("transl", (3,)),
            ("theta", (self.num_dofs,)),
            ("alpha", (self.num_bone_scales,)),
            ("beta", (self.num_shapes,)),
            ("offsets", (self.num_vertices, 3)),
        ):
            self._check(name, params[name], shape)
        self._check("pose", pose, (self.num_joints, 3))
        B = self._batch_size({**params, "pose": pose})
        neutral = self.neutral_parameters(B)
        p = {k: (v if v is not None else neutral[k]) for k, v in params.items()}

        # 1. shape blend (DeepHPS Eq. 3) + offsets
        v_rest = self.v_template + torch.einsum("bs,svc->bvc", p["beta"], self.shape_basis) + p["offsets"]
        j_rest = self.rest_joints + torch.einsum("bs,sjc->bjc", p["beta"], self.joint_shape_basis)

        # 2. local rotations of the articulation DoF, 0/1/2 per joint
        rot = axis_angle_to_matrix(p["theta"][..., None] * self.dof_axis)  # (B, D, 3, 3)
        eye = torch.eye(3, device=rot.device, dtype=rot.dtype).expand(B, 1, 3, 3)
        table = torch.cat([eye, rot], dim=1)
        local = table[:, self.dof_slots[:, 0]] @ table[:, self.dof_slots[:, 1]]  # (B, J, 3, 3)
        if pose is not None:
            local = local @ axis_angle_to_matrix(pose)

        # pose correctives (MANO posedirs): features R0 L R0^T - I of the non-root joints
        R0 = self.rest_orientations
        if self.pose_basis is not None:
            eye3 = torch.eye(3, device=local.device, dtype=local.dtype)
            feat = (R0[1:] @ local[:, 1:] @ R0[1:].transpose(-1, -2) - eye3).reshape(B, -1)
            v_rest = v_rest + (feat @ self.pose_basis).view(B, -1, 3)

        # 3. forward kinematics with scaled bones (DeepHPS Eq. 4)
        scale = 1.0 + (p["alpha"][:, self.scale_group] - 1.0) * self.scale_mask  # (B, J)
        g_rot = axis_angle_to_matrix(p["global_orient"])
        world_R = [None] * self.num_joints
        world_t = [None] * self.num_joints
        for j, parent in enumerate(self.parents):
            if parent < 0:
                world_R[j] = g_rot @ R0[j] @ local[:, j]
                world_t[j] = (g_rot @ j_rest[:, j, :, None])[..., 0] + p["transl"]
            else:
                offset = (j_rest[:, j] - j_rest[:, parent]) * scale[:, j, None]
                # offset in the parent's rest frame, then carried by the parent's posed frame
                rel = world_R[parent] @ R0[parent].T
                world_R[j] = rel @ R0[j] @ local[:, j]
                world_t[j] = world_t[parent] + (rel @ offset[..., None])[..., 0]
        W = torch.stack(world_R, dim=1)  # (B, J, 3, 3)
        T = torch.stack(world_t, dim=1)  # (B, J, 3)

        # 4. LBS (DeepHPS Eq. 5): G_j maps shaped rest points to posed points
        G_R = W @ R0.transpose(-1, -2)
        G_t = T - (G_R @ j_rest[..., None])[..., 0]
        G = torch.cat([G_R, G_t[..., None]], dim=-1).flatten(2)  # (B, J, 12)
        blend = (self.skin_matrix @ G).view(B, -1, 3, 4)  # (B, V, 3, 4)
        verts = (blend[..., :3] @ v_rest[..., None])[..., 0] + blend[..., 3]

        kp_j = self.keypoint_joint.clamp(min=0)
        kp_v = self.keypoint_vertex.clamp(min=0)
        from_joint = (self.keypoint_joint >= 0)[None, :, None]
        keypoints = torch.where(from_joint, T[:, kp_j], verts[:, kp_v])

        transforms = torch.zeros(B, self.num_joints, 4, 4, device=W.device, dtype=W.dtype)
        transforms[..., :3, :3] = W
        transforms[..., :3, 3] = T
        transforms[..., 3, 3] = 1.0
        return HandOutput(vertices=verts, keypoints=keypoints, joints=T, transforms=transforms)

    # -- closed-form Jacobian ----------------------------------------------------------------
    def _jacobian_tables(self, device, dtype):
        """Cached per-model tables of :meth:`kinematic_jacobian`: ``desc`` (J, J), 1 where
        joint i lies in the subtree of joint k (itself included); per DoF its joint and slot."""
        key = (device, dtype)
        cached = getattr(self, "_jac_tables", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        J = self.num_joints
        rows = [[0.0] * J for _ in range(J)]
        for i in range(J):
            k = i
            while k >= 0:
                rows[k][i] = 1.0
                k = self.parents[k]
        desc = torch.tensor(rows, dtype=dtype, device=device)
        dof_joint = self.data.dof_joint.to(device)
        slots = self.dof_slots.to(device)
        second = (slots[dof_joint, 1] == torch.arange(1, self.num_dofs + 1, device=device))  # (D,) bool
        # the top-k skinning weights restricted to each DoF's subtree: (V, D, k)
        index = self.data.skin_indices.to(device)  # (V, k)
        weight = self.data.skin_weights.to(device, dtype)
        sub = desc[dof_joint][:, index].permute(1, 0, 2) * weight[:, None]  # (V, D, k)
        tables = (desc, dof_joint, second, index, sub, sub.sum(-1))
        self._jac_tables = (key, tables)
        return tables

    def kinematic_jacobian(self, params: dict, out: HandOutput | None = None, vertices: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, HandOutput]:
        r"""Closed-form Jacobian of the posed vertices and keypoints by the pose: (B, V, 3, P), (B, 21, 3, P).

        The P = 6 + D columns are: a rotation increment :math:`\omega` of the whole hand about
        the camera axes, applied on the left (``R <- exp([omega]_x) R(global_orient)``; radians),
        the translation (mm), and the D articulation angles (radians). The kinematic chain
        rule of the model-based trackers (Tagliasacchi et al., "Robust articulated-ICP for
        real-time hand tracking", SGP 2015, Sec. 4 and Appendix; the derivative of a point
        carried by a joint frame about a revolute axis is the axis crossed with the point's
        offset from the joint): for DoF d on joint k with world axis :math:`a_d` through the
        joint position :math:`t_k`, a vertex blended by LBS from the frames :math:`G_i` with
        weights :math:`w_i` moves by

        .. math::

            \frac{\partial v}{\partial \theta_d} = a_d \times \sum_{i \in \mathrm{sub}(k)}
            w_i \, (G_i \bar v - t_k), \qquad
            \frac{\partial v}{\partial \omega} = -[v - t]_\times, \qquad
            \frac{\partial v}{\partial t} = I,

        with :math:`\bar v` the shaped rest vertex and :math:`t` the translation; keypoints
        follow their joint (or vertex). The world axis of a joint's first DoF is
        :math:`W_k R_2^T a`, of its second :math:`W_k a` (local rotation ``R_1 R_2``). No
        autograd: one forward pass and a few batched products. Pose correctives
        (``HandModelData.pose_basis``) are left out of the derivative (exact for models
        without them, such as the default hand; ``tests/test_tracking_energy.py`` checks it
        against autograd in float64).

        Args:
            params: the parameters as :meth:`forward` takes them (dict of (B, ...) tensors;
                missing ones are neutral; ``pose`` is not supported).
            out: this model's output at ``params`` if already computed.
            vertices: optional (B, K) long, the only vertices whose rows are wanted (say the
                front-facing ones of an ICP energy); ``J_vertices`` is then (B, K, 3, P).

        Returns:
            ``(J_vertices (B, V, 3, P), J_keypoints (B, 21, 3, P), out)`` in the parameters'
            device and dtype (mm per radian, mm per mm).

        Raises:
            ValueError: ``params`` holds ``pose`` or a parameter of the wrong shape.
        """
        if params.get("pose") is not None:
            raise ValueError("kinematic_jacobian: the extra per-joint 'pose' rotations are not supported")
        if out is None:
            out = self(**params)
        B = out.vertices.shape[0]
        neutral = self.neutral_parameters(B)
        p = {k: (params.get(k) if params.get(k) is not None else neutral[k]) for k in neutral}
        dev, dt = out.vertices.device, out.vertices.dtype
        desc, dof_joint, second, index, sub, sub_total = self._jacobian_tables(dev, dt)
        W, T = out.transforms[..., :3, :3], out.joints  # (B, J, 3, 3), (B, J, 3)
        v_rest = self.v_template + torch.einsum("bs,svc->bvc", p["beta"], self.shape_basis) + p["offsets"]
        j_rest = self.rest_joints + torch.einsum("bs,sjc->bjc", p["beta"], self.joint_shape_basis)
        G_R = W @ self.rest_orientations.transpose(-1, -2)
        G_t = T - (G_R @ j_rest[..., None])[..., 0]
        # world axes of the DoF
        rot = axis_angle_to_matrix(p["theta"][..., None] * self.dof_axis)  # (B, D, 3, 3)
        eye = torch.eye(3, device=dev, dtype=dt).expand(B, 1, 3, 3)
        R2 = torch.cat([eye, rot], dim=1)[:, self.dof_slots[:, 1]]  # (B, J, 3, 3)
        Wk = W[:, dof_joint]  # (B, D, 3, 3)
        first_axis = (Wk @ R2[:, dof_joint].transpose(-1, -2) @ self.dof_axis[..., None])[..., 0]
        second_axis = (Wk @ self.dof_axis[..., None])[..., 0]
        axes = torch.where(second[None, :, None], second_axis, first_axis)  # (B, D, 3)
        G = torch.cat([G_R, G_t[..., None]], dim=-1).flatten(2)  # (B, J, 12)
        skin_total = self.skin_matrix.sum(-1)

        def chain(points, weight, theta_part):  # -> (B, N, 3, 6 + D)
            # a point blended with weights summing to s moves by s t with the translation t;
            # the rotation increment's column c is e_c x (p - s t)
            d = points - weight[..., None] * p["transl"][:, None]
            J = points.new_zeros(*points.shape[:2], 3, 6 + theta_part.shape[2])
            d0, d1, d2 = d.unbind(-1)
            J[..., 0, 1], J[..., 0, 2] = d2, -d1
            J[..., 1, 0], J[..., 1, 2] = -d2, d0
            J[..., 2, 0], J[..., 2, 1] = d1, -d0
            for c in range(3):
                J[..., c, 3 + c] = weight
            J[..., 6:] = theta_part.transpose(-1, -2)
            return J

        def vertex_rows(pick):  # (B, K) vertex indices -> (B, K, 3, P)
            K = pick.shape[1]
            rest = v_rest.gather(1, pick[..., None].expand(-1, -1, 3))  # (B, K, 3)
            joints = index[pick]  # (B, K, k)
            frames = G.gather(1, joints.reshape(B, -1, 1).expand(-1, -1, 12)).view(B, K, -1, 3, 4)
            carried = (frames[..., :3] * rest[:, :, None, None, :]).sum(-1) + frames[..., 3]  # (B, K, k, 3)
            # per DoF d on joint k: sum over the subtree of k of w_i (G_i v - t_k), over each
            # vertex's top-k skinning joints i: (B, K, D, 3)
            w = sub[pick]  # (B, K, D, k)
            spread = -sub_total[pick][..., None] * T[:, dof_joint][:, None]
            for j in range(joints.shape[2]):
                spread = spread + w[..., j, None] * carried[:, :, None, j]
            posed = out.vertices.gather(1, pick[..., None].expand(-1, -1, 3))
            return chain(posed, skin_total[pick], _cross(axes[:, None], spread))

        every = torch.arange(self.num_vertices, device=dev).expand(B, -1)
        jv = vertex_rows(every if vertices is None else vertices)
        # joints: sum over the subtree of (T_i - t_k), one-hot weights
        joint_spread = desc.T[None, :, :, None] * (T[:, :, None] - T[:, None])  # (B, I, K, 3)
        jt = chain(T, T.new_ones(B, T.shape[1]), _cross(axes[:, None], joint_spread[:, :, dof_joint]))
        from_joint = (self.keypoint_joint >= 0)[None, :, None, None]
        jk = torch.where(from_joint, jt[:, self.keypoint_joint.clamp(min=0)],
                         vertex_rows(self.keypoint_vertex.clamp(min=0).expand(B, -1)))
        return jv, jk, out
