r"""The tracking energy: articulated ICP with closed-form Jacobians (``TrackOptions(energy="icp")``).

The energy that the real-time model-based depth trackers minimise (htrack: Tagliasacchi et
al., "Robust articulated-ICP for real-time hand tracking", SGP 2015, Eqs. 1-5; honline:
Tkach et al. 2017), in the least-squares form of :mod:`fitting.levenberg_marquardt`:

.. math::

    E(x) = w_{3D} \frac{1}{N} \sum_i \big(n_{c(i)} \cdot (v_{c(i)}(x) - p_i)\big)^2
         + w_{2D} \frac{1}{V} \sum_{v \notin \mathcal{S}} \lVert \pi(v(x)) - \Pi_{\mathcal{S}}(\pi(v(x))) \rVert^2
         + \sum_k w_k \lVert r_k(x) \rVert^2

- **data-to-model, point-to-plane** (``point_to_plane``, mm): each observed hand point
  :math:`p_i` (:attr:`fitting.FitTarget.points`) against its nearest *front-facing* model
  vertex :math:`v_{c(i)}` (normal towards the camera), along that vertex's normal
  :math:`n_{c(i)}` (held fixed within an iteration, the usual ICP linearisation);
- **data-to-model, point-to-point** (``point_to_point``, mm, off while tracking): the same
  pairs' full 3D difference :math:`v_{c(i)}(x) - p_i`, for starts far from the hand (the cold
  path, :data:`fitting.config.ICP_COLD_WEIGHTS`), where a finger one width off would slide
  along the point-to-plane term instead of being pulled sideways;
- **model-to-data silhouette** (``silhouette_2d``, px of the crop): each front-facing vertex
  whose projection :math:`\pi(v)` falls outside the observed mask :math:`\mathcal{S}` is
  pulled to the nearest mask pixel (the distance transform's closest point, here the nearest
  boundary pixel centre, found once per evaluation by ``torch.cdist``);
- the fitter's own ``pose_prior``, ``joint_limits``, ``temporal`` (and ``wrist``,
  ``keypoints_3d``, ``keypoints_2d`` when the target has them) residuals with the weights of
  :class:`~fitting.FitConfig`.

The unknowns are the pose: a rotation increment of the whole hand about the camera axes
(applied on the left of ``global_orient``), the translation and the articulation angles;
the shape stays frozen (the tracker calibrated it). The Jacobian is in closed form, with no
rasterisation and no autograd through the hand: the kinematic chain
(:meth:`hands.HandModel.kinematic_jacobian`), times the fixed normal for the 3D term and the
pinhole projection's derivative for the 2D term; the prior, limit and keypoint residuals are
elementwise affine (or hinge) functions of the angles and keypoints, so their slopes multiply
the keypoint rows of the same chain (no ``torch.func``: its lazy import of ``torch._dynamo``
costs 1.6 s). ``tests/test_tracking_energy.py`` checks the whole Jacobian against autograd in
float64. One iteration costs about one hand-model forward pass, a nearest-vertex search and a
few small products; the rendered silhouette is needed only once per frame, for the IoU of the
lost-track test and the metrics (:meth:`fitting.Fitter.fit_crops`).
"""

from __future__ import annotations

import math

import torch
from pytorch3d.structures import Meshes
from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle

from losses import joint_limit_residuals, keypoint_residuals, nearest_vertex, temporal_residuals

from .levenberg_marquardt import lm_solve

__all__ = ["TRACKING_ENERGIES", "TRACK_PARAMETERS", "ICP_WEIGHTS", "ICP_REL_TOL", "IcpEnergy", "icp_stage"]

#: The energies a tracker's warm frames can minimise (``TrackOptions.energy``): the
#: render-and-compare energy of :class:`fitting.Fitter` or the articulated-ICP energy here.
TRACKING_ENERGIES = ("render", "icp")
#: The parameters the ICP energy optimises (the shape is frozen while tracking).
TRACK_PARAMETERS = ("global_orient", "transl", "theta")
#: Weights of the ICP data terms: ``point_to_plane`` per mm^2 of the mean squared
#: point-to-plane distance, ``silhouette_2d`` per px^2 of the mean (over all V vertices)
#: squared distance of the vertices outside the mask, ``point_to_point`` per mm^2 of the mean
#: squared point-to-vertex distance (0: off; the cold path turns it on,
#: :data:`fitting.config.ICP_COLD_WEIGHTS`). The priors and the temporal term keep
#: :data:`fitting.config.DEFAULT_WEIGHTS`. On 30 synthetic frames (the ``bench/tracking.py``
#: sequence, 8 iterations at most) keypoint error / jitter (mm, mm/frame^2): these 0.74 / 0.51;
#: point_to_plane 3e-3 0.84 / 0.35, 3e-2 0.74 / 0.72; silhouette_2d 1e-3 0.88 / 0.52, 0.1
#: 0.69 / 0.55.
ICP_WEIGHTS = {"point_to_plane": 1e-2, "silhouette_2d": 1e-2, "point_to_point": 0.0}
#: Convergence of the ICP stage: a step gaining less than this (relative) ends a frame. The
#: render energy's ``FitConfig.rel_tol`` (1e-3) makes a warm frame spend a third more
#: iterations at the sensor-noise floor for nothing: on 30 synthetic frames (``bench/tracking.py``
#: setting) 1e-3 takes 3.1 iterations per frame and 0.744 mm keypoint error, 1e-2 2.0 and 0.743 mm.
ICP_REL_TOL = 1e-2
#: Padding of the mask-boundary list (px): out of reach of any projected vertex.
_FAR_PX = 1e6


def _leading(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices of the True entries of a (B, V) mask, first ones first: (B, K) long with K
    the largest count, rows padded with their first True index (or 0 where none), and the
    counts (B,). Padding repeats an entry, harmless for nearest-neighbour searches."""
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    count = mask.sum(1)
    K = max(int(count.max()), 1)
    cols = torch.arange(K, device=mask.device)[None]
    return torch.where(cols < count[:, None], order[:, :K], order[:, :1]), count


class IcpEnergy:
    """The articulated-ICP energy of one batch (see the module docstring), residuals and Jacobian.

    Args:
        fitter: the :class:`fitting.Fitter` (its model, config weights and projection).
        target: the :class:`fitting.FitTarget` (its ``points``, ``mask``, ``camera``, and the
            optional ``previous_keypoints``, ``wrist``, ``keypoints_3d``, ``keypoints_2d``).
        weights: overrides of :data:`ICP_WEIGHTS`.

    Raises:
        ValueError: the target has no data points, or an unknown weight name.
    """

    def __init__(self, fitter, target, weights: dict | None = None):
        unknown = set(weights or {}) - set(ICP_WEIGHTS)
        if unknown:
            raise ValueError(f"IcpEnergy: unknown weights {sorted(unknown)}; known: {sorted(ICP_WEIGHTS)}")
        if target.points is None:
            raise ValueError("IcpEnergy: the target has no data points (FitTarget.points)")
        self.fitter, self.model, self.target = fitter, fitter.model, target
        w = dict(fitter.config.weights)
        w.update(ICP_WEIGHTS)
        w.update(weights or {})
        self.weights = w
        B, N = target.points.shape[:2]
        dev, dt = target.points.device, target.points.dtype
        lengths = target.point_lengths
        self.lengths = lengths if lengths is not None else torch.full((B,), N, device=dev, dtype=torch.long)
        self.point_valid = torch.arange(N, device=dev)[None] < self.lengths[:, None]  # (B, N)
        self.point_scale = 1.0 / self.lengths.clamp(min=1).to(dt).sqrt()  # (B,)
        # the observed mask's boundary pixel centres, per frame (padded with far points)
        H, W = target.mask.shape[1:]
        inside = target.mask > 0.5
        pad = torch.nn.functional.pad(inside[:, None].to(dt), (1, 1, 1, 1))
        eroded = -torch.nn.functional.max_pool2d(-pad, 3, stride=1)[:, 0] > 0.5
        boundary = inside & ~eroded
        count = int(boundary.flatten(1).sum(1).max()) if bool(boundary.any()) else 0
        ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=dt), torch.arange(W, device=dev, dtype=dt),
                                indexing="ij")
        grid = torch.stack([xs, ys], -1).reshape(H * W, 2)
        centres = torch.full((B, max(count, 1), 2), _FAR_PX, device=dev, dtype=dt)
        for b in range(B):
            pts = grid[boundary[b].flatten()]
            centres[b, : pts.shape[0]] = pts
        self.boundary = centres
        self.inside = inside
        self.camera = target.camera.expand(B) if target.camera.batch_size == 1 else target.camera
        self._cache = None  # (params, terms, correspondences) of the last evaluation
        self.keys = [k for k in ("point_to_plane", "point_to_point", "silhouette_2d") if w[k]] + \
            [k for k in self._pose_terms(target.points.new_zeros(B, self.model.num_dofs)) if w[k]] + \
            list(self._keypoint_terms(target.points.new_zeros(B, 21, 3)))

    # -- the small terms ------------------------------------------------------------------
    def _pose_terms(self, theta):
        m = self.model
        return {"joint_limits": joint_limit_residuals(theta, m.dof_lower, m.dof_upper), "pose_prior": theta}

    def _keypoint_terms(self, keypoints):
        """name -> (residual function f, which input: "kp" (B, 21, 3) or "uv" (B, 21, 2)); each f
        is affine and elementwise in its input (the Jacobian is ``diag(f(x + 1) - f(x))``)."""
        t, w, terms = self.target, self.weights, {}
        if t.previous_keypoints is not None and w["temporal"]:
            prev = t.previous_keypoints
            before = prev[:, 0] if prev.shape[1] == 2 else None
            terms["temporal"] = (lambda k: temporal_residuals(k, prev[:, -1], before), "kp")
        if t.wrist is not None and w["wrist"]:
            terms["wrist"] = (lambda k: keypoint_residuals(k[:, :1], t.wrist[:, None]), "kp")
        if t.keypoints_3d is not None and w["keypoints_3d"]:
            terms["keypoints_3d"] = (lambda k: keypoint_residuals(k, t.keypoints_3d, t.keypoint_weights), "kp")
        if t.keypoints_2d is not None and w["keypoints_2d"]:
            terms["keypoints_2d"] = (lambda uv: keypoint_residuals(uv, t.keypoints_2d, t.keypoint_weights), "uv")
        return terms

    # -- residuals --------------------------------------------------------------------------
    def residuals(self, params: dict, jacobian: bool = True):
        """The unweighted residuals per term at ``params`` and (optionally) their Jacobians.

        Args:
            params: dict of (B, ...) tensors (all the hand's parameters).
            jacobian: also return the Jacobians by the P = 6 + D pose unknowns of
                :meth:`hands.HandModel.kinematic_jacobian` (rotation increment, translation,
                angles).

        Returns:
            ``(terms, jacobians)``: dicts name -> (B, M_k) and name -> (B, M_k, P) (None
            without ``jacobian``), the names of :attr:`keys`; units: mm (``point_to_plane``),
            px (``silhouette_2d``), those of :meth:`fitting.Fitter.residual_terms` otherwise.

        Without ``jacobian`` the residuals stay differentiable by autograd (the tests use it),
        with the correspondences, the gating and the normals held fixed as in the
        linearisation. The correspondences of the last evaluation without autograd are kept:
        the LM loop linearises at the point it has just evaluated and accepted, which then
        costs only the Jacobian.
        """
        if jacobian:
            with torch.no_grad():
                cached = self._cache
                if cached is not None and all(torch.equal(cached[0][k], params[k]) for k in cached[0]):
                    terms, geo = cached[1], cached[2]
                else:
                    terms, geo = self._geometry(params)
                return terms, self._jacobians(params, geo)
        terms, geo = self._geometry(params)
        if not torch.is_grad_enabled() or not any(v.requires_grad for v in params.values()):
            self._cache = ({k: v.clone() for k, v in params.items() if k in TRACK_PARAMETERS}, terms, geo)
        return terms, None

    def _geometry(self, params: dict):
        """The residuals at ``params`` and what their Jacobians need (the correspondences)."""
        model, t, w = self.model, self.target, self.weights
        out = model(**params)
        verts = out.vertices
        B, V = verts.shape[:2]
        with torch.no_grad():
            normals = Meshes(verts=verts.detach(), faces=model.faces[None].expand(B, -1, -1)).verts_normals_padded()
            front = (normals * verts).sum(-1) < 0  # (B, V) facing the camera
            # the front-facing vertices (all of them where none faces the camera), padded
            pick, count = _leading(front | ~front.any(1, keepdim=True))  # (B, K)
            K = pick.shape[1]
            valid = torch.arange(K, device=pick.device)[None] < count[:, None]
        vf = verts.gather(1, pick[..., None].expand(-1, -1, 3))
        nf = normals.gather(1, pick[..., None].expand(-1, -1, 3))
        geo = {"out": out, "pick": pick, "vf": vf.detach()}
        terms = {}
        if w["point_to_plane"] or w["point_to_point"]:
            idx = nearest_vertex(t.points, vf.detach(), self.lengths)  # (B, N) into the front ones
            v_c = vf.gather(1, idx[..., None].expand(-1, -1, 3))
            n_c = nf.gather(1, idx[..., None].expand(-1, -1, 3))
            scale = (self.point_scale[:, None] * self.point_valid)  # (B, N)
            if w["point_to_plane"]:
                terms["point_to_plane"] = scale * (n_c * (v_c - t.points)).sum(-1)
            if w["point_to_point"]:
                terms["point_to_point"] = (scale[..., None] * (v_c - t.points)).flatten(1)
            geo.update(idx=idx, n_c=n_c, scale=scale)
        if w["silhouette_2d"]:
            uv = self.camera.project(vf)  # (B, K, 2)
            H, W_ = self.inside.shape[1:]
            with torch.no_grad():
                col = uv[..., 0].round().long()
                row = uv[..., 1].round().long()
                in_crop = (col >= 0) & (col < W_) & (row >= 0) & (row < H)
                pix = (row.clamp(0, H - 1) * W_ + col.clamp(0, W_ - 1))
                outside = valid & ~(self.inside.flatten(1).gather(1, pix) & in_crop)  # (B, K)
                # one residual pair per outside vertex (a good fit has few), padded with zeros
                out_pick, _ = _leading(outside)  # (B, L)
                gate = outside.gather(1, out_pick).to(verts.dtype)[..., None] / math.sqrt(V)
            uv_out = uv.gather(1, out_pick[..., None].expand(-1, -1, 2))
            nearest = torch.cdist(uv_out.detach(), self.boundary).argmin(-1)  # (B, L)
            goal = self.boundary.gather(1, nearest[..., None].expand(-1, -1, 2))
            terms["silhouette_2d"] = (gate * (uv_out - goal)).flatten(1)
            geo.update(out_pick=out_pick, gate=gate)
        terms.update(self._pose_terms(params["theta"]))
        kp = out.keypoints
        uv_kp = self.camera.project(kp)
        terms.update({k: f(kp if src == "kp" else uv_kp) for k, (f, src) in self._keypoint_terms(kp).items()})
        return {k: terms[k] for k in self.keys}, geo

    def _jacobians(self, params: dict, geo: dict) -> dict:
        """The Jacobians (B, M_k, P) of the residuals whose correspondences ``geo`` holds."""
        model, w = self.model, self.weights
        out, pick, vf = geo["out"], geo["pick"], geo["vf"]
        B = vf.shape[0]
        jv, jk, _ = model.kinematic_jacobian(params, out, vertices=pick)  # the front vertices' rows
        P = jv.shape[-1]
        jacs = {}
        if w["point_to_plane"] or w["point_to_point"]:
            idx = geo["idx"]
            j_c = jv.gather(1, idx[..., None, None].expand(-1, -1, 3, P))
            if w["point_to_plane"]:
                jacs["point_to_plane"] = geo["scale"][..., None] * torch.einsum("bnc,bncp->bnp", geo["n_c"], j_c)
            if w["point_to_point"]:
                jacs["point_to_point"] = (geo["scale"][..., None, None] * j_c).flatten(1, 2)
        if w["silhouette_2d"]:
            out_pick, gate = geo["out_pick"], geo["gate"]
            p_out = vf.gather(1, out_pick[..., None].expand(-1, -1, 3))
            j_out = jv.gather(1, out_pick[..., None, None].expand(-1, -1, 3, P))
            jacs["silhouette_2d"] = (gate[..., None] * (self._projection_jacobian(p_out) @ j_out)).flatten(1, 2)
        theta = params["theta"]
        D = model.num_dofs
        zeros = theta.new_zeros(B, D, 6)
        eye = torch.eye(D, device=theta.device, dtype=theta.dtype).expand(B, D, D)
        lower, upper = model.dof_lower.to(theta.dtype), model.dof_upper.to(theta.dtype)
        below = -(lower - theta > 0).to(theta.dtype)
        above = (theta - upper > 0).to(theta.dtype)
        slope = torch.cat([below, above], 1)[..., None] * torch.cat([eye, eye], 1)  # (B, 2D, D)
        jacs["joint_limits"] = torch.cat([torch.cat([zeros, zeros], 1), slope], -1)
        jacs["pose_prior"] = torch.cat([zeros, eye], -1)
        kp = out.keypoints
        uv_kp = self.camera.project(kp)
        j_kp = jk.reshape(B, -1, P)  # (B, 63, P)
        j_uv = (self._projection_jacobian(kp) @ jk).reshape(B, -1, P)  # (B, 42, P)
        for k, (f, src) in self._keypoint_terms(kp).items():
            base = kp if src == "kp" else uv_kp
            diag = f(base + 1.0) - f(base)  # (B, M): the elementwise slope of an affine f
            rows = j_kp if src == "kp" else j_uv
            jacs[k] = diag[..., None] * rows[:, :diag.shape[1]]  # (the wrist: the first keypoint's rows)
        return {k: jacs[k] for k in self.keys}

    def _projection_jacobian(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 2, 3) the pinhole projection's derivative at camera-space points (B, N, 3), px/mm."""
        x, y, z = points.unbind(-1)
        fx, fy = self.camera.fx[:, None], self.camera.fy[:, None]
        zero = torch.zeros_like(x)
        return torch.stack([fx / z, zero, -fx * x / z ** 2, zero, fy / z, -fy * y / z ** 2], -1).view(
            *points.shape[:2], 2, 3)

    def stack(self, terms: dict) -> torch.Tensor:
        """(B, M) the weighted residuals ``[sqrt(w_k) r_k]`` (also for the Jacobians: (B, M, P))."""
        return torch.cat([math.sqrt(self.weights[k]) * terms[k] for k in self.keys], dim=1)

    def energies(self, terms: dict) -> torch.Tensor:
        """(B, K) the unweighted energies ``||r_k||^2`` in :attr:`keys` order."""
        return torch.stack([(terms[k] ** 2).flatten(1).sum(-1) for k in self.keys], dim=1)

    def weighted_terms(self, params: dict) -> dict:
        """dict name -> (B,) the weighted energies at ``params``."""
        terms, _ = self.residuals(params, jacobian=False)
        return {k: self.weights[k] * (terms[k] ** 2).sum(-1) for k in self.keys}


def _retract(fitter, params: dict, names, delta: torch.Tensor):
    """The trial point of a pose step (B, 6 + D) and the step taken after projection."""
    trial = {k: v.clone() for k, v in params.items()}
    step = delta.clone()
    if "global_orient" in names:
        R = axis_angle_to_matrix(delta[:, :3]) @ axis_angle_to_matrix(params["global_orient"])
        trial["global_orient"] = matrix_to_axis_angle(R)
    if "transl" in names:
        trial["transl"] = params["transl"] + delta[:, 3:6]
    if "theta" in names:
        trial["theta"] = params["theta"] + delta[:, 6:]
    fitter._project(trial)
    step[:, 3:6] = trial["transl"] - params["transl"]
    step[:, 6:] = trial["theta"] - params["theta"]
    return trial, step


def icp_stage(fitter, params: dict, names, target, iterations: int, stage_name: str = "icp", record=None,
              weights: dict | None = None, rel_tol: float = ICP_REL_TOL):
    """Batched Levenberg-Marquardt on the ICP energy over the pose ``names`` (in place).

    The loop of :func:`fitting.levenberg_marquardt.lm_solve` (per-frame damping, acceptance
    only when the energy drops, convergence by ``rel_tol``, the NaN guard); the
    correspondences (nearest front-facing vertices, nearest mask pixels) are searched again
    at every evaluated point. Columns of parameters not in ``names`` are zeroed.

    Args:
        fitter: the :class:`fitting.Fitter`; params: dict of (B, ...) tensors, updated in place
            to each frame's best state; names: a subset of :data:`TRACK_PARAMETERS`;
        target: the :class:`fitting.FitTarget`; iterations: the most LM iterations;
        stage_name, record: as :func:`fitting.levenberg_marquardt.levenberg_marquardt_stage`;
        weights: overrides of :data:`ICP_WEIGHTS`; rel_tol: a step gaining less than this
            (relative) ends a frame (:data:`ICP_REL_TOL`), as does a rejected step predicted to
            gain less.

    Returns:
        ``(energy (B,), iterations (B,) long, nan_events (B,) long)``.

    Raises:
        ValueError: ``names`` has a parameter outside :data:`TRACK_PARAMETERS`, or see
            :class:`IcpEnergy`.
    """
    bad = set(names) - set(TRACK_PARAMETERS)
    if bad:
        raise ValueError(f"icp_stage: the ICP energy optimises {TRACK_PARAMETERS}, not {sorted(bad)}")
    full = IcpEnergy(fitter, target, weights)
    last: dict = {}

    def energy_of(rows):
        """The ICP energy of the frames ``rows`` (None: all). lm_solve's active frames only
        shrink, so only the latest subset's energy is kept (made once per set of rows)."""
        if rows is None:
            return full
        key = tuple(rows.tolist())
        if last.get("key") != key:
            last.update(key=key, energy=IcpEnergy(fitter, target.select(rows), weights))
        return last["energy"]

    def part(p, rows):
        return p if rows is None else {k: v[rows] for k, v in p.items()}

    D = fitter.model.num_dofs
    P = 6 + D
    dev, dt = params["theta"].device, params["theta"].dtype
    keep = torch.zeros(P, device=dev, dtype=dt)
    for n, sl in (("global_orient", slice(0, 3)), ("transl", slice(3, 6)), ("theta", slice(6, P))):
        if n in names:
            keep[sl] = 1.0

    def linearize(p, rows=None):
        e = energy_of(rows)
        terms, jacs = e.residuals(part(p, rows), jacobian=True)
        return e.stack(terms), e.stack(jacs) * keep, e.energies(terms), e.keys

    def evaluate(p, rows=None):
        e = energy_of(rows)
        terms, _ = e.residuals(part(p, rows), jacobian=False)
        return (e.stack(terms) ** 2).sum(-1), e.energies(terms)

    # the converged frames are left out of the evaluations (lm_solve's subsets)
    return lm_solve(params, list(names), P, target.batch_size, iterations, rel_tol, linearize,
                    evaluate, lambda p, d: _retract(fitter, p, names, d), stage_name, record,
                    stop_on_prediction=True, subsets=True)
