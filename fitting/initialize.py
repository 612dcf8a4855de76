"""First guesses of the hand's global pose from a segmented depth blob.

The translation comes from the blob's 3D centroid, the rotation from its principal axes:
the largest one is the hand's long axis, the smallest one (the direction in which the
surface is thinnest) the palm normal. They leave four candidates open (fingers up or down
the axis, palm towards or away from the camera); :func:`global_candidates` returns all four
and the fitter keeps the one that fits best.
"""

from __future__ import annotations

import torch
from pytorch3d.transforms import matrix_to_axis_angle

#: The visible surface lies in front of the hand's centroid by about half the hand's
#: thickness; the centroid of the depth points is pushed back along the viewing ray by this
#: much (mm) to start the model's centroid.
SURFACE_TO_CENTRE_MM = 12.0


def principal_axes(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid (3,) and principal axes (3, 3) (columns, largest variance first) of (N, 3) points.

    Raises:
        ValueError: fewer than 3 points or not of shape (N, 3).
    """
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] < 3:
        raise ValueError(f"points must have shape (N, 3) with N >= 3, got {tuple(points.shape)}")
    centre = points.mean(0)
    cov = (points - centre).T @ (points - centre) / points.shape[0]
    _, vecs = torch.linalg.eigh(cov.double())  # ascending eigenvalues
    return centre, vecs.flip(1).to(points.dtype)


def global_candidates(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Four initial global poses of a hand whose visible surface points are ``points``.

    The model's canonical frame (see :mod:`hands.model_data`) has its fingers along ``-y``,
    its palm normal along ``-z`` and the thumb along ``+x``. Each candidate rotation maps
    ``-y`` to ``+-`` the blob's long axis and ``-z`` to ``+-`` its thinnest axis.

    Args:
        points: (N, 3) the segmented hand's 3D points, camera coordinates, mm.

    Returns:
        global_orient (4, 3) axis-angle (radians) and transl (4, 3) mm.

    Raises:
        ValueError: see :func:`principal_axes`.
    """
    centre, axes = principal_axes(points)
    long_axis, normal = axes[:, 0], axes[:, 2]
    rotations = []
    for s_long in (1.0, -1.0):
        for s_normal in (1.0, -1.0):
            col_y = -s_long * long_axis   # image of canonical +y (towards the wrist)
            col_z = -s_normal * normal    # image of canonical +z (the back of the hand)
            col_x = torch.linalg.cross(col_y, col_z)
            rotations.append(torch.stack([col_x, col_y, col_z], dim=1))
    R = torch.stack(rotations)
    ray = centre / centre.norm()
    transl = (centre + SURFACE_TO_CENTRE_MM * ray).expand(4, 3).clone()
    return matrix_to_axis_angle(R), transl
