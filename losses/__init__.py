"""Energies for hand fitting, as plain functions of tensors.

Every function returns one value per batch element, shape ``(B,)``, so the fitter can weight,
log and stop the frames of a batch one by one; none reduces over the batch. Units: millimetres,
radians and pixels, as each docstring says. Bad shapes raise :class:`ValueError` naming the
argument. This package knows nothing about hands, renderers or the fitter: it only takes tensors.

Image terms (:mod:`losses.image`): :func:`silhouette_loss`, :func:`depth_loss`.
Mesh regularizers (:mod:`losses.mesh`): :func:`laplacian_loss`, :func:`normal_consistency_loss`,
:func:`edge_loss`, :func:`offset_loss`.
Data-to-model (:mod:`losses.points`): :func:`point_to_vertex_loss` (and its search, :func:`nearest_vertex`).
Pose terms (:mod:`losses.pose`): :func:`joint_limit_loss`, :func:`keypoint_3d_loss`,
:func:`keypoint_2d_loss`, :func:`pose_prior_loss`.
Penetration (:mod:`losses.penetration`): :func:`sphere_penetration_loss`,
:func:`fingertip_palm_penetration_loss`, :func:`cylinder_collision_loss`, and the metric
:func:`sphere_overlap_stats`.
Sequences (:mod:`losses.temporal`): :func:`temporal_smoothness_loss`.
Texture (:mod:`losses.texture`): :func:`texture_ncc_loss` (DeepHandMesh's patch NCC).
Residuals (:mod:`losses.residuals`, for Gauss-Newton / Levenberg-Marquardt): each energy as a
vector ``r`` (B, M) with ``E = ||r||^2`` exactly, e.g. :func:`silhouette_residuals`,
:func:`depth_residuals`, :func:`penetration_residuals`.
"""

from .image import depth_loss, silhouette_loss
from .mesh import edge_loss, laplacian_loss, normal_consistency_loss, offset_loss
from .points import nearest_vertex, point_to_vertex_loss
from .penetration import (
    cylinder_collision_loss,
    cylinder_collision_residuals,
    fingertip_palm_penetration_loss,
    penetration_residuals,
    sphere_overlap_stats,
    sphere_penetration_loss,
)
from .pose import joint_limit_loss, keypoint_2d_loss, keypoint_3d_loss, pose_prior_loss
from .residuals import (
    depth_residuals,
    hinge_residuals,
    joint_limit_residuals,
    keypoint_residuals,
    point_to_vertex_residuals,
    silhouette_residuals,
    smooth_l1_residual,
    sqrt_energy_residual,
    temporal_residuals,
)
from .temporal import temporal_smoothness_loss
from .texture import texture_ncc_loss

__all__ = [
    "silhouette_loss",
    "depth_loss",
    "laplacian_loss",
    "normal_consistency_loss",
    "edge_loss",
    "offset_loss",
    "joint_limit_loss",
    "keypoint_3d_loss",
    "keypoint_2d_loss",
    "pose_prior_loss",
    "point_to_vertex_loss",
    "nearest_vertex",
    "sphere_penetration_loss",
    "fingertip_palm_penetration_loss",
    "cylinder_collision_loss",
    "sphere_overlap_stats",
    "temporal_smoothness_loss",
    "texture_ncc_loss",
    "smooth_l1_residual",
    "silhouette_residuals",
    "depth_residuals",
    "point_to_vertex_residuals",
    "keypoint_residuals",
    "joint_limit_residuals",
    "temporal_residuals",
    "hinge_residuals",
    "sqrt_energy_residual",
    "penetration_residuals",
    "cylinder_collision_residuals",
]
