"""Helpers shared by the loaders of user-supplied hands (MANO files, rigged glTF hands).

They put a rigged hand into handfit's canonical hand frame (see :mod:`hands.model_data`),
check that it is the side the caller says it is, and give it the default hand's 26-DoF
articulation layout (DeepHPS, Malik et al. 2018: 6 global + per digit first-joint flexion and
abduction, second and third joint flexion) with the default hand's limits
(:data:`hands.anny_hand.LIMITS`).

All positions are millimetres, all angles radians.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .anny_hand import DIGITS, LIMITS

__all__ = ["SideError", "canonical_transform", "check_side", "articulation_table", "dof_names_of"]


class SideError(ValueError):
    """A hand file is the other side (a left hand given as right, or the reverse)."""


def canonical_transform(wrist: torch.Tensor, index_mcp: torch.Tensor, middle_mcp: torch.Tensor,
                        little_mcp: torch.Tensor, side: str) -> torch.Tensor:
    """Rotation (3, 3) whose rows are the canonical axes expressed in the source frame.

    ``x_canonical = C @ (x - origin)``. The wrist -> middle MCP direction becomes ``-y``, the
    little -> index MCP direction (orthogonalised) ``+x`` for a right hand and ``-x`` for a
    left hand, and the palm normal (out of the palm) ``-z``; ``C`` is a proper rotation.

    Args:
        wrist, index_mcp, middle_mcp, little_mcp: (3,) joint positions, any length unit.
        side: ``"right"`` or ``"left"``.

    Raises:
        ValueError: ``side`` is not ``"right"``/``"left"`` or the joints are degenerate.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    a = middle_mcp - wrist
    b = index_mcp - little_mcp
    if float(a.norm()) == 0.0 or float(torch.linalg.cross(a, b).norm()) < 1e-9 * float(a.norm() * b.norm() + 1e-30):
        raise ValueError("the wrist and MCP joints are degenerate (coincident or collinear)")
    a = F.normalize(a, dim=0)
    b = F.normalize(b - a * (b @ a), dim=0)
    if side == "right":
        n = torch.linalg.cross(b, a)  # out of the palm for a right hand
        return torch.stack([b, -a, -n])
    n = torch.linalg.cross(a, b)  # out of the palm for a left hand (the mirror image)
    return torch.stack([-b, -a, -n])


def check_side(thumb_points: torch.Tensor, mcp_points: torch.Tensor, side: str, what: str,
               margin_mm: float = 5.0) -> None:
    """Check handedness: in the canonical frame the thumb lies on the palm side (``-z``).

    A hand is mirror-symmetric but for its palm side: the thumb is opposed to the palm. If
    the canonical frame was built for the wrong side, the palm normal points out of the back
    of the hand and the thumb appears behind the palm.

    Args:
        thumb_points: (N, 3) canonical points of the distal thumb (joints, tip), mm.
        mcp_points: (4, 3) canonical MCP joints of the four fingers, mm.
        side: the side the caller claims.
        what: the file or argument named in the error.
        margin_mm: a thumb less than this far behind the palm is let through (a flat hand
            whose thumb lies in the palm plane is ambiguous); the shared rigged hands and
            synthetic MANO tests put it about 20-50 mm in front.

    Raises:
        SideError: the thumb is behind the palm, i.e. the hand is the other side.
    """
    depth = float(thumb_points[:, 2].mean() - mcp_points[:, 2].mean())
    if depth > margin_mm:
        other = "left" if side == "right" else "right"
        raise SideError(
            f"{what}: expected a {side} hand, but its thumb lies {depth:.1f} mm behind the palm "
            f"when read as a {side} hand: this looks like a {other} hand (pass side={other!r}, or --side {other} on the command line)"
        )


def dof_names_of(digit: str) -> tuple[str, str, str, str]:
    """The four DoF names of a digit, as the default hand names them."""
    j1 = "cmc" if digit == "thumb" else "mcp"
    j2, j3 = ("mcp", "ip") if digit == "thumb" else ("pip", "dip")
    return (f"{digit}_{j1}_flex", f"{digit}_{j1}_abd", f"{digit}_{j2}_flex", f"{digit}_{j3}_flex")


def articulation_table(chains: dict[str, tuple[int, int, int]], rest_joints: torch.Tensor,
                       rest_orientations: torch.Tensor, ends: dict[str, torch.Tensor], side: str):
    """The 20 articulation DoF of the default hand's layout for a rigged hand.

    Per digit (thumb first), ``[first_flex, first_abd, second_flex, third_flex]``. Flexion
    turns about ``d x n`` (``d`` the bone direction towards the next joint, ``n = -z`` the
    canonical palm-side direction made orthogonal to ``d``), so that a positive angle bends
    the digit towards the palm; abduction turns about ``n`` for a right hand (``-n`` for a
    left hand), so that a positive angle moves the digit towards the little finger, as on the
    default hand and its mirror image. Axes are returned in each joint's local frame.

    Args:
        chains: digit -> indices of its three articulated joints, proximal first.
        rest_joints: (J, 3) canonical joint positions, mm.
        rest_orientations: (J, 3, 3) canonical joint frames.
        ends: digit -> (3,) canonical point beyond the third joint (the fingertip), mm.
        side: ``"right"`` or ``"left"``.

    Returns:
        dof_joint (20,) long, dof_axis (20, 3), dof_names (list of 20), dof_lower (20,),
        dof_upper (20,) radians.
    """
    n = torch.tensor([0.0, 0.0, -1.0], dtype=rest_joints.dtype)
    sign = 1.0 if side == "right" else -1.0
    dof_joint, dof_axis, names, lower, upper = [], [], [], [], []
    for digit in DIGITS:
        j1, j2, j3 = chains[digit]
        points = [rest_joints[j1], rest_joints[j2], rest_joints[j3], ends[digit]]
        axes = []
        for k, joint in enumerate((j1, j2, j3)):
            d = F.normalize(points[k + 1] - points[k], dim=0)
            n_perp = F.normalize(n - d * (d @ n), dim=0)
            flex = F.normalize(torch.linalg.cross(d, n_perp), dim=0)
            to_local = rest_orientations[joint].T
            axes.append((joint, to_local @ flex))
            if k == 0:
                axes.append((joint, to_local @ (sign * n_perp)))
        for (joint, axis), name, (lo, hi) in zip(axes, dof_names_of(digit), LIMITS[digit]):
            dof_joint.append(joint)
            dof_axis.append(axis)
            names.append(name)
            lower.append(lo)
            upper.append(hi)
    return (torch.tensor(dof_joint, dtype=torch.long), torch.stack(dof_axis).float(), names,
            torch.tensor(lower, dtype=torch.float32), torch.tensor(upper, dtype=torch.float32))
