"""Fitting hands to observations: the front door of the library.

>>> from hands import load_hand                                   # doctest: +SKIP
>>> from renderers import Camera
>>> from fitting import Fitter, Observation
>>> fitter = Fitter(load_hand("default"), renderer="soft", device="auto")  # doctest: +SKIP
>>> result = fitter.fit(Observation(depth=depth_mm, camera=camera))      # doctest: +SKIP
>>> result.save("out/frame")                                      # doctest: +SKIP

Modules, in the order a frame goes through them: :mod:`fitting.observation` and
:mod:`fitting.io` (what a camera saw, one view or a calibrated rig, and reading it from files); :mod:`fitting.preprocess`
(segment and crop); :mod:`fitting.initialize` (first guesses and the search over them);
:mod:`fitting.config` (stages, weights, crop); :mod:`fitting.optimizers` (batched Adam) and
:mod:`fitting.levenberg_marquardt` (batched Levenberg-Marquardt over the energies' residuals);
:mod:`fitting.fitter` (energies and the staged fit: :class:`Fitter`); :mod:`fitting.multiview`
(views without depth and calibrated rigs: view-averaged energies, triangulated initialization); :mod:`fitting.result`
and :mod:`fitting.writers` (what comes out); :mod:`fitting.tracking` (sequences in memory) and
:mod:`fitting.sequence` (folders of frames); :mod:`fitting.dataset` (whole datasets, batched,
resumable) and :mod:`fitting.distributed` (sharding them under ``torchrun``); :mod:`fitting.evaluation` (MPJPE, PCK, AUC);
:mod:`fitting.determinism` (bit-identical CPU fits); :mod:`fitting.cpu_memory` (freed CPU memory kept for the batch's temporaries); :mod:`fitting.synthetic` (frames with known
truth); :mod:`fitting.synth_dataset` (SynHand5M-style training sets) and :mod:`fitting.initializer`
(the DeepHPS-style depth initializer network, ``Fitter(..., init="network")``, a trained one
shipped); :mod:`fitting.adaptation` (its unsupervised adaptation to a camera, ``handfit adapt``); :mod:`fitting.uv_atlas`
and :mod:`fitting.texture` (a hand's texture from RGB frames and their fits); :mod:`fitting.cli`
(the ``handfit`` command) last.
"""

from .config import (DEFAULT_RENDERER, DEFAULT_STAGES, DEFAULT_WEIGHTS, PLAUSIBILITY_WEIGHTS, SHARP_SILHOUETTE,
                     TEMPORAL_WEIGHT, FitConfig, Stage)
from .dataset import DatasetOptions, fit_dataset
from .errors import InputError, NoHandFoundError
from .evaluation import auc, evaluate, mpjpe, pck_curve
from .fitter import Fitter, FitState, FitTarget
from .io import read_depth, read_keypoints_2d, read_keypoints_json, read_mask, read_rgb, read_rig
from .observation import MultiViewObservation, Observation, Rig
from .result import FitResult
from .sequence import SequenceOptions, fit_sequence
from .tracking import Tracker, TrackOptions

__all__ = [
    "Fitter", "FitConfig", "FitResult", "FitState", "FitTarget", "Stage", "Observation", "MultiViewObservation", "Rig",
    "Tracker", "TrackOptions", "SequenceOptions", "fit_sequence", "DatasetOptions", "fit_dataset",
    "read_depth", "read_mask", "read_keypoints_json", "read_keypoints_2d", "read_rgb", "read_rig",
    "mpjpe", "pck_curve", "auc", "evaluate",
    "InputError", "NoHandFoundError",
    "DEFAULT_RENDERER", "DEFAULT_STAGES", "DEFAULT_WEIGHTS", "PLAUSIBILITY_WEIGHTS", "SHARP_SILHOUETTE",
    "TEMPORAL_WEIGHT",
]
