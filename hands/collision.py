"""Sphere and cylinder proxies of a hand for penetration and collision energies (mm).

:class:`CollisionProxies` turns a :class:`hands.HandModel` into the plain tensors that the
energies of :mod:`losses.penetration` take: sphere centres (B, S, 3) that follow the posed
joint frames, radii (S,), the bone of each sphere, the pairs of spheres that must not
overlap, the fingertip sphere chains and the palm's vertices, and one cylinder per bone.

Construction (DeepHandMesh, Moon et al. ECCV 2020, Sec. 4 "Penetration loss"):

- bones are the 20 segments of the 21-keypoint skeleton (wrist to each CMC/MCP, then along
  each digit to its tip, ``hands.KEYPOINT_NAMES`` order);
- K spheres (default 10) per bone, evenly spaced from its parent keypoint to its child
  keypoint, in the rest pose (theta = 0, template shape). The fingertip keypoint is a
  surface vertex, so the last bone of each digit stops ``tip_inset`` of the previous
  sphere's radius short of it;
- the rig's joints sit off the middle of the fingers and the palm, so each centre is then
  moved to the centroid of the nearby vertices (a slab across the bone, within
  ``section_mm`` of it, skinned mostly to the same part); a deviation from the paper, whose
  centres stay on the joint line, needed for spheres to fill the palm;
- each radius is the distance from the centre to the closest rest-pose vertex (the paper's
  rule);
- a sphere is carried rigidly by the joint frame of its bone's parent keypoint, so posed
  centres are ``R_j c_local + t_j`` from :attr:`HandOutput.transforms`; bone-length scales
  do not stretch them;
- pairs of spheres on the same or adjacent bones (bones sharing a keypoint) are left out
  (Eq. 2), and so are pairs that already overlap in the rest pose (neighbouring metacarpals
  and knuckles touch in a real hand too, which is anatomy, not penetration);
- palm vertices are those whose dominant skinning joint is the palm (the root, the wrist
  or a metacarpal; DeepHandMesh Sec. 4, non-rigid term).
"""

from __future__ import annotations

import torch
from torch import nn

from .model import HandModel, HandOutput

#: The 20 bones of the 21-keypoint skeleton as (parent keypoint, child keypoint).
BONES: tuple[tuple[int, int], ...] = tuple(
    pair for digit in range(5)
    for pair in ((0, 1 + 4 * digit), (1 + 4 * digit, 2 + 4 * digit), (2 + 4 * digit, 3 + 4 * digit),
                 (3 + 4 * digit, 4 + 4 * digit))
)
#: The bones of the distal phalanges (thumb, index, middle, ring, little), as indices into BONES.
FINGERTIP_BONES: tuple[int, ...] = (3, 7, 11, 15, 19)
#: Joint names whose vertices form the palm (a prefix match).
PALM_JOINT_PREFIXES = ("root", "wrist", "metacarpal")


class CollisionProxies(nn.Module):
    """Spheres along the bones of a hand, and cylinders around them (all mm).

    Args:
        model: the hand model; the proxies are built from its rest pose.
        spheres_per_bone: K, the spheres per bone (DeepHandMesh uses 10).
        section_mm: how far from the bone's axis vertices count for centring a sphere.
        tip_inset: the last bone of a digit ends this many radii (of its first sphere) short
            of the fingertip keypoint, which lies on the surface.
        min_section: a sphere is centred only when at least this many vertices are near it.

    Attributes (buffers):
        local_centers: (S, 3) mm, sphere centres in their carrying joint's frame.
        sphere_joint: (S,) long, the joint carrying each sphere.
        sphere_bone: (S,) long, the bone (index into :data:`BONES`) of each sphere.
        radii: (S,) mm.
        allowed: (S, S) bool, pairs that must not overlap.
        tip_index: (5, K) long, the spheres of each digit's distal bone, parent to tip.
        palm_index: (P,) long, the palm's vertices.
        cylinder_radii: (20,) mm, the mean sphere radius of each bone.
        cylinder_allowed: (20, S) bool, the (bone cylinder, sphere centre) pairs tested.

    Raises:
        ValueError: ``spheres_per_bone`` < 2.

    Example:
        >>> proxies = CollisionProxies(model)                       # doctest: +SKIP
        >>> out = model(theta=theta)                                # doctest: +SKIP
        >>> centers = proxies.centers(out)                          # doctest: +SKIP
        >>> losses.sphere_penetration_loss(centers, proxies.radii, proxies.allowed)  # doctest: +SKIP
    """

    def __init__(self, model: HandModel, spheres_per_bone: int = 10, section_mm: float = 15.0,
                 tip_inset: float = 0.7, min_section: int = 8):
        super().__init__()
        if spheres_per_bone < 2:
            raise ValueError(f"spheres_per_bone must be at least 2, got {spheres_per_bone}")
        K = self.K = spheres_per_bone
        data = model.data
        with torch.no_grad():
            rest = model(**model.neutral_parameters(1))
        verts = rest.vertices[0].double().cpu()  # built on the CPU; the caller moves the module
        kp = rest.keypoints[0].double().cpu()
        dominant = data.skin_indices.gather(1, data.skin_weights.argmax(1, keepdim=True))[:, 0]
        is_palm_joint = torch.tensor([n.startswith(PALM_JOINT_PREFIXES) for n in data.joint_names])
        palm_vertex = is_palm_joint[dominant]
        kp_joint = data.keypoint_joint.tolist()

        centers, radii, sphere_joint, sphere_bone = [], [], [], []
        t = torch.linspace(0.0, 1.0, K, dtype=torch.float64)
        for bone, (a, b) in enumerate(BONES):
            pa, pb = kp[a], kp[b]
            length = (pb - pa).norm()
            if bone in FINGERTIP_BONES:  # the tip keypoint is on the surface: stop short of it
                r0 = (verts - pa).norm(dim=-1).min()
                pb = pa + (pb - pa) * (1.0 - tip_inset * r0 / length).clamp(0.5, 1.0)
            line = pa + t[:, None] * (pb - pa)  # (K, 3)
            axis = (pb - pa) / length
            carrier = kp_joint[a]
            # vertices of the same part: the palm for palm bones, else those of the carrying
            # joint and its child (the bone's own segment)
            if a == 0:
                part = palm_vertex
            else:
                family = [carrier] + [j for j, p in enumerate(data.parents.tolist()) if p == carrier]
                part = torch.isin(dominant, torch.tensor(family, dtype=torch.long))
            rel = verts[None] - line[:, None]  # (K, V, 3)
            along = rel @ axis
            radial = (rel - along[..., None] * axis).norm(dim=-1)
            near = (along.abs() < 2.5) & (radial < section_mm) & part[None]
            count = near.sum(1, keepdim=True)
            mean = (near[..., None] * verts[None]).sum(1) / count.clamp(min=1)
            # a section of a few vertices is one side of the part only: keep the joint line
            centre = torch.where(count >= min_section, mean, line)
            radius = (verts[None] - centre[:, None]).norm(dim=-1).min(1).values
            centers.append(centre)
            radii.append(radius)
            sphere_joint += [carrier] * K
            sphere_bone += [bone] * K
        centers = torch.cat(centers)  # (S, 3) rest
        radii = torch.cat(radii)
        sphere_joint = torch.tensor(sphere_joint, dtype=torch.long)
        sphere_bone = torch.tensor(sphere_bone, dtype=torch.long)
        frames = rest.transforms[0].double()[sphere_joint]  # (S, 4, 4)
        local = ((centers - frames[:, :3, 3])[:, None, :] @ frames[:, :3, :3])[:, 0]

        bones = torch.tensor(BONES)
        share = (bones[:, None, :, None] == bones[None, :, None, :]).flatten(2).any(-1)  # (20, 20)
        adjacent = share[sphere_bone][:, sphere_bone]
        gap = (centers[:, None] - centers[None]).norm(dim=-1)
        touching = radii[:, None] + radii[None, :] - gap > 0
        allowed = ~adjacent & ~touching

        dt = model.v_template.dtype
        self.register_buffer("local_centers", local.to(dt))
        self.register_buffer("sphere_joint", sphere_joint)
        self.register_buffer("sphere_bone", sphere_bone)
        self.register_buffer("radii", radii.to(dt))
        self.register_buffer("allowed", allowed)
        self.register_buffer("tip_index", torch.tensor(FINGERTIP_BONES)[:, None] * K + torch.arange(K))
        self.register_buffer("palm_index", palm_vertex.nonzero()[:, 0])
        cyl_r = radii.view(len(BONES), K).mean(1)
        self.register_buffer("cylinder_radii", cyl_r.to(dt))
        # rest-pose cylinder test: pairs already inside (or on adjacent bones) are left out
        start, end = centers.view(len(BONES), K, 3)[:, 0], centers.view(len(BONES), K, 3)[:, -1]
        mu, half = 0.5 * (start + end), 0.5 * (end - start)
        rel = centers[None] - mu[:, None]
        ax = (rel * half[:, None]).sum(-1) ** 2 / (half**2).sum(-1)[:, None]
        inside = ((half**2).sum(-1)[:, None] > ax) & (cyl_r[:, None] ** 2 > (rel**2).sum(-1) - ax)
        self.register_buffer("cylinder_allowed", ~share[:, sphere_bone] & ~inside)

    @property
    def num_spheres(self) -> int:
        return int(self.radii.shape[0])

    def centers(self, output: HandOutput) -> torch.Tensor:
        """Posed sphere centres (B, S, 3), mm, from the hand's joint frames ``output.transforms``."""
        T = output.transforms[:, self.sphere_joint]  # (B, S, 4, 4)
        return (T[..., :3, :3] @ self.local_centers[None, :, :, None])[..., 0] + T[..., :3, 3]

    def fingertip_spheres(self, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distal-bone chains: centres (B, 5, K, 3) mm and radii (5, K) mm, parent to tip."""
        return centers[:, self.tip_index], self.radii[self.tip_index]

    def palm_vertices(self, output: HandOutput) -> torch.Tensor:
        """The palm's posed vertices (B, P, 3), mm."""
        return output.vertices[:, self.palm_index]

    def cylinders(self, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cylinder end points (B, 20, 3) each (first and last sphere centre of each bone), mm."""
        c = centers.view(centers.shape[0], len(BONES), self.K, 3)
        return c[:, :, 0], c[:, :, -1]
