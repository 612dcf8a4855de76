"""Initialization: first guesses of the hand's global pose, and the search that ranks them.

The translation comes from the blob's 3D centroid, the rotation from its principal axes:
the largest one is the hand's long axis, the smallest one (the direction in which the
surface is thinnest) the palm normal. They leave four candidates open (fingers up or down
the axis, palm towards or away from the camera); :func:`global_candidates` returns all four
and :func:`initial_parameters` keeps the one that fits best after a short global fit;
:func:`search_hypotheses` then tries in-plane rotations of it with a short pose fit. Both run
all their hypotheses as one batch through :meth:`fitting.Fitter.run`. With
``FitConfig(cold="icp")`` (the fast cold path) the candidates and the hypotheses are fitted by a
few Levenberg-Marquardt iterations of the articulated-ICP energy (:mod:`fitting.tracking_energy`,
closed-form Jacobians, no rasterizer; ``cold_candidate_iterations``, ``icp_hypothesis_iterations``)
and ranked by one evaluation of the render energy each (:func:`_search_fit`); only the best
candidates then get the short render fit of their global pose (``cold_global_iterations``,
``cold_spare_candidates``), whose energy picks the winner.
"""

from __future__ import annotations

import dataclasses

import torch
from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle

from .config import FLIP_SKIP_RATIO, GRASP_FLEXION, ICP_COLD_WEIGHTS, PARAMETER_NAMES, SHAPE_PARAMETERS, Stage  # noqa: F401 (documented here)

#: The visible surface lies in front of the hand's centroid by about half the hand's
#: thickness; the centroid of the depth points is pushed back along the viewing ray by this
#: much (mm) to start the model's centroid.
SURFACE_TO_CENTRE_MM = 12.0


def grasp_pose(model, fraction: float = GRASP_FLEXION) -> torch.Tensor:
    """The grasp prior's articulation: (D,) rad, each flexion DoF (a name with ``flex``) at
    ``fraction`` of its upper limit, the rest 0 (see :data:`~fitting.config.GRASP_FLEXION`).

    On the model's limits' device and dtype.
    """
    flex = torch.tensor(["flex" in n for n in model.data.dof_names], device=model.dof_upper.device)
    return torch.where(flex, fraction * model.dof_upper, torch.zeros_like(model.dof_upper))


def holds_object(target) -> torch.Tensor | None:
    """(B,) bool: the frames of ``target`` with a separated held object (``occluder_depth``),
    or None when the target carries no occluder (no frame of its batch had one; the test
    reads no tensor value, so it costs no device synchronization in the loop)."""
    occ = getattr(target, "occluder_depth", None)
    if occ is None:
        return None
    return (occ > 0).flatten(1).any(1)


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


#: With a known wrist, the candidates' long axis runs from the blob's centroid to the wrist
#: (a hand curled round an object has no reliable principal axis), and the roll about it
#: (the thinnest axis is ill-defined for a curled hand) is tried at these angles (degrees),
#: for both palm-normal signs.
WRIST_ROLLS_DEG = (-45.0, 0.0, 45.0)


def global_candidates(points: torch.Tensor, wrist: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Four initial global poses of a hand whose visible surface points are ``points`` (six
    with a known wrist).

    The model's canonical frame (see :mod:`hands.model_data`) has its fingers along ``-y``,
    its palm normal along ``-z`` and the thumb along ``+x``. Each candidate rotation maps
    ``-y`` to ``+-`` the blob's long axis and ``-z`` to ``+-`` its thinnest axis. Where the
    forearm was cut (``wrist``, :class:`fitting.preprocess.ForearmCut`), the cut side is the
    wrist: ``+y`` (towards the wrist) is the direction from the centroid to ``wrist``, the
    palm normal is the thinnest axis made perpendicular to it, both signs, each rolled about
    ``+y`` by :data:`WRIST_ROLLS_DEG`; without a wrist, both ends of the long axis are tried.

    Args:
        points: (N, 3) the segmented hand's 3D points, camera coordinates, mm.
        wrist: optional (3,) the wrist at the forearm's cut, camera coordinates, mm.

    Returns:
        global_orient (K, 3) axis-angle (radians) and transl (K, 3) mm, K = 4 (6 with a wrist).

    Raises:
        ValueError: see :func:`principal_axes`; ``wrist`` not of shape (3,).
    """
    centre, axes = principal_axes(points)
    long_axis, normal = axes[:, 0], axes[:, 2]
    rotations = []
    if wrist is not None:
        if tuple(wrist.shape) != (3,):
            raise ValueError(f"wrist must have shape (3,) (mm), got {tuple(wrist.shape)}")
        col_y = wrist.to(points) - centre  # image of canonical +y: towards the wrist
        col_y = col_y / col_y.norm().clamp(min=1e-9)
        for s_normal in (1.0, -1.0):
            base_z = -s_normal * (normal - (normal @ col_y) * col_y)
            base_z = base_z / base_z.norm().clamp(min=1e-9)
            base_x = torch.linalg.cross(col_y, base_z)
            for roll in WRIST_ROLLS_DEG:
                a = torch.deg2rad(torch.tensor(roll, dtype=points.dtype, device=points.device))
                col_z = torch.cos(a) * base_z + torch.sin(a) * base_x
                col_x = torch.linalg.cross(col_y, col_z)
                rotations.append(torch.stack([col_x, col_y, col_z], dim=1))
    else:
        for s_long in (1.0, -1.0):
            for s_normal in (1.0, -1.0):
                col_y = -s_long * long_axis   # image of canonical +y (towards the wrist)
                col_z = -s_normal * normal    # image of canonical +z (the back of the hand)
                col_x = torch.linalg.cross(col_y, col_z)
                rotations.append(torch.stack([col_x, col_y, col_z], dim=1))
    R = torch.stack(rotations)
    ray = centre / centre.norm()
    transl = (centre + SURFACE_TO_CENTRE_MM * ray).expand(len(rotations), 3).clone()
    return matrix_to_axis_angle(R), transl


def search_optimizer(config) -> str:
    """The optimizer of the search fits: ``config.search_optimizer``, else ``config.optimizer``."""
    return config.search_optimizer or config.optimizer


def search_budget(config, iterations: int) -> int:
    """Iterations per stage of a search fit: ``iterations`` with Adam, at most
    ``config.lm_search_iterations`` with Levenberg-Marquardt (:func:`search_optimizer`)."""
    return min(iterations, config.lm_search_iterations) if search_optimizer(config) == "lm" else iterations


def _cold_icp(config, target) -> bool:
    """Whether the search's hypotheses run on the ICP energy: ``config.cold == "icp"`` and a
    single-view target with data points (a multi-view target keeps the render fits)."""
    return config.cold == "icp" and hasattr(target, "mask") and getattr(target, "points", None) is not None


def _search_fit(fitter, target, init: dict, stages: tuple, icp: bool | None = None
                ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The short fits of the search: ``(params, score (B,), iterations (B,))``.

    With ``fitter.config.cold == "search"`` the stages run on the render energy with the
    search's optimizer (:func:`search_optimizer`) and the score is the last stage's best energy;
    with ``"icp"`` they run LM on the articulated-ICP energy (:func:`fitting.tracking_energy.icp_stage`,
    no rasterizer) and the score is one evaluation of the render energy (no offset regularisers)
    at the result: the energy the default search ranks by, so both rank on the same scale.
    ``icp`` overrides the config's choice.
    """
    cfg = fitter.config
    if _cold_icp(cfg, target) if icp is None else icp:
        state = fitter.run(target, init, stages=stages, energy="icp", icp_weights=ICP_COLD_WEIGHTS)
        with torch.no_grad():
            terms, _, _ = fitter.energy_terms(state.params, target, surface_terms=False)
            score = fitter.total(terms)
        return state.params, score, state.iterations
    state = fitter.run(target, init, stages=stages, optimizer=search_optimizer(cfg))
    return state.params, state.energy, state.iterations


def _pad_repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    """The rows of ``x`` (K, ...) repeated cyclically to n rows."""
    return x[torch.arange(n, device=x.device) % x.shape[0]]


def initial_parameters(fitter, points: list[torch.Tensor] | None, target, shape: dict | None = None,
                       wrists: list | None = None, candidates: list | None = None,
                       keep: int = 1) -> tuple[dict, torch.Tensor]:
    """Best of the principal-axis candidates per frame after a short global fit (or the
    ``keep`` best).

    All candidates (four per frame, six where the frame's wrist is known, see
    :func:`global_candidates`) are optimised together as one batch for
    ``fitter.config.candidate_iterations`` iterations (with ``cold="icp"``:
    ranked by ``cold_candidate_iterations`` LM iterations of the ICP energy and one
    render-energy evaluation each, then only the ``keep + cold_spare_candidates`` best get the
    render fit, of ``cold_global_iterations``, which ranks them again; with
    ``cold_candidates="render"`` all get that render fit)
    (:func:`search_budget`: at most
    ``lm_search_iterations`` with ``optimizer="lm"``); frames with fewer candidates repeat
    theirs to fill the batch.

    Args:
        fitter: the :class:`fitting.Fitter`.
        points: B tensors (N_b, 3), each frame's segmented hand points (camera frame, mm).
        target: the B frames' :class:`fitting.fitter.FitTarget`.
        shape: optional dict of (1, ...) or (B, ...) tensors among ``alpha``, ``beta``,
            ``offsets`` (and optionally ``theta``, e.g. a tracker's last articulation): every
            candidate gets them instead of the template's.
        wrists: optional B entries, each None or a (3,) wrist (mm) at the forearm's cut.
        candidates: instead of ``points``, B pairs ``(global_orient (K_b, 3) rad, transl
            (K_b, 3) mm)``: each frame's own candidates (e.g. the multi-view ones of
            :func:`fitting.multiview.view_candidates`, in the rig's world frame).
        keep: how many of each frame's candidates to return, lowest energy first (at most
            the number of candidates; a frame with fewer distinct ones repeats them).

    Returns:
        the parameters (dict of (B * keep, ...) tensors, frame-major, each frame's best
        first) and the iterations spent per frame (B,).

    Raises:
        ValueError: ``keep`` < 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    device, dtype = target.device, target.dtype
    if candidates is None:
        wrists = wrists or [None] * len(points)
        cands = [global_candidates(p.to(device, dtype), None if w is None else w.to(device, dtype))
                 for p, w in zip(points, wrists)]
    else:
        cands = [(o.to(device, dtype), t.to(device, dtype)) for o, t in candidates]
    n = max(c[0].shape[0] for c in cands)
    orients = [_pad_repeat(o, n) for o, _ in cands]
    transls = [_pad_repeat(t, n) for _, t in cands]
    B = len(cands)
    init = {"global_orient": torch.cat(orients), "transl": torch.cat(transls)}
    for k, v in (shape or {}).items():
        init[k] = v.expand(B, *v.shape[1:]).repeat_interleave(n, 0)
    cfg = fitter.config
    cold = cfg.cold == "icp"
    icp = cold and cfg.cold_candidates == "icp" and _cold_icp(cfg, target)
    render_iterations = search_budget(cfg, cfg.cold_global_iterations if cold else cfg.candidate_iterations)
    render_stage = Stage("candidates", ("global_orient", "transl"), render_iterations)
    keep = min(keep, n)
    if icp:  # ranked by an ICP global fit and one render evaluation each; the kept ones' render fit
        stage = Stage("candidates-icp", ("global_orient", "transl"), cfg.cold_candidate_iterations)
        _, score, spent = _search_fit(fitter, target.repeat_interleave(n), init, (stage,), icp=True)
    else:
        params, score, spent = _search_fit(fitter, target.repeat_interleave(n), init, (render_stage,), icp=False)
    spent = spent.view(B, n).sum(1)
    if icp:
        # the render fit of the ICP ranking's best keep + cold_spare_candidates, from their
        # principal-axis start (ICP's pose starts the hypotheses worse), ranked by its energy
        m = min(n, keep + cfg.cold_spare_candidates)
        short = (score.view(B, n).argsort(dim=1, stable=True)[:, :m]
                 + torch.arange(B, device=score.device)[:, None] * n).reshape(-1)
        params, energy, fitted = _search_fit(fitter, target.repeat_interleave(m), {k: v[short] for k, v in init.items()},
                                             (render_stage,), icp=False)
        choice = (energy.view(B, m).argsort(dim=1, stable=True)[:, :keep]
                  + torch.arange(B, device=energy.device)[:, None] * m).reshape(-1)
        return {k: v[choice] for k, v in params.items()}, spent + fitted.view(B, m).sum(1)
    order = score.view(B, n).argsort(dim=1, stable=True)[:, :keep]
    choice = (order + torch.arange(B, device=score.device)[:, None] * n).reshape(-1)
    return {k: v[choice] for k, v in params.items()}, spent


def rotate_in_plane(params: dict, angles_deg: tuple[float, ...]) -> dict:
    """Each frame's parameters repeated once per angle, the hand turned about its palm normal.

    The rotation is about the posed hand's canonical ``z`` axis (the palm normal), through
    the model origin.

    Args:
        params: dict of (B, ...) tensors with ``global_orient`` (B, 3) axis-angle, radians.
        angles_deg: K angles in degrees.

    Returns:
        a dict of (B * K, ...) tensors, frame-major.
    """
    K = len(angles_deg)
    R = axis_angle_to_matrix(params["global_orient"]).repeat_interleave(K, 0)
    normal = R[:, :, 2]
    angles = torch.tensor(angles_deg, dtype=R.dtype, device=R.device).repeat(params["global_orient"].shape[0])
    turned = axis_angle_to_matrix(torch.deg2rad(angles)[:, None] * normal) @ R
    out = {k: v.repeat_interleave(K, 0) for k, v in params.items()}
    out["global_orient"] = matrix_to_axis_angle(turned)
    return out


#: With a known wrist (the forearm's cut) the in-plane search stays within this angle (degrees)
#: of the axis: turning about the palm's centre by more moves the wrist (about 110 mm away)
#: by more than 30 mm off the cut.
WRIST_ANGLE_LIMIT_DEG = 15.0

#: With a known wrist, this many of the principal-axis candidates (the lowest energies after
#: their global fit) go on to the in-plane search, each at every angle within
#: :data:`WRIST_ANGLE_LIMIT_DEG`. A flat template fitted to a curled hand ranks its roll
#: and palm side unreliably: on four synthetic egocentric frames (64 px) the best candidate
#: of the global fit had its palm flipped (a box in the grip: MPJPE 72 mm after the fit) or
#: its roll 30-40 degrees off (the forearm from the bottom: 24.5 mm), while after the pose
#: stages the lowest energy among the top three had the right palm side in all four (48 and
#: 6.6 mm). The in-plane search then costs 9 short pose fits instead of 5 for such frames.
WRIST_CANDIDATES = 3


def search_hypotheses(fitter, target, init: dict, angles_deg: tuple[float, ...] | None = None,
                      wrists: list | None = None, per_frame: int = 1,
                      starts: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """The best in-plane rotation of ``init`` per frame after a short fit of the pose stages.

    The pose stages are the configured stages that free no shape parameter (``alpha``,
    ``beta``, ``offsets``), each capped at ``fitter.config.hypothesis_iterations``; all
    hypotheses run as one batch and the lowest energy wins. With ``FitConfig(cold="icp")``
    they are one LM fit of the whole pose on the articulated-ICP energy
    (``icp_hypothesis_iterations`` at most, :data:`~fitting.config.ICP_COLD_WEIGHTS`) and the
    lowest render energy after it wins (single-view targets with data points; a multi-view
    target keeps the render fits).

    Args:
        fitter: the :class:`fitting.Fitter`; target: the B frames' ``FitTarget``.
        init: dict of (B * per_frame, ...) tensors, the starting parameters, frame-major
            (each frame's ``per_frame`` candidates, its best first, as
            :func:`initial_parameters` returns them with ``keep=per_frame``).
        angles_deg: the K in-plane rotations (degrees); None: ``fitter.config.angles_deg``.
            Frames without a wrist turn their best candidate by each.
        wrists: optional B entries, each None or a (3,) wrist (mm): frames with a wrist try
            each of their ``per_frame`` candidates at the angles within
            :data:`WRIST_ANGLE_LIMIT_DEG` (repeated to fill the batch).
        per_frame: the candidates per frame in ``init``.
        starts: optional (S, D) or per frame (B, S, D) rad start articulations
            (:func:`start_articulations`): each hypothesis is tried once with each (S times the
            short fits), instead of with ``init``'s articulation (a frame with a held object
            repeats its grasp, so that it keeps one start in a batch with others).

    Returns:
        the winners' parameters (dict of (B, ...) tensors) and the iterations spent per frame.

    Raises:
        ValueError: ``init``'s batch is not B * ``per_frame``; ``starts`` of another shape.
    """
    cfg = fitter.config
    angles_deg = cfg.angles_deg if angles_deg is None else angles_deg
    if not angles_deg:
        angles_deg = (0.0,)
    B = target.batch_size
    n_init = init["global_orient"].shape[0]
    if per_frame < 1 or n_init != B * per_frame:
        raise ValueError(f"init must hold per_frame = {per_frame} candidates for each of the {B} frames, "
                         f"got a batch of {n_init}")
    pose_stages = tuple(s for s in cfg.stages if not set(s.free) & SHAPE_PARAMETERS)
    icp = _cold_icp(cfg, target)
    if icp:  # one ICP fit of the whole pose (global rotation, translation, angles)
        free = tuple(dict.fromkeys(n for s in pose_stages for n in s.free)) or ("global_orient", "transl")
        stages = (Stage("hypotheses", free, cfg.icp_hypothesis_iterations),)
    else:
        stages = tuple(dataclasses.replace(s, iterations=search_budget(cfg, min(s.iterations, cfg.hypothesis_iterations)))
                       for s in pose_stages)
    has_wrist = wrists is not None and any(w is not None for w in wrists)
    near = tuple(a for a in angles_deg if abs(a) <= WRIST_ANGLE_LIMIT_DEG) or (0.0,)
    K = max(len(angles_deg), per_frame * len(near)) if has_wrist else len(angles_deg)
    rows = []
    for b in range(B):
        mine = {k: v[b * per_frame:(b + 1) * per_frame] for k, v in init.items()}
        if has_wrist and wrists[b] is not None:
            turned = rotate_in_plane(mine, near)  # each candidate at each near angle
        else:
            turned = rotate_in_plane({k: v[:1] for k, v in mine.items()}, angles_deg)
        rows.append({k: _pad_repeat(v, K) for k, v in turned.items()})
    hypotheses = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    if starts is not None and starts.shape[-2] > 1:  # each hypothesis once per start articulation
        if starts.ndim == 2:
            starts = starts[None].expand(B, -1, -1)
        if starts.ndim != 3 or starts.shape[0] != B:
            raise ValueError(f"starts must have shape (S, D) or (B, S, D) with B = {B}, got {tuple(starts.shape)}")
        n_starts, D = starts.shape[1], starts.shape[2]
        hypotheses = {k: v.view(B, K, *v.shape[1:]).repeat_interleave(n_starts, 1).reshape(B * K * n_starts, *v.shape[1:])
                      for k, v in hypotheses.items()}
        hypotheses["theta"] = starts[:, None].expand(B, K, n_starts, D).reshape(B * K * n_starts, D).to(
            hypotheses["global_orient"])
        K = K * n_starts
    params, score, spent = _search_fit(fitter, target.repeat_interleave(K), hypotheses, stages, icp=icp)
    choice = score.view(B, K).argmin(1) + torch.arange(B, device=score.device) * K
    return {k: v[choice] for k, v in params.items()}, spent.view(B, K).sum(1)


def start_articulations(fitter, target) -> torch.Tensor | None:
    """The start articulations (S, D) rad that each in-plane hypothesis of
    :func:`search_hypotheses` is tried with (``FitConfig.search_poses``), on the target's
    device and dtype; None for a single start (the hypotheses keep their own articulation).

    ``"open"`` is the open hand (0), ``"grasp"`` the curled hand of :func:`grasp_pose`. A relaxed or grasping hand seen from above its knuckles (a
    head-mounted camera) hides its curled fingertips, and a fit from the open hand stays in
    the open hand's basin (its fingers straightened by 0.2 rad, 15-20 mm fingertip errors);
    the lowest energy of both starts decides (see :data:`~fitting.config.SEARCH_POSES`).
    """
    poses = tuple(dict.fromkeys(fitter.config.search_poses))
    if len(poses) < 2:
        return None
    D = fitter.model.num_dofs
    rows = []
    for p in poses:
        if p == "open":
            rows.append(torch.zeros(D, device=target.device, dtype=target.dtype))
        else:
            rows.append(grasp_pose(fitter.model).to(target.device, target.dtype))
    return torch.stack(rows)


#: The network's guess is kept unless the flipped alternative's energy after the short global
#: fit is below this share of the guess's ("clearly better").
FLIP_MARGIN = 0.8


def flip_palm(params: dict) -> dict:
    """The same hands turned 180 degrees about their own fingers' axis (canonical ``y``, through
    the model origin): palm and back swapped, the depth ambiguity a network is likeliest to get
    wrong. ``params``: dict of (B, ...) tensors with ``global_orient`` (B, 3) axis-angle."""
    R = axis_angle_to_matrix(params["global_orient"])
    flip = torch.diag(R.new_tensor([-1.0, 1.0, -1.0]))  # R_y(pi)
    out = dict(params)
    out["global_orient"] = matrix_to_axis_angle(R @ flip)
    return out


def network_input(crops, box_mm: float, size: int, device=None, dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The network input of B fitter crops: what :func:`network_parameters` (and the
    unsupervised adaptation, :mod:`fitting.adaptation`) feed a depth initializer.

    Each crop's hand depth is normalized as the network was trained
    (:func:`fitting.synth_dataset.normalize_depth`: depth relative to the crop centre over half
    the box, DeepHPS Sec. 6.1) and resampled (nearest) to ``size`` if the crop's side differs.

    Args:
        crops: B :class:`fitting.preprocess.HandCrop` of one side S.
        box_mm: the network's crop box, mm; size: its input side, px.
        device, dtype: where the tensors are made (default: the crops').

    Returns:
        (x (B, 1, size, size) in [-1, 1], centre (B, 3) mm, the crop centres in the camera frame).
    """
    from .synth_dataset import normalize_depth

    depth = torch.stack([c.hand_depth.to(device, dtype) for c in crops])
    centre = torch.stack([c.centre_mm.to(device, dtype) for c in crops])
    x = normalize_depth(depth, centre[:, 2, None, None], box_mm)[:, None]
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")
    return x, centre


def network_parameters(fitter, initializer, crops, target, shape: dict | None = None,
                       margin: float = FLIP_MARGIN, skip_ratio: float | None = None) -> tuple[dict, torch.Tensor]:
    """First guesses from a :class:`fitting.initializer.DepthInitializer` instead of the search.

    Each crop's hand depth is normalized as the network was trained (:func:`network_input`).
    Its prediction and the palm-flipped alternative (:func:`flip_palm`) are first scored as
    they are (one energy evaluation each, no optimizer step; the energy of the search's
    candidates, :func:`initial_parameters`): where the alternative's energy is at least
    ``skip_ratio`` times the guess's, the guess is kept as it is and the frame spends no
    iteration on the check. The other frames run the check of the issue: both get the short
    global-only fit of :func:`initial_parameters` (2 hypotheses a frame in one batch) and the
    prediction is kept unless the alternative's energy is below ``margin`` times its own.

    Args:
        fitter: the :class:`fitting.Fitter`; initializer: the network (any device; it is run on
            the fitter's device and dtype).
        crops: B :class:`fitting.preprocess.HandCrop`; target: their ``FitTarget``.
        shape: optional known shape (dict of (1, ...) or (B, ...) ``alpha``, ``beta``,
            ``offsets``, e.g. a tracker's frozen one) replacing the network's (or, with
            ``fitter.config.network_shape`` False, the template's); other keys (a tracker's
            ``theta``) are ignored: the network's articulation is kept.
        margin: see above (:data:`FLIP_MARGIN`).
        skip_ratio: see above; None: ``fitter.config.flip_skip_ratio``
            (:data:`FLIP_SKIP_RATIO`); ``math.inf`` always runs the short fits.

    Returns:
        the parameters (dict of (B, ...) tensors) and the iterations spent per frame (B,):
        0 for a frame kept on its raw energies, else the check's (2 x
        ``candidate_iterations`` with Adam).
    """
    dev, dt = target.mask.device, target.mask.dtype
    B = len(crops)
    skip_ratio = fitter.config.flip_skip_ratio if skip_ratio is None else skip_ratio
    x, centre = network_input(crops, initializer.box_mm, initializer.size, dev, dt)
    net = initializer.to(dev, dt).eval()
    with torch.no_grad():
        guess = net(x).parameters(centre)
    guess.pop("offsets")
    if not fitter.config.network_shape:  # the template's shape, the network's pose
        guess.pop("alpha")
        guess.pop("beta")
    for k, v in (shape or {}).items():
        if k in ("alpha", "beta", "offsets"):
            guess[k] = v.to(dev, dt).expand(B, *v.shape[1:])
    neutral = fitter.model.neutral_parameters(B)
    guess = {k: guess.get(k, neutral[k]).to(dev, dt) for k in PARAMETER_NAMES}
    flipped_guess = flip_palm(guess)
    both = {k: torch.stack([v, flipped_guess[k]], 1).flatten(0, 1) for k, v in guess.items()}  # frame-major
    with torch.no_grad():
        terms, _, _ = fitter.energy_terms(both, target.repeat_interleave(2), surface_terms=False)
        raw = fitter.total(terms).view(B, 2)
    check = ~(raw[:, 1] >= skip_ratio * raw[:, 0])  # NaN compares False: such a frame is checked
    params = {k: v.clone() for k, v in guess.items()}
    spent = torch.zeros(B, dtype=torch.long, device=dev)
    idx = check.nonzero()[:, 0]
    n = int(idx.numel())
    if n:
        sub = {k: v.view(B, 2, *v.shape[1:])[idx].flatten(0, 1) for k, v in both.items()}
        stage = Stage("candidates", ("global_orient", "transl"),
                      search_budget(fitter.config, fitter.config.candidate_iterations))
        state = fitter.run(target.select(idx).repeat_interleave(2), sub, stages=(stage,),
                           optimizer=search_optimizer(fitter.config))
        energy = state.energy.view(n, 2)
        flipped = energy[:, 1] < margin * energy[:, 0]
        choice = flipped.long() + torch.arange(n, device=energy.device) * 2
        params = {k: v.index_copy(0, idx, state.params[k][choice].to(v)) for k, v in params.items()}
        spent = spent.index_copy(0, idx, state.iterations.view(n, 2).sum(1))
    return params, spent
