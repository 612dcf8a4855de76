"""What a fit is told: its stages, energy weights, step sizes, stopping rules and crop.

Everything here is a plain setting (numbers, names, tuples); :class:`fitting.Fitter` reads a
:class:`FitConfig` and nothing else. Units: millimetres, radians, pixels of the working crop.
"""

from __future__ import annotations

import dataclasses
import math

PARAMETER_NAMES = ("global_orient", "transl", "theta", "alpha", "beta", "offsets")

#: Parameters whose step sizes and stages a fit controls (see :class:`hands.HandModel`).
GLOBAL_PARAMETERS = frozenset({"global_orient", "transl"})
SHAPE_PARAMETERS = frozenset({"alpha", "beta", "offsets"})

#: The renderer a :class:`Fitter` uses when none is given (see ``bench/renderer_speed.py`` and
#: ``bench/fit_sr305.py --renderer`` for the speed and accuracy of each).
DEFAULT_RENDERER = "soft"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One optimisation stage.

    Attributes:
        name: shown in the history.
        free: the parameters optimised in this stage (others stay fixed).
        iterations: the most iterations; a frame leaves the stage earlier when converged.
        render_settings: per-call renderer overrides for this stage, e.g. a wider soft
            silhouette (``sigma_px``) early on so that the outline pulls from further away.
        learning_rates: step sizes of this stage that differ from the config's, e.g. small
            ones for parameters an earlier stage has converged (Adam's first step moves every
            parameter by its full step size, which would throw a converged pose away).
    """

    name: str
    free: tuple[str, ...]
    iterations: int
    render_settings: dict = dataclasses.field(default_factory=dict)
    learning_rates: dict = dataclasses.field(default_factory=dict)


#: Renderer settings of the default stages: a sharp soft silhouette, blurred over a quarter
#: pixel at any working resolution. A wider blur dilates the soft silhouette (the soft
#: coverage of the 16 nearest faces adds up to about 1 half a pixel outside the outline),
#: so the squared difference to a mask is least for a hand shrunk by that much. Started at
#: the truth of three synthetic frames at 96 px (``bench/silhouette_blur.py``), the fit drifts
#: to mean IoU 0.915 and 2.0 mm keypoint error with a 0.5 px blur (PyTorch3D's default sigma
#: at this size) and stays at 0.969 and 1.0 mm with a quarter pixel.
SHARP_SILHOUETTE = {"sigma_px": 0.25}

DEFAULT_STAGES = (
    Stage("global", ("global_orient", "transl"), 40, SHARP_SILHOUETTE),
    Stage("articulation", ("global_orient", "transl", "theta"), 120, SHARP_SILHOUETTE),
    Stage("shape", ("global_orient", "transl", "theta", "alpha", "beta", "offsets"), 80, SHARP_SILHOUETTE,
          learning_rates={"global_orient": 0.005, "transl": 0.5, "theta": 0.01}),
)

#: Side of the 3D box cropped around the hand (mm) and the working resolution (px).
DEFAULT_BOX_MM = 220.0
DEFAULT_WORKING_SIZE = 96
#: Iterations of the global-only fit that ranks the principal-axis candidates.
CANDIDATE_ITERATIONS = 25
#: In-plane rotations (degrees, about the palm normal) tried around the best principal-axis
#: candidate. A spread thumb or a curled finger tilts the blob's long axis by up to about 30
#: degrees, and a hand that starts rotated by a finger's width settles with every finger one
#: gap over (a local minimum the energy ranks clearly worse once the fingers have moved).
IN_PLANE_ANGLES_DEG = (-30.0, -15.0, 0.0, 15.0, 30.0)
#: Iterations per pose stage of the short fits that rank the in-plane hypotheses.
HYPOTHESIS_ITERATIONS = 30

#: With ``init="network"``: the flip check's short fits (:func:`fitting.initialize.network_parameters`)
#: run only where the raw energy (no optimizer step) of the guess's palm-flipped alternative is
#: below this many times the guess's; elsewhere the guess is kept as the network gives it and
#: the check costs no iteration. Measured: on the 19 SR305 frames with the network adapted to them
#: (its shape guess) the alternative's raw energy is 2.3 to 5.4 times the guess's (median 3.4),
#: 1.5 to 3.2 times after the short fits, and the always-run short fits (50 iterations a frame)
#: never flipped a guess. On 160 domain-shifted synthetic frames (the shipped network, labels
#: only to score; ``handfit synth --shifted``, README "Adapting to a camera") the raw ratio is
#: ambiguous (median 1.01): at 1.25, 39 frames skip the fits and the fits would have flipped none
#: of them (at 1.1: 64 skipped, 1 of them flipped; at 1.0: 81, 2), so the rule keeps every
#: decision of the always-run check there. (The check flipped 29 of the 160, 8 of them rightly.)
FLIP_SKIP_RATIO = 1.25
#: With ``init="network"``: each pose stage (one that frees no shape parameter) of the fit from
#: the network's guess runs this share of its iterations, each shape stage this multiple
#: (:func:`fitting.fitter.network_stages`). Measured on the 19 SR305 frames from the network adapted
#: to them (``bench/adaptation.py sr305 ... --fit --network-config``, batches of 4) with the
#: raw-energy flip rule, as (pose + shape iterations a frame, mean IoU). From the network's shape
#: guess: the default stages (120 + 80 at most) 170.6, 0.9510; articulation capped at 60: 140,
#: 0.9517 (the articulation stage is within 1 % of its final energy after 40-80 iterations, the
#: rest is its step-halving tail); 50 + 110: 160, 0.9540. From the template's shape
#: (:data:`NETWORK_SHAPE`): 50 + 110: 160, 0.9549; 40 + 120 (these scales): 160, 0.9551; 50 + 120:
#: 170, 0.9549. The search start: 528 iterations, 0.955. The shape stage is still improving at
#: 80 iterations, so a network start spends part of what it saves there.
NETWORK_POSE_SCALE = 1 / 3
NETWORK_SHAPE_SCALE = 1.5
#: With ``init="network"``: start from the network's shape guess (bone scales and shape
#: coefficients) as well as its pose; False starts the shape at the template, as the search
#: does. Measured as for :data:`NETWORK_POSE_SCALE` (50 + 110 iterations): mean IoU 0.9540 from the
#: network's shape, 0.9549 from the template's (the network's shape guess, trained on synthetic hands, is a worse start
#: for this real hand than the mean shape).
NETWORK_SHAPE = False

#: The optimizers :class:`FitConfig` can run (``FitConfig.optimizer``): first-order
#: :class:`fitting.optimizers.BatchedAdam`, or batched Levenberg-Marquardt
#: (:mod:`fitting.levenberg_marquardt`) over the pose, bone scales and shape.
OPTIMIZERS = ("adam", "lm")
#: The optimizer of a default :class:`FitConfig` (``bench/solvers.py`` compares the two).
DEFAULT_OPTIMIZER = "adam"
#: With ``optimizer="lm"``: the most LM iterations per stage, per stage of the search
#: (principal-axis candidates and in-plane hypotheses), and the Adam iterations that refine
#: the offsets after the LM phase of a stage that frees them.
LM_ITERATIONS = 15
LM_SEARCH_ITERATIONS = 5
LM_OFFSET_ITERATIONS = 20

#: How a frame without a starting point is searched (``FitConfig.cold``): ``"search"`` runs the
#: principal-axis candidates and in-plane hypotheses as short render-and-compare fits (Adam or
#: LM, :func:`fitting.initialize.initial_parameters`); ``"icp"`` is the fast cold path: the same
#: candidates and hypotheses run a few Levenberg-Marquardt iterations of the articulated-ICP
#: energy with closed-form Jacobians (no rasterizer, :mod:`fitting.tracking_energy`), each is then
#: scored by one evaluation of the render energy (the best two candidates then get a short render
#: fit of their global pose, :data:`COLD_SPARE_CANDIDATES`), and the winner runs the stages at
#: ``cold_pose_scale`` / ``cold_shape_scale`` of their iterations (:func:`fitting.fitter.cold_stages`).
COLD_STARTS = ("search", "icp")
#: With ``cold="icp"``: the most LM iterations of the ICP fit of each in-plane hypothesis (global
#: pose and articulation; most frames stop earlier, at the ICP's ``rel_tol``).
ICP_HYPOTHESIS_ITERATIONS = 15
#: With ``cold="icp"``: the ICP weights of the hypotheses' fits (overrides of
#: :data:`fitting.tracking_energy.ICP_WEIGHTS`). A cold start is far from the hand: a finger
#: one width off slides freely along the point-to-plane term (the tracking energy), so the
#: point-to-point distance to the nearest front-facing vertex is added.
ICP_COLD_WEIGHTS = {"point_to_point": 1e-2}
#: With ``cold="icp"``: how the principal-axis candidates are ranked (``FitConfig.cold_candidates``):
#: ``"icp"`` (the default) fits each candidate's global pose by ``cold_candidate_iterations`` LM
#: iterations of the articulated-ICP energy (:data:`ICP_COLD_WEIGHTS`, no rasterizer), scores it by
#: one evaluation of the render energy, and only the kept candidates then run the render energy's
#: global fit (``cold_global_iterations`` Adam iterations from their principal-axis start);
#: ``"render"`` (the fast path's first setting) runs that render fit on every candidate and ranks
#: by its energy.
COLD_CANDIDATE_FITS = ("icp", "render")
#: With ``cold="icp"``: the ICP iterations that rank the principal-axis candidates. Measured on the
#: 19 SR305 frames (a scratch script making the fitter's calls, the four candidates of each frame
#: at batch 4): after 5 ICP LM iterations (point-to-point on) the lowest render energy is the same
#: candidate as after 10 Adam iterations of the render fit on all 19 (0.38 s against 1.18 s a
#: frame, load about 1; by the raw render energy, no iteration, on 4 of 19). The ICP-fitted
#: global pose itself is a worse start for the in-plane hypotheses than the render fit's: started
#: from it, 3 of the 19 frames ended in another basin (IoU 0.89-0.93 against 0.95-0.97; mean IoU
#: 0.946 against 0.954), hence the render fit of the winner.
COLD_CANDIDATE_ITERATIONS = 5
#: With ``cold="icp"``: the candidates beyond the kept ones (one per frame without a wrist) that
#: also get the render fit after the ICP ranking, the render fit's energy then picking among
#: them (``FitConfig.cold_spare_candidates``). On the 5 synthetic frames of ``bench/solvers.py``
#: (random articulations) the ICP ranking's best was not the render fit's on 3 (after 5 ICP
#: iterations; 2 after 10), each time its second: the render fit of the ICP winner alone ended
#: at 54-70 mm keypoint error on those 3; with one spare the render fit's winner is among them
#: on all 5 synthetic and 19 SR305 frames.
COLD_SPARE_CANDIDATES = 1
#: With ``cold="icp"``: the Adam iterations of the render energy's global fit of the candidates
#: (``FitConfig.candidate_iterations`` = 25 for the search): after 10 the lowest energy is the same
#: candidate as after 25 on all 19 SR305 frames (after 5 on 8 of them).
COLD_GLOBAL_ITERATIONS = 10
#: With ``cold="icp"``: each pose stage (one that frees no shape parameter) after the ICP search
#: runs this share of its iterations, each shape stage this share, with the step sizes of the
#: shape parameters (``alpha``, ``beta``, ``offsets``) times ``COLD_SHAPE_LR_SCALE``. Measured
#: on 6 SR305 frames (230536/30-90, 231615/20 and 160; mean IoU, the search 0.952): articulation
#: 30 + shape 40 at twice the step sizes 0.946 (articulation 15: 0.945, none: 0.940; shape 20 at
#: three times: 0.942), 15 + 30 at 2.5 times (these) 0.947; the shape stage at 40 iterations with
#: twice the step sizes beat the full 80 at the default ones on the three frames tried
#: (0.960-0.972 against 0.953-0.967). On all 19 (``bench/solvers.py``, README): these 0.9554
#: against the search's 0.9546, 3.09x faster (median per frame); 30 + 40 at twice 0.957 and 2.50x.
COLD_POSE_SCALE = 0.125
COLD_SHAPE_SCALE = 0.375
COLD_SHAPE_LR_SCALE = 2.5
#: With ``init="network"``: the shape parameters' step sizes in the shape stages times this
#: (``FitConfig.network_shape_lr_scale``; 1: the stages' own).
NETWORK_SHAPE_LR_SCALE = 1.0
#: The short stages after a network start (``FitConfig(**FAST_NETWORK_START)``, ``--network-stages
#: short``): the fast cold path's lengths and step sizes (:data:`COLD_POSE_SCALE`,
#: :data:`COLD_SHAPE_SCALE`, :data:`COLD_SHAPE_LR_SCALE`), 15 articulation + 30 shape iterations, from
#: the network's guess instead of the ICP search's. They need a network adapted to the frames it
#: fits. Measured on the 19 SR305 frames with the network adapted on those same frames, two runs
#: (``bench/solvers.py --synthetic 0 --optimizers adam,icp,network,network-short --checkpoint A``,
#: README): 45 iterations a frame, mean IoU 0.9537 and 0.9551 against the search's 0.9546 (530.8
#: iterations), 5.34x and 6.55x faster (median per frame); the default network stages
#: (:data:`NETWORK_POSE_SCALE`) 160 iterations, 0.9555, 1.55x. With the network adapted on the other
#: recording only (11 frames) the 8 frames of 20210326-230536 reach 0.920 against the search's 0.952;
#: with the shipped, unadapted network 0.920 on all 19.
FAST_NETWORK_START = {"network_pose_scale": COLD_POSE_SCALE, "network_shape_scale": COLD_SHAPE_SCALE,
                      "network_shape_lr_scale": COLD_SHAPE_LR_SCALE}

#: Temporal weight (mm^2 of keypoint acceleration) when a fit has previous frames (tracking):
#: an acceleration of 6 mm/frame^2 costs about as much as 1 % of the crop's pixels
#: mislabelled. Stronger weights lag behind real motion (on synthetic sequences 3e-3 lost the
#: hand within a few frames).
TEMPORAL_WEIGHT = 3e-4

#: Weight of the ``wrist`` term (mm^2, the model's wrist keypoint to the wrist where the
#: segmentation cut the forearm off, :class:`fitting.preprocess.ForearmCut`): the cut lies
#: within about 5-15 mm of the joint (synthetic egocentric frames), and a 10 mm offset costs
#: about as much as 1 % of the crop's pixels mislabelled, so the term keeps the wrist at the
#: cut's end without overruling the silhouette near it.
WRIST_WEIGHT = 1e-4

#: Weight of the ``texture`` term (the NCC texture energy, DeepHandMesh supp. Eq. 5, unitless,
#: :func:`fitting.texture.texture_energy`): it acts only when the fitter has a reference texture
#: (``Fitter(..., texture=TextureReference(...))``) and the frame has RGB. On 5 synthetic
#: textured frames from a perturbed start (``bench/texture.py --texture-fit``) the mean 3D
#: keypoint error is 3.83 mm at 0.1 against 3.92 mm without the term (4.05 at 0.05, 3.99 at
#: 0.02); lower in 4 of the 5 frames, higher in one (a finger ends in another basin).
TEXTURE_WEIGHT = 0.1

#: The RGB crop of a frame (for the ``texture`` term) has this many times the working size's
#: pixels per side (the same window as the depth crop, bilinear): the unwrap samples colours
#: finer than the depth crop's pixels.
TEXTURE_RGB_SCALE = 2

#: Truncation of the robust data terms (mm), ``FitConfig.robust_mm``, in the stages that free
#: the shape: observed hand points farther than this from the model pull nothing (``points``,
#: a truncated distance), observed depth this far in front of the render is an occluder
#: (``depth``), and mask pixels the model does not cover whose 3D point lies this far from
#: every model vertex are left out of the ``silhouette`` term
#: (:func:`fitting.fitter.occluded_pixels`: a held object, a forearm remnant). After the fit,
#: those pixels are reported as occluded (``FitResult.occluded``).
#: 20 mm is about a finger's width (16-20 mm in adults): hand surface the model leaves
#: uncovered (a finger one width off) lies within it and still pulls; a held object's surface
#: (radius 25 mm or more) mostly lies beyond it. Measured (64 px, synthetic egocentric frames
#: with a held cylinder / box, ``Fitter.fit_crops`` from the truth): MPJPE 37.8 / 35.7 mm
#: without the silhouette part, 38.0 / 1.6 mm with it. Robust terms from the articulation
#: stage on did better on the egocentric frames (full fits, 64 px: cylinder 27.5 instead of
#: 38.7 mm) and kept SR305's mean IoU at 0.955, but lowered the glTF-hand frame of
#: ``tests/test_gltf_hand.py`` to IoU 0.873 and a 48 px sequence frame of
#: ``tests/test_sequence.py`` to 0.690; robust global stages lower SR305 frame
#: 20210326-231615/180 from IoU 0.952 to 0.767.
ROBUST_MM = 20.0

#: How far (mm) in front of a separated held object's observed depth the model may render
#: and still count as hidden by it (:func:`fitting.fitter.occluder_weight`): three times the
#: sensor's depth noise (about 1.5 mm at 300-400 mm for structured-light sensors such as the
#: SR305, the noise of :func:`fitting.synthetic.egocentric_frame`) plus a millimetre for
#: the object's outline, where its depth is least certain.
OCCLUDER_MARGIN_MM = 5.0

#: The grasp prior: where a held object was separated from a frame's hand
#: (:func:`fitting.held_object.separate_held_object`), the pose prior's mean and the search's
#: start bend every flexion DoF to this fraction of its upper limit (:func:`fitting.initialize.grasp_pose`;
#: 0.3-0.5 rad at the MCP, PIP and DIP joints of the default model) instead of the open hand:
#: the fingers the object hides are then neither pulled open behind it (the open-hand prior
#: left them straight: 0.0 rad fitted against 0.3-0.55 true, 35-60 mm fingertip errors on
#: synthetic egocentric frames) nor constrained by any pixel. A hand wrapped round an object
#: of 40-80 mm flexes its fingers by about this much; the synthetic egocentric frames draw
#: their grip from 0.10-0.35 of the upper limits (:data:`fitting.synthetic.GRIP_FLEXION`),
#: so their figures measure this prior near its own mean.
GRASP_FLEXION = 0.25

#: The pose prior's means (``FitConfig.pose_prior``): ``"auto"`` the grasp pose
#: (:data:`GRASP_FLEXION`) for frames with a separated held object and the open hand for the
#: rest, ``"open"`` the open hand everywhere (the old behaviour), ``"grasp"`` the grasp pose
#: everywhere: a relaxed or grasping hand, its curled fingertips hidden behind its own
#: knuckles from a head-mounted camera. Measured (96 px, ``bench/fit_egocentric.py --frames 4``,
#: scenes without an object, whose grip is 0.10-0.35 of the flexion limits): MPJPE mean 8.1 mm
#: with ``"auto"`` (= open there), 5.75 mm with ``"grasp"``; not the default, since a hand
#: seen open (third-person SR305 frames, ``tests/test_fitting.py``) was not measured with it.
POSE_PRIORS = ("auto", "open", "grasp")

#: The start articulations of the search (``FitConfig.search_poses``,
#: :func:`fitting.initialize.start_articulations`): with ``("open", "grasp")`` every in-plane
#: hypothesis is fitted from the open hand and from the curled hand of :data:`GRASP_FLEXION`, and
#: the lower render energy wins; frames that bring their own start (a separated held object's
#: grasp, a tracker's last pose) keep it alone. Not the default: with the pose prior at 1e-4
#: (``weights={"pose_prior": 1e-4}``, which it needs, see :data:`POSE_PRIOR_WEIGHT`) it gave the
#: same ``bench/fit_egocentric.py --frames 10`` figures (no object 9.0 mm, object 10.1 against 9.9)
#: and SR305 mean IoU (0.9549 against 0.9546) at 700 search iterations a frame instead of 400
#: (README "Egocentric views and held objects").
SEARCH_POSES = ("open",)

#: Bounds of the bone-length scales alpha: adult hand lengths lie within about +-15 % of the
#: mean (roughly the 1st to 99th percentile of anthropometric surveys such as ANSUR II), so
#: a fit never needs more; the old bounds (0.7, 1.4) let the model grow over a held object.
BONE_SCALE_BOUNDS = (0.85, 1.15)

#: Weight of the ``pose_prior`` term (rad^2, the articulation's squared distance from the prior's
#: mean). A hand flexed by 0.1-0.35 of its limits (a relaxed or grasping hand) costs about 1.8e-3
#: at this weight, as much as 0.2 % of a 96 px crop's pixels mislabelled (about 17 px), more than
#: the energy differences (1e-4 to 1e-3) between the curled truth and a fit with the fingers opened
#: by 0.2 rad on synthetic egocentric frames (``bench/egocentric_breakdown.py``): the energy
#: prefers the open hand. 1e-4 with ``search_poses=("open", "grasp")`` removes that preference but
#: did not lower the egocentric figures over 10 scenes (:data:`SEARCH_POSES`).
POSE_PRIOR_WEIGHT = 1e-3
#: The pose prior's weight in frames with a separated held object (the grasp prior,
#: :meth:`fitting.Fitter.pose_prior_mean`) is at least this (a smaller ``weights["pose_prior"]``,
#: not 0, is raised to it there): the fingers the object hides have no data, and the prior is all
#: that holds them (00-bottom-cylinder of ``bench/fit_egocentric.py``: 12.4 mm at 1e-4 against
#: 10.5 at 1e-3).
HELD_POSE_PRIOR_WEIGHT = 1e-3

#: Energy weights. Silhouette is a per-pixel mean of squared differences (RealisticHands
#: Eq. 2 over H*W), depth a smooth-L1 in mm (DeepHandMesh), keypoints in mm^2 / px^2, angles in
#: rad^2; the mesh regularisers act on the offset field (laplacian, edge) and the posed mesh
#: (normal), with RealisticHands' ratios (lambda_2..4 = 1, lambda_5 = 0.1) scaled down so they
#: stay below the data terms. Off by default (0), and on where a caller asks for them:
#: ``penetration`` (mm: DeepHandMesh's rigid sphere term plus ``FitConfig.nonrigid_weight``
#: times the fingertip-palm term, on :class:`hands.CollisionProxies`), ``collision`` (mm^2:
#: the cylinder term of seed 001, an alternative to ``penetration``).
#: Terms that need data only some observations carry are on by default and act only when the
#: data is there: ``keypoints_3d`` (mm^2, mean squared 3D keypoint distance; 1e-4 makes a 10 mm
#: RMS error cost about as much as 1 % of the crop's pixels mislabelled) and ``keypoints_2d``
#: (px^2 of the working crop, about 2.3 mm per px at 96 px: the same 10 mm costs the same) when
#: an :class:`~fitting.Observation` has keypoints; ``temporal`` (mm^2, the keypoints' squared
#: acceleration, :data:`TEMPORAL_WEIGHT`) when a fit has previous frames (``Fitter.track``);
#: ``wrist`` (mm^2, :data:`WRIST_WEIGHT`) when the segmentation cut a forearm off.
#: Set a weight to 0 to turn its term off.
DEFAULT_WEIGHTS = {
    "silhouette": 1.0,
    "depth": 1e-2,
    "points": 2e-3,
    "keypoints_3d": 1e-4,
    "keypoints_2d": 5e-4,
    "joint_limits": 1.0,
    "pose_prior": POSE_PRIOR_WEIGHT,
    "shape_prior": 1e-3,
    "bone_scale_prior": 1e-2,
    "offset": 1e-4,
    "laplacian": 1e-3,
    "normal": 1e-3,
    "edge": 1e-4,
    "penetration": 0.0,
    "collision": 0.0,
    "temporal": TEMPORAL_WEIGHT,
    "wrist": WRIST_WEIGHT,
    "texture": TEXTURE_WEIGHT,
}

#: Weights that turn the plausibility terms on, as ``fit-sequence`` and the benches use them:
#: a summed sphere overlap of 5 mm costs about as much as 1 % of the crop's pixels
#: mislabelled (the silhouette term is a per-pixel mean).
PLAUSIBILITY_WEIGHTS = {"penetration": 2e-3}

#: Adam step sizes per parameter (radians, mm, unitless).
DEFAULT_LEARNING_RATES = {
    "global_orient": 0.03,
    "transl": 2.0,
    "theta": 0.04,
    "alpha": 0.002,
    "beta": 0.01,
    "offsets": 0.05,
}


@dataclasses.dataclass
class FitConfig:
    """Settings of a fit.

    Attributes:
        stages: the stages, in order.
        weights: energy weights (missing keys take ``DEFAULT_WEIGHTS``); 0 disables a term.
        learning_rates: Adam step size per parameter at the start of each stage.
        patience: a frame whose energy has not improved by ``rel_tol`` (relative) for this
            many iterations goes back to its best state with half its step size.
        rel_tol: see ``patience``.
        max_halvings: a frame has converged in a stage once its step size has been halved
            this many times.
        clamp_limits: clamp the articulation to the model's limits after every step (the
            joint-limit energy still applies).
        depth_beta: the smooth-L1 transition in mm.
        z_range: allowed range of the hand's depth (mm); the translation is projected into it.
        nonrigid_weight: lambda_nr, the weight of the fingertip-palm term inside the
            ``penetration`` energy (DeepHandMesh: 5).
        box_mm: side of the 3D cube cropped around the hand (mm; DeepHPS: 150-220).
        working_size: the crop's resolution S (px): every frame is fitted in an S x S crop.
        angles_deg: in-plane rotations tried around the best principal-axis candidate
            (:func:`fitting.initialize.search_hypotheses`); ``()`` tries only the candidate.
        candidate_iterations: iterations of the global fit that ranks the four principal-axis
            candidates; ``hypothesis_iterations`` the cap per pose stage of the in-plane
            hypotheses' fits.
        hypothesis_iterations: see ``candidate_iterations``.
        deterministic: fits on the CPU run with PyTorch's deterministic kernels
            (:func:`fitting.determinism.deterministic`), so the same input gives bit-identical
            results whatever the load and ``torch.get_num_threads()``; False leaves PyTorch's
            settings alone (no speed difference measured, ``bench/determinism.py``) and the
            results then vary under load (by up to ~1-3 mm in the keypoints, issue 15).
        optimizer: ``"adam"`` (first-order, :class:`fitting.optimizers.BatchedAdam`, each stage
            runs up to its ``iterations``) or ``"lm"`` (batched Levenberg-Marquardt,
            :mod:`fitting.levenberg_marquardt`: each stage runs up to ``lm_iterations`` LM
            iterations over its free pose, bone-scale and shape parameters, the search stages
            up to ``lm_search_iterations``, and the offsets get ``lm_offset_iterations`` Adam
            iterations after the LM phase of a stage that frees them).
        lm_iterations, lm_search_iterations, lm_offset_iterations: see ``optimizer``.
        search_optimizer: the optimizer of the initial search (principal-axis candidates and
            in-plane hypotheses, :mod:`fitting.initialize`); None: ``optimizer``. A few LM
            iterations per hypothesis rank the hypotheses worse than Adam's 25-60 on cold
            frames (``bench/solvers.py``), so ``optimizer="lm", search_optimizer="adam"`` is
            the LM fit with Adam's search.
        flip_skip_ratio: with ``init="network"``, the raw-energy ratio (palm-flipped alternative
            over the network's guess) at or above which the guess is kept without the flip
            check's short fits (:data:`FLIP_SKIP_RATIO`; ``math.inf`` always fits both).
        network_pose_scale: with ``init="network"``, each pose stage (one that frees none of
            ``alpha``, ``beta``, ``offsets``) of the fit from the network's guess runs this
            times its ``iterations`` (rounded, at least 1; :data:`NETWORK_POSE_SCALE`); a search
            start runs the stages' own.
        network_shape_scale: the same for the stages that free shape parameters
            (:data:`NETWORK_SHAPE_SCALE`).
        network_shape_lr_scale: with ``init="network"``, the step sizes of the shape parameters
            in those stages times this (:data:`NETWORK_SHAPE_LR_SCALE`; see
            :data:`FAST_NETWORK_START` for the short stages).
        network_shape: with ``init="network"``, start from the network's ``alpha`` and ``beta``
            too (:data:`NETWORK_SHAPE`; False: the template's, the pose from the network).
        cold: how a frame without a starting point is searched (:data:`COLD_STARTS`):
            ``"search"`` (render-and-compare fits of the candidates and hypotheses, the
            default) or ``"icp"`` (the fast cold path: the principal-axis candidates ranked by
            a ``cold_candidate_iterations`` ICP global fit and one render-energy evaluation
            each, the best two's global poses fitted by ``cold_global_iterations`` Adam iterations
            of the render energy, whose energy picks the winner (``cold_candidates``,
            ``cold_spare_candidates``), the in-plane hypotheses fitted by
            ``icp_hypothesis_iterations`` LM iterations of the articulated-ICP energy and
            ranked by one render-energy evaluation each, then the stages at
            ``cold_pose_scale`` / ``cold_shape_scale`` of their iterations, the shape
            parameters' step sizes times ``cold_shape_lr_scale``). Unused with
            ``Fitter(init="network")``.
        icp_hypothesis_iterations: see ``cold`` (:data:`ICP_HYPOTHESIS_ITERATIONS`; at most
            ``lm_iterations``).
        cold_pose_scale, cold_shape_scale, cold_shape_lr_scale, cold_candidate_iterations: see
            ``cold`` (:data:`COLD_POSE_SCALE`, :data:`COLD_SHAPE_SCALE` (0 leaves a stage out),
            :data:`COLD_SHAPE_LR_SCALE`, :data:`COLD_CANDIDATE_ITERATIONS`).
        cold_candidates: with ``cold="icp"``, how the candidates are ranked
            (:data:`COLD_CANDIDATE_FITS`): ``"icp"`` (LM on the articulated-ICP energy, then the
            render fit of the kept ones only, the default) or ``"render"`` (the render fit of
            all, ranked by its energy).
        cold_global_iterations: with ``cold="icp"``, the Adam iterations of that render fit
            (:data:`COLD_GLOBAL_ITERATIONS`).
        cold_spare_candidates: with ``cold_candidates="icp"``, how many candidates beyond the
            kept ones get the render fit (:data:`COLD_SPARE_CANDIDATES`; 0: the ICP ranking's
            best only).
        robust_mm: truncation of the robust data terms (points, depth, silhouette) and the
            occlusion test (mm, :data:`ROBUST_MM`), in the stages that free the shape; 0 turns
            them off (every observed pixel and point pulls).
        search_poses: the search's start articulations (:data:`SEARCH_POSES`): each in-plane
            hypothesis is fitted from each, the lowest energy wins; ``("open",)`` the open
            hand alone.
        pose_prior: the pose prior's mean and the search's start articulation
            (:data:`POSE_PRIORS`): ``"auto"`` (the grasp pose where a held object was
            separated), ``"open"`` or ``"grasp"``.

    Raises:
        ValueError: an unknown weight, parameter or stage field, or a value out of range.
    """

    stages: tuple[Stage, ...] = DEFAULT_STAGES
    weights: dict = dataclasses.field(default_factory=dict)
    learning_rates: dict = dataclasses.field(default_factory=dict)
    patience: int = 6
    rel_tol: float = 1e-3
    max_halvings: int = 4
    clamp_limits: bool = True
    depth_beta: float = 10.0
    z_range: tuple[float, float] = (150.0, 3000.0)
    nonrigid_weight: float = 5.0
    box_mm: float = DEFAULT_BOX_MM
    working_size: int = DEFAULT_WORKING_SIZE
    angles_deg: tuple[float, ...] = IN_PLANE_ANGLES_DEG
    candidate_iterations: int = CANDIDATE_ITERATIONS
    hypothesis_iterations: int = HYPOTHESIS_ITERATIONS
    deterministic: bool = True
    optimizer: str = DEFAULT_OPTIMIZER
    lm_iterations: int = LM_ITERATIONS
    lm_search_iterations: int = LM_SEARCH_ITERATIONS
    lm_offset_iterations: int = LM_OFFSET_ITERATIONS
    search_optimizer: str | None = None
    robust_mm: float = ROBUST_MM
    flip_skip_ratio: float = FLIP_SKIP_RATIO
    network_pose_scale: float = NETWORK_POSE_SCALE
    network_shape_scale: float = NETWORK_SHAPE_SCALE
    network_shape_lr_scale: float = NETWORK_SHAPE_LR_SCALE
    network_shape: bool = NETWORK_SHAPE
    pose_prior: str = "auto"
    cold: str = "search"
    icp_hypothesis_iterations: int = ICP_HYPOTHESIS_ITERATIONS
    cold_pose_scale: float = COLD_POSE_SCALE
    cold_shape_scale: float = COLD_SHAPE_SCALE
    cold_shape_lr_scale: float = COLD_SHAPE_LR_SCALE
    cold_candidate_iterations: int = COLD_CANDIDATE_ITERATIONS
    cold_candidates: str = "icp"
    cold_global_iterations: int = COLD_GLOBAL_ITERATIONS
    cold_spare_candidates: int = COLD_SPARE_CANDIDATES
    search_poses: tuple[str, ...] = SEARCH_POSES

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"FitConfig: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.pose_prior not in POSE_PRIORS:
            raise ValueError(f"FitConfig: pose_prior must be one of {POSE_PRIORS}, got {self.pose_prior!r}")
        self.search_poses = tuple(self.search_poses)
        bad = [p for p in self.search_poses if p not in ("open", "grasp")]
        if bad or not self.search_poses:
            raise ValueError(f"FitConfig: search_poses must be a non-empty tuple of 'open' / 'grasp', "
                             f"got {self.search_poses!r}")
        if self.search_optimizer is not None and self.search_optimizer not in OPTIMIZERS:
            raise ValueError(f"FitConfig: search_optimizer must be None or one of {OPTIMIZERS}, "
                             f"got {self.search_optimizer!r}")
        for name in ("lm_iterations", "lm_search_iterations", "lm_offset_iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "lm_offset_iterations" else 1):
                raise ValueError(f"FitConfig: {name} must be an int >= "
                                 f"{0 if name == 'lm_offset_iterations' else 1}, got {v!r}")
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"FitConfig.weights: unknown terms {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        unknown = set(self.learning_rates) - set(PARAMETER_NAMES)
        if unknown:
            raise ValueError(f"FitConfig.learning_rates: unknown parameters {sorted(unknown)}")
        for stage in self.stages:
            bad = set(stage.free) - set(PARAMETER_NAMES)
            if bad:
                raise ValueError(f"stage {stage.name!r} frees unknown parameters {sorted(bad)}")
            bad = set(stage.learning_rates) - set(stage.free)
            if bad:
                raise ValueError(f"stage {stage.name!r} sets step sizes of parameters it does not free: "
                                 f"{sorted(bad)}")
        if self.patience < 1 or self.max_halvings < 0:
            raise ValueError(f"FitConfig: patience must be >= 1 and max_halvings >= 0, got "
                             f"{self.patience} and {self.max_halvings}")
        bad = {k: v for k, v in self.weights.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0}
        if bad:
            raise ValueError(f"FitConfig.weights must be finite numbers >= 0, got {bad}")
        if isinstance(self.robust_mm, bool) or not isinstance(self.robust_mm, (int, float)) \
                or not math.isfinite(self.robust_mm) or self.robust_mm < 0:
            raise ValueError(f"FitConfig: robust_mm must be a number of mm >= 0, got {self.robust_mm!r}")
        if isinstance(self.flip_skip_ratio, bool) or not isinstance(self.flip_skip_ratio, (int, float)) \
                or not self.flip_skip_ratio > 0:
            raise ValueError(f"FitConfig: flip_skip_ratio must be a number > 0 (math.inf: always check), "
                             f"got {self.flip_skip_ratio!r}")
        for name in ("network_pose_scale", "network_shape_scale", "network_shape_lr_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
                raise ValueError(f"FitConfig: {name} must be a finite number > 0, got {v!r}")
        if self.cold not in COLD_STARTS:
            raise ValueError(f"FitConfig: cold must be one of {COLD_STARTS}, got {self.cold!r}")
        if self.cold_candidates not in COLD_CANDIDATE_FITS:
            raise ValueError(f"FitConfig: cold_candidates must be one of {COLD_CANDIDATE_FITS}, "
                             f"got {self.cold_candidates!r}")
        for name in ("icp_hypothesis_iterations", "cold_candidate_iterations", "cold_global_iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FitConfig: {name} must be an int >= 1, got {v!r}")
        v = self.cold_spare_candidates
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"FitConfig: cold_spare_candidates must be an int >= 0, got {v!r}")
        v = self.cold_shape_lr_scale
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
            raise ValueError(f"FitConfig: cold_shape_lr_scale must be a finite number > 0, got {v!r}")
        for name in ("cold_pose_scale", "cold_shape_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf):
                raise ValueError(f"FitConfig: {name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.network_shape, bool):
            raise ValueError(f"FitConfig: network_shape must be True or False, got {self.network_shape!r}")
        if not isinstance(self.deterministic, bool):
            raise ValueError(f"FitConfig: deterministic must be True or False, got {self.deterministic!r}")
        if not (self.box_mm > 0) or isinstance(self.working_size, bool) or not isinstance(self.working_size, int) \
                or self.working_size < 8:
            raise ValueError(f"FitConfig: box_mm must be > 0 mm and working_size an int >= 8 px, got "
                             f"{self.box_mm} and {self.working_size!r}")
        if self.candidate_iterations < 1 or self.hypothesis_iterations < 1:
            raise ValueError("FitConfig: candidate_iterations and hypothesis_iterations must be >= 1, got "
                             f"{self.candidate_iterations} and {self.hypothesis_iterations}")
        self.angles_deg = tuple(float(a) for a in self.angles_deg)
        self.weights = {**DEFAULT_WEIGHTS, **self.weights}
        self.learning_rates = {**DEFAULT_LEARNING_RATES, **self.learning_rates}


def preview_config(**overrides) -> FitConfig:
    """A :class:`FitConfig` at about a tenth of the work: for previews and smoke tests.

    Each default stage runs a tenth of its iterations (at least 3), the crop is 48 px, the
    search tries only the principal-axis candidates (3 iterations each) and no in-plane
    rotation. Expect a rough fit (a lower IoU than the default's ~0.95 on SR305 frames) in a
    fraction of the time.

    Args:
        **overrides: any :class:`FitConfig` field.
    """
    base = dict(stages=tuple(dataclasses.replace(s, iterations=max(3, s.iterations // 10)) for s in DEFAULT_STAGES),
                working_size=48, angles_deg=(), candidate_iterations=3, hypothesis_iterations=3)
    base.update(overrides)
    return FitConfig(**base)
