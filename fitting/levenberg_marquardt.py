r"""Batched Levenberg-Marquardt over the hand's pose, bone scales and shape.

The second-order optimizer of :meth:`fitting.Fitter.run` (``FitConfig(optimizer="lm")``), the
solver of the model-based depth trackers (htrack, hmodel and honline converge in 6-8 LM
iterations per frame; Face2Face runs data-parallel Gauss-Newton on render-and-compare
residuals). It minimises the same energy as the first-order loop, written as residuals
(:meth:`fitting.Fitter.residual_terms`, :mod:`losses.residuals`):

.. math::

    E(x) = \sum_k w_k \lVert r_k(x) \rVert^2 = \lVert r(x) \rVert^2, \qquad
    r = [\sqrt{w_k}\, r_k]_k \in \mathbb{R}^{M}

Each iteration, for every frame of the batch on its own (Marquardt 1963; the update of the
damping is Nielsen's, Madsen, Nielsen and Tingleff, "Methods for non-linear least squares
problems", 2004, Eqs. 3.13-3.16):

1. the Jacobian :math:`J = \partial r / \partial x` (B, M, P) by **forward-mode** AD:
   ``torch.func.jvp`` of the whole residual function (hand model, renderer, energies) with
   ``torch.func.vmap`` over the P parameter directions. P is 6-57 and M is about 2 H W, so
   P forward tangents are the cheap direction (reverse mode would need M backward passes).
   The soft rasterizer's custom distance function has an analytic ``jvp`` rule
   (:class:`renderers._raster._FaceDistance2`); ``tests/test_levenberg_marquardt.py``
   checks the Jacobian against autograd in float64, per term and for the whole energy.
2. the damped normal equations :math:`(J^T J + \lambda D)\, \delta = -J^T r` with
   :math:`D = \operatorname{diag}(J^T J)` (Marquardt's scaling, floored so that a direction
   the data does not see stays damped), solved batched by Cholesky
   (``torch.linalg.cholesky_ex``; a failed factorisation counts as a rejected step);
3. the step (projected into the parameters' valid sets like the first-order steps) is
   **accepted only when the energy drops**; then :math:`\lambda \leftarrow \lambda
   \max(1/3, 1 - (2 \rho - 1)^3)` with :math:`\rho` the ratio of the actual to the predicted
   decrease, else :math:`\lambda \leftarrow \nu \lambda`, :math:`\nu \leftarrow 2 \nu` and
   the Jacobian is kept (a rejected step costs one forward pass).

A frame has converged when an accepted step gains less than ``FitConfig.rel_tol`` (relative)
or :math:`\lambda` exceeds :data:`LAMBDA_MAX`; a non-finite residual or Jacobian at the
current point stops the frame in its last state, which is always its best one (the NaN
guard; a non-finite trial is a rejected step and counts as a NaN event too).

**The offsets stay first-order.** The per-vertex offsets have 3 V = 4827 unknowns: a dense
normal matrix of that size per frame (and the vmap over as many tangents) costs far more
than the Adam steps that refine them, and a sparse solve would need the renderer's sparse
Jacobian structure. A stage that frees the offsets therefore runs LM over its other free
parameters first (without the surface regularisers, which do not depend on them except the
normal term's weak pull) and then ``FitConfig.lm_offset_iterations`` Adam iterations over
the offsets with the surface terms (:meth:`fitting.Fitter.run`).
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp, vmap

__all__ = ["FORWARD_MODE_RENDERERS", "LM_PARAMETERS", "LAMBDA_INIT", "LAMBDA_MAX", "ParameterLayout", "residual_jacobian",
           "levenberg_marquardt_stage", "lm_solve"]

#: Renderers (by name) whose outputs forward-mode AD goes through; PyTorch3D's rasterizer
#: (``pytorch3d``, ``hybrid``) has no forward-mode rule.
FORWARD_MODE_RENDERERS = ("soft", "splat")
#: The parameters LM optimises (the offsets stay on Adam, see the module docstring).
LM_PARAMETERS = ("global_orient", "transl", "theta", "alpha", "beta")
#: Initial damping, relative to ``diag(J^T J)`` (Marquardt scaling).
LAMBDA_INIT = 1e-3
#: A frame whose damping exceeds this has converged (no step along any direction helps).
LAMBDA_MAX = 1e8
#: Floor of the scaling ``D``, relative to the largest diagonal entry of ``J^T J``.
DIAGONAL_FLOOR = 1e-9


class ParameterLayout:
    """The free parameters of a stage flattened into one (B, P) vector and back.

    Args:
        params: dict name -> (B, ...) tensor; names: the free ones, in order.
    """

    def __init__(self, params: dict, names):
        self.names = list(names)
        self.shapes = [tuple(params[n].shape[1:]) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        """P, the number of unknowns per frame."""
        return sum(self.sizes)

    def flatten(self, params: dict) -> torch.Tensor:
        """(B, P) from the dict."""
        return torch.cat([params[n].reshape(params[n].shape[0], -1) for n in self.names], dim=1)

    def unflatten(self, x: torch.Tensor) -> dict:
        """dict name -> (B, ...) from (B, P)."""
        parts = torch.split(x, self.sizes, dim=1)
        return {n: p.reshape(x.shape[0], *s) for n, p, s in zip(self.names, parts, self.shapes)}


def _residual_function(fitter, params, layout, target, surface, render_settings, nearest, keys):
    def f(x):
        p = dict(params)
        p.update(layout.unflatten(x))
        terms, _, _ = fitter.residual_terms(p, target, surface, render_settings, nearest=nearest)
        keys[:] = list(terms)
        energies = torch.stack([(v ** 2).sum(-1) for v in terms.values()], dim=1)
        return fitter.stack_residuals(terms), energies
    return f


def _nearest(fitter, params, target):
    """The data points' nearest vertices at ``params`` (fixed for one LM iteration), or None."""
    if target.points is None or not fitter.config.weights["points"]:
        return None
    from losses import nearest_vertex

    with torch.no_grad():
        verts = fitter.model(**params).vertices
    lengths = target.point_lengths
    if lengths is None:
        lengths = torch.full((target.batch_size,), target.points.shape[1], dtype=torch.long, device=verts.device)
    return nearest_vertex(target.points, verts, lengths)


def residual_jacobian(fitter, params: dict, names, target, surface_terms: bool = False,
                      render_settings: dict | None = None, nearest: torch.Tensor | None = None):
    """The stacked weighted residuals, their Jacobian and the per-term energies at ``params``.

    Forward mode: ``torch.func.jvp`` of the residual function with ``vmap`` over the P unit
    directions (each a (B, P) tangent moving one parameter of every frame at once; the
    frames are independent, so one pass gives every frame's column).

    Args:
        fitter: the :class:`fitting.Fitter`; params: dict of (B, ...) tensors (all of them);
        names: the free parameters (the Jacobian's columns, in :class:`ParameterLayout` order);
        target: the :class:`fitting.FitTarget`; surface_terms, render_settings: as
            :meth:`fitting.Fitter.energy_terms`; nearest: fixed data-point correspondences
            (B, N) long (searched at ``params`` when None and the ``points`` term is on).

    Returns:
        ``(r, J, energies, keys)``: r (B, M), J (B, M, P), energies (B, K) unweighted per term,
        keys the K term names; all on the parameters' device and dtype.
    """
    layout = ParameterLayout(params, names)
    x = layout.flatten(params).detach()
    if nearest is None:
        nearest = _nearest(fitter, params, target)
    keys: list = []
    f = _residual_function(fitter, {k: v.detach() for k, v in params.items()}, layout, target, surface_terms,
                           render_settings, nearest, keys)
    P = layout.size
    basis = torch.eye(P, device=x.device, dtype=x.dtype)[:, None, :].expand(P, x.shape[0], P)
    try:
        with torch.no_grad():
            (r, energies), (J, _) = vmap(lambda v: jvp(f, (x,), (v,)), out_dims=((None, None), (0, 0)))(basis)
    except RuntimeError as err:
        if "functorch" in str(err) or "forward" in str(err).lower():
            raise ValueError(f"optimizer 'lm' needs forward-mode derivatives through the renderer "
                             f"{type(fitter.renderer).__name__}, which has none ({err}); use one of "
                             f"{FORWARD_MODE_RENDERERS} or optimizer 'adam'") from err
        raise
    return r, J.permute(1, 2, 0), energies, keys


def _energy(fitter, params, target, surface, render_settings):
    """(E (B,), per-term energies (B, K)) at ``params``, no autograd."""
    with torch.no_grad():
        terms, _, _ = fitter.residual_terms(params, target, surface, render_settings)
        energies = torch.stack([(v ** 2).sum(-1) for v in terms.values()], dim=1)
        return (fitter.stack_residuals(terms) ** 2).sum(-1), energies


def levenberg_marquardt_stage(fitter, params: dict, names, target, iterations: int,
                              render_settings: dict | None = None, surface_terms: bool = False,
                              stage_name: str = "lm", record=None):
    """Run batched LM on ``names`` of ``params`` (in place) for at most ``iterations`` iterations.

    See the module docstring for the algorithm. ``params`` always holds every frame's best
    state (a step is taken only when it lowers that frame's energy).

    Args:
        fitter: the :class:`fitting.Fitter` (its config's ``rel_tol``; its ``_project`` keeps
            the parameters valid); params: dict of (B, ...) tensors, updated in place;
        names: the free parameters (a subset of :data:`LM_PARAMETERS`); target: the batch;
        iterations: the most LM iterations (one solve and one trial evaluation each);
        render_settings, surface_terms: as :meth:`fitting.Fitter.energy_terms`;
        stage_name: for the history; record: called with each iteration's history record
            (``stage``, ``iteration``, ``total``, ``active``, the unweighted terms, ``lambda``).

    Returns:
        ``(energy (B,), iterations (B,) long, nan_events (B,) long)``.
    """
    layout = ParameterLayout(params, names)

    def linearize(p):
        return residual_jacobian(fitter, p, names, target, surface_terms, render_settings)

    def evaluate(p):
        return _energy(fitter, p, target, surface_terms, render_settings)

    def retract(p, delta):
        x = layout.flatten(p)
        trial = {k: v.clone() for k, v in p.items()}
        trial.update(layout.unflatten(x + delta))
        fitter._project(trial)
        return trial, layout.flatten(trial) - x  # the projected step

    return lm_solve(params, names, layout.size, target.batch_size, iterations, fitter.config.rel_tol,
                    linearize, evaluate, retract, stage_name, record)


def lm_solve(params: dict, names, P: int, B: int, iterations: int, rel_tol: float, linearize, evaluate, retract,
             stage_name: str = "lm", record=None, stop_on_prediction: bool = False, subsets: bool = False):
    """The batched LM loop of :func:`levenberg_marquardt_stage` over any least-squares problem.

    Args:
        params: dict of (B, ...) tensors, updated in place (``names`` of them, per frame, to
            the best state); P: unknowns per frame; B: frames; iterations: the most
            iterations; rel_tol: a step gaining less than this (relative) ends a frame;
        linearize: ``params -> (r (B, M), J (B, M, P), energies (B, K), keys)``;
        evaluate: ``params -> (E (B,), energies (B, K))``;
        retract: ``(params, delta (B, P)) -> (trial params, step (B, P))``, the trial point of
            a step and the step actually taken (after projecting into the valid sets);
        stage_name, record: as :func:`levenberg_marquardt_stage`;
        stop_on_prediction: a frame has also converged when a step is rejected although the
            linear model predicted it to gain less than ``rel_tol`` of the energy (the
            minimum is reached up to what the model can resolve; without this the frame
            spends its budget on rejected steps while the damping grows to :data:`LAMBDA_MAX`).
        subsets: ``linearize`` and ``evaluate`` take a second argument, ``rows``: None (all B
            frames) or a (B',) long tensor of the frames still active, and return their values
            for those rows only (B' leading), so that converged frames cost nothing (as
            :meth:`fitting.Fitter.run`'s Adam stages leave them out). The steps are those of the full
            batch up to floating-point rounding (the callbacks' batched products and searches
            then run on other batch shapes; on SR305 ICP hypotheses the energies agree to about
            1e-4 relative and the fits end alike).

    Returns:
        ``(energy (B,), iterations (B,) long, nan_events (B,) long)``.
    """
    dev, dt = params[names[0]].device, params[names[0]].dtype
    lam = torch.full((B,), LAMBDA_INIT, device=dev, dtype=dt)
    nu = torch.full((B,), 2.0, device=dev, dtype=dt)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    spent = torch.zeros(B, dtype=torch.long, device=dev)
    nan_events = torch.zeros(B, dtype=torch.long, device=dev)
    energy = torch.full((B,), math.inf, device=dev, dtype=dt)
    eye = torch.eye(P, device=dev, dtype=dt)
    need = True
    A = g = D = terms = None

    def rows_of(mask):
        """None (all frames, or subsets off) or the (B',) rows of ``mask``."""
        if not subsets or it == 0 or bool(mask.all()):
            return None
        return mask.nonzero()[:, 0]

    def scatter(full, rows, part):
        """``full`` with the rows ``rows`` replaced by ``part`` (``part`` itself for all rows)."""
        return part if rows is None else full.index_copy(0, rows, part.to(full.dtype))

    for it in range(iterations):
        if not bool(active.any()):
            break
        if need:
            rows = rows_of(active)
            r, J, new_terms, keys = linearize(params, rows) if subsets else linearize(params)
            current = (r ** 2).sum(-1)
            good = torch.isfinite(current) & torch.isfinite(J).flatten(1).all(1)
            r = torch.where(good[:, None], r, torch.zeros_like(r))
            J = torch.where(good[:, None, None], J, torch.zeros_like(J))
            JT = J.transpose(1, 2)
            A_rows = JT @ J
            g_rows = (JT @ r[..., None])[..., 0]
            diag = torch.diagonal(A_rows, dim1=1, dim2=2)
            D_rows = torch.maximum(diag, DIAGONAL_FLOOR * diag.amax(1, keepdim=True).clamp_min(1e-30))
            A, g, D = scatter(A, rows, A_rows), scatter(g, rows, g_rows), scatter(D, rows, D_rows)
            good = scatter(torch.ones_like(active), rows, good)
            current = scatter(energy, rows, current)
            # a frame whose current (best) point turns non-finite keeps its last finite energy
            energy = torch.where(good, current, energy)
            new_terms = scatter(terms, rows, new_terms)
            terms = new_terms if it == 0 else torch.where(good[:, None], new_terms, terms)
            nan_events += (active & ~good).long()
            active &= good
            need = False
        if not bool(active.any()):
            break
        L, info = torch.linalg.cholesky_ex(A + (lam[:, None] * D)[:, :, None] * eye)
        solved = info == 0
        L = torch.where(solved[:, None, None], L, eye.expand(B, P, P))
        delta = torch.cholesky_solve(-g[..., None], L)[..., 0]
        delta = torch.where((active & solved)[:, None], delta, torch.zeros_like(delta))
        trial, step = retract(params, delta)
        rows = rows_of(active)
        new_energy, new_terms = evaluate(trial, rows) if subsets else evaluate(trial)
        # the frames left out read an infinite energy (never accepted) and keep their terms
        new_energy = scatter(torch.full_like(energy, math.inf), rows, new_energy)
        new_terms = scatter(terms, rows, new_terms)
        finite = torch.isfinite(new_energy)
        nan_events += (active & solved & ~finite).long()
        predicted = (step * (lam[:, None] * D * step - g)).sum(-1)
        gain = energy - new_energy
        accept = active & solved & finite & (gain > 0)
        rho = gain / predicted.clamp_min(1e-30)
        shrink = torch.clamp(1.0 - (2.0 * rho - 1.0) ** 3, min=1.0 / 3.0)
        lam = torch.where(accept, lam * shrink, torch.where(active, lam * nu, lam))
        nu = torch.where(accept, torch.full_like(nu, 2.0), torch.where(active, nu * 2.0, nu))
        with torch.no_grad():
            for n in names:
                params[n][accept] = trial[n][accept]
        old = energy
        energy = torch.where(accept, new_energy, energy)
        terms = torch.where(accept[:, None], new_terms, terms)
        evaluated = active.clone()
        spent += evaluated.long()
        converged = (accept & (gain < rel_tol * old)) | (lam > LAMBDA_MAX)
        if stop_on_prediction:
            converged |= active & ~accept & (predicted < rel_tol * old)
        active &= ~converged
        need = bool((accept & active).any())
        if record is not None:
            rec = {"stage": stage_name, "iteration": it, "total": energy.clone(), "active": evaluated,
                   "lambda": lam.clone()}
            rec.update({k: terms[:, i].clone() for i, k in enumerate(keys)})
            record(rec)
    if iterations < 1:
        energy, _ = evaluate(params, None) if subsets else evaluate(params)
    energy = torch.where(torch.isfinite(energy), energy, torch.full_like(energy, math.inf))
    return energy, spent, nan_events
