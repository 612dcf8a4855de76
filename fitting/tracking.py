"""Fitting a sequence in memory: a frozen shape, warm starts, recovery, the temporal term.

:class:`Tracker` holds the state of a sequence fit (the frozen shape and the previous fits)
and fits one frame per :meth:`Tracker.step`:

1. **shape** (:meth:`Tracker.calibrate`): the first ``shape_frames`` frames are fitted as one
   batch with every stage (search, pose, shape); their bone scales, shape coefficients and
   offsets are averaged into one hand shape, frozen for the whole sequence;
2. **pose**, frame by frame with the frozen shape: the first frame (and any frame after a
   failed one, or every frame when ``warm_start`` is off) starts from the initial search; the
   others start from a constant-velocity prediction of the two previous fits (rotation
   ``R_t = R_{t-1} R_{t-2}^T R_{t-1}``, translation and angles linearly) and run only the pose
   stages that free the articulation, with the ``temporal`` energy
   (:func:`losses.temporal_smoothness_loss` on the keypoints, mm^2) tying each frame to its
   predecessors; a warm fit that ends with a poor silhouette IoU (``recover_iou``) is fitted
   again from the search without the temporal term, and the better of the two is kept. A
   frame re-acquired that way starts a new motion chain: the next prediction and temporal
   term use it alone (no velocity across the jump).

A warm frame is cropped around the predicted hand (:func:`fitting.preprocess.track_crop`: no
segmentation of the whole frame; ``TrackOptions.tracked_crop``), and the full segmentation runs
only for the first frame, when nothing is found near the prediction, and for a recovery.

With ``TrackOptions(energy="icp", frame_iterations=8)`` this is the fast tracking mode of
``fit-sequence --track``: each warm frame gets a fixed small budget of Levenberg-Marquardt
iterations on the articulated-ICP energy of the real-time trackers (point-to-plane data-to-model,
model-to-data silhouette, priors, temporal; closed-form Jacobians, no rasterisation inside the
solver: :mod:`fitting.tracking_energy`) and is rendered once, for the IoU of the lost-track test
and the metrics. ``energy="render"`` with ``FitConfig(optimizer="lm")`` runs LM on the
render-and-compare energy instead (forward-mode Jacobians through the soft rasterizer, about
seven times slower). ``bench/tracking.py`` measures frames per second.

:meth:`fitting.Fitter.track` iterates a tracker over observations; the folder runner behind
``handfit fit-sequence`` (:mod:`fitting.sequence`) drives one with :meth:`Tracker.resume` for
frames finished by an earlier run and :meth:`Tracker.skip` for unreadable ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle

from .config import GLOBAL_PARAMETERS, SHAPE_PARAMETERS
from .errors import InputError
from .preprocess import prepare, track_crop
from .tracking_energy import TRACKING_ENERGIES
from .result import FitResult

__all__ = ["TrackOptions", "Tracker", "predict_parameters", "keypoint_jitter"]


@dataclasses.dataclass
class TrackOptions:
    """Settings of a sequence fit (:class:`Tracker`, :meth:`fitting.Fitter.track`).

    Attributes:
        shape_frames: N, the frames whose average shape is frozen for the sequence.
        warm_start: start each frame from the constant-velocity prediction of the previous
            fits (False: every frame runs the initial search, a "cold start").
        recover_iou: a warm-started frame whose silhouette IoU ends below this is fitted again
            from the initial search without the temporal term, and the better of the two (by
            IoU) is kept (the metric ``recovered`` says which; the losing fit's iterations
            count as search iterations). Large motions between frames (a hand turning fast,
            dropped frames) break the constant-velocity prediction; 0 turns recovery off.
        frame_iterations: the fixed budget of a warm-started frame: at most this many
            iterations in each of its stages (None: the stages' own caps). With the
            Levenberg-Marquardt optimizer (``FitConfig(optimizer="lm")``) a handful (the
            trackers of the field use 6-8) is enough for the small motion between frames of a
            contiguous recording: this is the fast tracking mode (``fit-sequence --track``).

        recover_from_last_pose: the search of a lost frame starts its candidates with the
            articulation of the last fitted frame instead of the open hand (a hand that jumps
            or turns between two frames seldom changes its finger pose as much).
        energy: what a warm-started frame minimises: ``"render"``, the render-and-compare
            energy of :class:`fitting.Fitter` with its optimizer, or ``"icp"``, the
            articulated-ICP energy of the real-time trackers (point-to-plane data-to-model,
            model-to-data silhouette, priors, temporal) with closed-form Jacobians, by LM
            (:mod:`fitting.tracking_energy`; the frame is rendered once, for the IoU of the
            lost-track test and the metrics). Cold frames and recoveries always use the render
            energy (its search).
        tracked_crop: crop a warm-started frame around the predicted hand
            (:func:`fitting.preprocess.track_crop`) instead of segmenting the whole frame; the
            full segmentation runs on the first frame, when nothing is found near the
            prediction, and for a recovery.

    Raises:
        ValueError: ``shape_frames`` < 1, ``recover_iou`` outside [0, 1],
            ``frame_iterations`` < 1 or an unknown ``energy``.
    """

    shape_frames: int = 3
    warm_start: bool = True
    recover_iou: float = 0.8
    frame_iterations: int | None = None
    recover_from_last_pose: bool = False
    energy: str = "render"
    tracked_crop: bool = True

    def __post_init__(self):
        if self.energy not in TRACKING_ENERGIES:
            raise ValueError(f"energy must be one of {TRACKING_ENERGIES}, got {self.energy!r}")
        fi = self.frame_iterations
        if fi is not None and (isinstance(fi, bool) or not isinstance(fi, int) or fi < 1):
            raise ValueError(f"frame_iterations must be an int >= 1 or None, got {fi!r}")
        if isinstance(self.shape_frames, bool) or not isinstance(self.shape_frames, int) or self.shape_frames < 1:
            raise ValueError(f"shape_frames must be an int >= 1, got {self.shape_frames!r}")
        if not 0.0 <= self.recover_iou <= 1.0:
            raise ValueError(f"recover_iou must be in [0, 1], got {self.recover_iou}")


def predict_parameters(previous: list[dict]) -> dict:
    """Constant-velocity prediction from the last one or two fits (dicts of (1, ...) tensors).

    Translation, angles and other parameters extrapolate linearly; the global rotation
    extrapolates on SO(3): ``R_t = (R_{t-1} R_{t-2}^T) R_{t-1}``. With one fit, its copy.
    """
    last = {k: v.clone() for k, v in previous[-1].items()}
    if len(previous) < 2:
        return last
    before = previous[-2]
    out = dict(last)
    for k in ("transl", "theta"):
        out[k] = 2 * last[k] - before[k]
    R1, R0 = axis_angle_to_matrix(last["global_orient"]), axis_angle_to_matrix(before["global_orient"])
    out["global_orient"] = matrix_to_axis_angle(R1 @ R0.transpose(-1, -2) @ R1)
    return out


def keypoint_jitter(keypoints: torch.Tensor | np.ndarray) -> float:
    """Mean frame-to-frame keypoint acceleration ``|k_t - 2 k_{t-1} + k_{t-2}|``, mm/frame^2.

    Args:
        keypoints: (T, K, 3) mm, consecutive frames.

    Returns:
        the mean over frames t = 2..T-1 and keypoints; NaN when T < 3.

    Raises:
        ValueError: ``keypoints`` is not (T, K, 3).
    """
    k = torch.as_tensor(np.asarray(keypoints), dtype=torch.float64)
    if k.ndim != 3 or k.shape[-1] != 3:
        raise ValueError(f"keypoints must have shape (T, K, 3), got {tuple(k.shape)}")
    if k.shape[0] < 3:
        return float("nan")
    acc = k[2:] - 2 * k[1:-1] + k[:-2]
    return float(acc.norm(dim=-1).mean())


class Tracker:
    """The state of a sequence fit and its per-frame step (see the module docstring).

    Args:
        fitter: the :class:`fitting.Fitter` (its config's stages: the shape frames run all of
            them, the other frames the pose stages).
        options: :class:`TrackOptions`.
        shape: optional frozen shape (dict of (1, ...) tensors ``alpha``, ``beta``,
            ``offsets``); None: :meth:`calibrate` must run before :meth:`step`.
    """

    def __init__(self, fitter, options: TrackOptions | None = None, shape: dict | None = None):
        self.fitter = fitter
        self.options = options or TrackOptions()
        self.shape = None if shape is None else self._on_device(shape)
        stages = fitter.config.stages
        self.pose_stages = tuple(s for s in stages if not set(s.free) & SHAPE_PARAMETERS)
        self.warm_stages = tuple(s for s in self.pose_stages if not set(s.free) <= GLOBAL_PARAMETERS) \
            or self.pose_stages
        budget = self.options.frame_iterations
        if budget is not None:
            self.warm_stages = tuple(dataclasses.replace(s, iterations=min(s.iterations, budget))
                                     for s in self.warm_stages)
        #: per frame so far: (params dict of (1, ...), keypoints (21, 3)) on the fit's device,
        #: or None for a frame that failed
        self.history: list[tuple[dict, torch.Tensor] | None] = []
        #: index of the first frame of the current motion chain (a re-acquired frame starts one)
        self._chain_start = 0

    def _on_device(self, tensors: dict) -> dict:
        return {k: v.to(self.fitter.device, self.fitter.dtype) for k, v in tensors.items()}

    def calibrate(self, observations: list) -> tuple[dict, list[str], dict[str, str]]:
        """Fit the observations as one batch with every stage and freeze their mean shape.

        Frames without a findable hand are left out (and returned as failures).

        Returns:
            the shape (dict of (1, ...) tensors ``alpha``, ``beta``, ``offsets``), the names of
            the frames used, and failures (name -> reason).

        Raises:
            InputError: none of the observations could be segmented.
        """
        cfg = self.fitter.config
        crops, used, failures = [], [], {}
        for obs in observations:
            try:
                crops.append(prepare(obs, cfg.box_mm, cfg.working_size))
                used.append(obs)
            except InputError as err:
                failures[obs.name] = str(err)
        if not crops:
            first = next(iter(failures.values()), "no frame given")
            raise InputError(f"none of the {len(observations)} calibration frames could be segmented "
                             f"(first problem: {first})")
        results = self.fitter.fit_crops(crops, observations=used)
        shape = {k: torch.stack([r.params[k] for r in results]).mean(0, keepdim=True)
                 for k in sorted(SHAPE_PARAMETERS)}
        self.shape = self._on_device(shape)
        return shape, [o.name for o in used], failures

    def resume(self, params: dict, keypoints: torch.Tensor) -> None:
        """Record a frame finished earlier (params: dict of (1, ...), keypoints (21, 3) mm)."""
        self.history.append((self._on_device(params), keypoints.to(self.fitter.device, self.fitter.dtype)))

    def skip(self) -> None:
        """Record a frame that could not be fitted: the next one starts from the search."""
        self.history.append(None)

    def step(self, observation) -> FitResult:
        """Fit the next frame of the sequence (see the module docstring).

        Raises:
            InputError: the frame has no findable hand (recorded as skipped first).
            RuntimeError: no shape yet (call :meth:`calibrate`).
        """
        if self.shape is None:
            raise RuntimeError("Tracker.step: no frozen shape yet; call calibrate() first")
        fitter, o = self.fitter, self.options
        cfg = fitter.config

        def full_crop():
            try:
                return prepare(observation, cfg.box_mm, cfg.working_size)
            except InputError:
                self.skip()
                raise

        # the last two frames, if fitted, for the prediction and the temporal term
        recent = [h for h in self.history[-2:] if h is not None] if self.history and self.history[-1] else []
        if self._chain_start >= len(self.history) - 1:
            # the last frame was re-acquired by the search: no velocity across the jump
            recent = recent[-1:]
        prev_kp = torch.stack([k for _, k in recent])[None] if recent else None
        frame = dict(observations=[observation])
        if o.warm_start and recent:
            init = predict_parameters([p for p, _ in recent])
            init.update(self.shape)
            crop = segmented = None
            if o.tracked_crop:
                try:
                    with torch.no_grad():
                        predicted = fitter.model(**init).vertices[0]
                    crop = track_crop(observation, predicted, cfg.box_mm, cfg.working_size)
                except InputError:
                    crop = None  # nothing near the prediction: segment the whole frame
            if crop is None:
                crop = segmented = full_crop()
            result = fitter.fit_crops([crop], init=init, previous_keypoints=prev_kp, stages=self.warm_stages,
                                      energy=o.energy, **frame)[0]
            result.metrics["recovered"] = 0
            if result.metrics["iou"] < o.recover_iou:
                warm = result
                if segmented is None:
                    try:
                        segmented = prepare(observation, cfg.box_mm, cfg.working_size)
                    except InputError:
                        segmented = None  # no hand found by the segmentation either: keep the warm fit
                if segmented is not None:
                    # re-acquire without the temporal term: it is what held the hand back
                    start = dict(self.shape)
                    if o.recover_from_last_pose:
                        start["theta"] = recent[-1][0]["theta"]
                    result = fitter.fit_crops([segmented], shape=start, stages=self.pose_stages, **frame)[0]
                    recovered = result.metrics["iou"] > warm.metrics["iou"]
                    loser = warm if recovered else result
                    if not recovered:
                        result = warm
                    result.metrics["recovered"] = int(recovered)
                    result.metrics["search_iterations"] += (loser.metrics["iterations"]
                                                            + loser.metrics["search_iterations"])
                    result.metrics["seconds"] += loser.metrics["seconds"]
        else:
            result = fitter.fit_crops([full_crop()], shape=self.shape, previous_keypoints=prev_kp,
                                      stages=self.pose_stages, **frame)[0]
        if result.metrics.get("recovered"):
            self._chain_start = len(self.history)
        self.resume({k: v[None] for k, v in result.params.items()}, result.keypoints)
        return result
