"""What a fit gives back: :class:`FitResult` (parameters, mesh, keypoints, metrics, history)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from renderers import RenderOutput

from .observation import Observation
from .preprocess import HandCrop
from .writers import write_result

__all__ = ["FitResult", "fit_metrics"]


@dataclasses.dataclass
class FitResult:
    """The fit of one frame. Tensors are detached, on the CPU, in the fit's dtype.

    Attributes:
        name: the observation's name.
        params: the hand parameters, unbatched tensors (see :class:`hands.HandModel`):
            ``global_orient`` (3,) rad, ``transl`` (3,) mm, ``theta`` (D,) rad, ``alpha`` (6,),
            ``beta`` (S,), ``offsets`` (V, 3) mm.
        vertices: (V, 3) mm, the input camera's coordinates (OpenCV axes).
        faces: (F, 3) long.
        keypoints: (21, 3) mm, input camera coordinates, ``hands.KEYPOINT_NAMES`` order.
        metrics: ``iou`` (silhouette IoU against the segmented hand at the working
            resolution), ``depth_mean_mm``/``depth_median_mm`` (absolute depth residual where
            both rendered and observed hand exist), ``iterations`` (of the final fit),
            ``search_iterations`` (of the initial candidates and hypotheses, summed over
            them), ``seconds`` (per frame, search included), ``nan_events``,
            ``penetration_max_mm`` (the largest overlap of two spheres of
            :class:`hands.CollisionProxies` that must not touch) and ``penetration_pairs``
            (how many such pairs overlap), ``occluded_fraction`` (the share of the mask's
            pixels the model cannot explain, see ``occluded``); with the observation's ``keypoints_3d``,
            ``mpjpe_mm`` (mean per-joint position error over the given keypoints, mm), with
            its ``keypoints_2d``, ``keypoints_2d_error_px`` (mean reprojection error in the
            frame's pixels). When those keypoints were also fitted (their weights are on by
            default), these measure agreement with them, not an independent error.
        history: per iteration: ``stage``, ``iteration``, ``total`` and the unweighted terms
            (Levenberg-Marquardt iterations also record their damping ``lambda``).
        crop: the :class:`~fitting.preprocess.HandCrop` the fit ran in; ``render`` the final
            render of the crop.
        observation: the :class:`~fitting.Observation` that was fitted (for :meth:`save`).
        occluded: (S, S) bool, the crop's mask pixels the fitted model cannot explain (a held
            object or another occluder, :func:`fitting.fitter.occluded_pixels`) and the pixels
            of a held object separated from the mask (``crop.occluder_depth``,
            :func:`fitting.held_object.separate_held_object`); their share of the mask with
            the object is ``metrics["occluded_fraction"]``.
    """

    name: str
    params: dict
    vertices: torch.Tensor
    faces: torch.Tensor
    keypoints: torch.Tensor
    metrics: dict
    history: list
    crop: HandCrop
    render: RenderOutput
    observation: Observation | None = None
    occluded: torch.Tensor | None = None

    def save(self, out_dir: str | Path, renderer=None, files: tuple[str, ...] | None = None) -> dict[str, Path]:
        """Write ``params.json``, ``result.npz``, ``mesh.obj``, ``overlay.png`` and ``energy.csv``
        (or the given ``files`` of them) into ``out_dir``: :func:`fitting.writers.write_result`
        (its arguments, return value and errors).
        """
        return write_result(self, out_dir, renderer, files)


def fit_metrics(render: RenderOutput, target) -> dict[str, torch.Tensor]:
    """Silhouette IoU and absolute depth residuals (mm), each (B,), on the render's device.

    IoU compares the hard rendered coverage with the target mask (> 0.5); the depth residual
    is taken over pixels where both the render and the observation have hand depth (NaN for
    a frame where none overlap).

    Args:
        render: the final render of B frames, maps (B, H, W).
        target: a :class:`~fitting.fitter.FitTarget` with ``mask`` and ``depth`` (B, H, W).
    """
    target_mask = target.mask > 0.5
    inter = (render.mask & target_mask).flatten(1).sum(1)
    union = (render.mask | target_mask).flatten(1).sum(1)
    iou = inter.to(render.depth.dtype) / union.clamp(min=1).to(render.depth.dtype)
    both = render.mask & (target.depth > 0)
    residual = (render.depth - target.depth).abs()
    nan = torch.full((), float("nan"), device=residual.device, dtype=residual.dtype)
    mean, median = [], []
    for b in range(render.depth.shape[0]):
        r = residual[b][both[b]]
        mean.append(r.mean() if r.numel() else nan)
        median.append(r.median() if r.numel() else nan)
    return {"iou": iou, "depth_mean_mm": torch.stack(mean), "depth_median_mm": torch.stack(median)}
