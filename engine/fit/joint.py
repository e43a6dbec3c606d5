"""Joint calibration over several events of the library (`engine/events/`).

The structural parameters (impact, depth withdrawal, resilience, the book map's parameters,
`engine.fit.book_map`) are shared by all events; only the headline shock is per event. Each
event's scenario is the template scenario (`scenario`: market dynamics, the base book's grid,
the exchange and its policy) with the event's assets, prices and open interest
(`event_config`), and its book is the template's base book reweighted by the map from the
event's observables. Its targets are the event's reported outcomes (`event_targets`):
liquidations in total and per asset (in log, so a factor is what counts), the long share,
each asset's fall (the observed price path) and the open-interest decline.

The loss is the sum over events of

    sum_i weight_i * ((T(statistic_i) - T(target_i)) / tolerance_i)^2,   T = log or identity,

each statistic a mean over the same paths of the relaxed kernel (common random numbers across
iterations, as `engine.fit.calibrate`), minimised with Adam (`engine.fit.common.descend`) once
per seed. The spread over seeds is one measure of uncertainty; `curvature` gives another,
the Gauss-Newton covariance of the fitted values with each target's tolerance as its standard
deviation, and from it the parameters' correlations.

Reported liquidations cover every coin, the simulation the modelled assets only: the simulated
total is scaled by the event's coverage, aggregate open interest over the modelled assets' (1
when the event has no aggregate figure). Per-asset targets are not scaled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from engine.config.errors import SimulationError
from engine.config.events import Event
from engine.fit.calibrate import NOT_CONVERGED_RATIO, FreeParam, logged_progress
from engine.fit.common import (
    descend,
    to_unconstrained,
    to_values,
)
from engine.fit.event_problem import EventProblem, bounds_of, layout, problems, residuals
from engine.fit.event_setup import JointConfig, param_slot
from engine.model.kernel import word64
from engine.sim.simulate import precision


@dataclass
class JointFit:
    """One seed's joint fit at its best iterate: shared `values` `[n_shared]`, `shocks` per
    event, `statistics` per event (one per target), its `loss` and `losses` per iteration."""

    seed: int
    values: np.ndarray
    shocks: dict[str, float]
    statistics: dict[str, np.ndarray]
    losses: list[float]
    loss: float


def fit_joint(
    jc: JointConfig,
    probs: dict[str, EventProblem],
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> JointFit:
    """Fit the shared parameters and the events' shocks on the paths of one seed."""
    lay, s, sb = layout(jc), jc.calibration, jc.shock
    names = list(probs)
    n = len(lay.paths)
    init = np.array([starting_value(jc, p) for p in jc.params])
    u0 = np.concatenate(
        [
            to_unconstrained(init, lay.lower, lay.upper),
            np.full(len(names), to_unconstrained(sb.init, sb.lower, sb.upper)),
        ]
    )
    key = word64(seed)
    objectives = {name: pr.objective(lay, s.n_paths, bounds_of(jc)) for name, pr in probs.items()}

    def value_and_grad(u):
        total, grad, stats = 0.0, jnp.zeros_like(u), {}
        for k, name in enumerate(names):
            pr = probs[name]
            (loss, st), (g_shared, g_shock) = objectives[name](u[:n], u[n + k], key, pr.weight)
            total = total + loss
            grad = grad.at[:n].add(g_shared.astype(u.dtype)).at[n + k].set(g_shock.astype(u.dtype))
            stats[name] = st[np.array(pr.index)]
        return (total, stats), grad

    d = descend(
        value_and_grad,
        jnp.asarray(u0, jnp.float32),
        iterations=s.iterations,
        learning_rate=s.learning_rate,
        clip_norm=s.clip_norm,
        on_step=(lambda i, u, loss, st: progress(i, loss)) if progress else None,
        score_end=True,
    )
    if d.best_aux is None:
        raise SimulationError(
            f"seed {seed}: the joint loss is not finite at the starting values; check the events' figures"
        )
    best = np.asarray(d.best_u, float)
    return JointFit(
        seed=seed,
        values=np.asarray(to_values(best[:n], lay.lower, lay.upper)),
        shocks={nm: float(to_values(best[n + k], sb.lower, sb.upper)) for k, nm in enumerate(names)},
        statistics={nm: np.asarray(v, float) for nm, v in d.best_aux.items()},
        losses=d.losses,
        loss=d.best_loss,
    )


def starting_value(jc: JointConfig, p: FreeParam) -> float:
    """`init`, else the map's configured value or the template's (mean over assets), else the
    middle of the bounds when that lies outside them."""
    if p.init is not None:
        return p.init
    group, field, asset = param_slot(p.path, list(jc.scenario.market.assets), p.path)
    if group == "book_map":
        v = getattr(jc.book_map, field)
    elif field.startswith("derisk."):
        v = getattr(jc.scenario.market.derisk, field.removeprefix("derisk."))
    else:
        assets = jc.scenario.market.assets
        v = float(np.mean([getattr(assets[a], field) for a in ([asset] if asset else list(assets))]))
    return v if p.lower < v < p.upper else 0.5 * (p.lower + p.upper)


def calibrate_joint(
    jc: JointConfig,
    events: dict[str, Event],
    probs: dict[str, EventProblem] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[JointFit]:
    """One joint fit per seed of `calibration.seeds` over `events`."""
    probs = probs if probs is not None else problems(jc, events)
    probs = {name: probs[name] for name in events}
    progress = logged_progress(jc, log) if log else None
    return [
        fit_joint(jc, probs, seed, (lambda i, loss, k=k: progress(k, i, loss)) if progress else None)
        for k, seed in enumerate(jc.calibration.seeds)
    ]


@dataclass
class JointAssessment:
    """Converged seeds (best loss at most NOT_CONVERGED_RATIO x the median) and the means
    and sds (ddof 1; 0 for one seed) over them of the shared values and the shocks, and each
    event's statistics (one per target) averaged over them."""

    converged: np.ndarray
    values: np.ndarray
    spread: np.ndarray
    shocks: dict[str, float]
    shock_spread: dict[str, float]
    statistics: dict[str, np.ndarray]


def assess_joint(fits: list[JointFit]) -> JointAssessment:
    """Which seeds converged, and the means and spreads over them (`JointAssessment`)."""
    loss = np.array([f.loss for f in fits])
    ok = loss <= NOT_CONVERGED_RATIO * np.median(loss)
    good = [f for f, k in zip(fits, ok) if k]
    vals = np.stack([f.values for f in good])

    def sd(x):
        return x.std(0, ddof=1) if len(x) > 1 else np.zeros(np.shape(x)[1:])

    names = list(good[0].shocks)
    shocks = np.array([[f.shocks[n] for n in names] for f in good])
    return JointAssessment(
        converged=ok,
        values=vals.mean(0),
        spread=sd(vals),
        shocks=dict(zip(names, shocks.mean(0).tolist())),
        shock_spread=dict(zip(names, np.atleast_1d(sd(shocks)).tolist())),
        statistics={n: np.mean([f.statistics[n] for f in good], 0) for n in names},
    )


def curvature(jc: JointConfig, probs: dict[str, EventProblem], values, shocks: dict[str, float], seed: int):
    """Gauss-Newton covariance of the fitted values `values` `[n_shared]` and `shocks` (one per
    event) with each target's tolerance over the square root of its weight as its standard
    deviation, from J the Jacobian of the weighted, scaled errors to the central values on the
    paths of `seed` (`covariance`). Returns (standard errors `[n]`, correlations `[n, n]`), in
    the order shared values, then shocks."""
    lay = layout(jc)
    names = list(probs)
    n = len(values)
    blocks = []
    for k, name in enumerate(names):
        pr = probs[name]
        fn = partial(
            residuals, static=pr.static, n_paths=jc.calibration.n_paths, fields=lay.fields, interval=False
        )

        def scaled(x, pr=pr, fn=fn):
            r, _ = fn(x[:n], x[n], word64(seed), pr.data)
            return jnp.sqrt(jnp.asarray(pr.weight, r.dtype)) * r

        with precision(pr.cfg.run.dtype):
            x = jnp.asarray(np.append(values, shocks[name]), pr.data.oi.dtype)
            jac = np.asarray(jax.jit(jax.jacfwd(scaled))(x), float)[np.array(pr.index)]
        full = np.zeros((jac.shape[0], n + len(names)))
        full[:, :n], full[:, n + k] = jac[:, :n], jac[:, n]
        blocks.append(full)
    return covariance(np.concatenate(blocks))


# Eigenvalues of J^T J below this fraction of the largest count as directions the targets do
# not identify.
UNIDENTIFIED = 1e-10


def covariance(j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(standard errors `[n]`, correlations `[n, n]`) of the Gauss-Newton covariance (J^T J)^-1
    of the Jacobian `j` `[residuals, n]`. A value with a share above 0.1 in a direction of
    J^T J's null space (eigenvalue below UNIDENTIFIED of the largest) is not identified by the
    targets: its error is infinite and its correlations NaN."""
    w, v = np.linalg.eigh(j.T @ j)
    null = w <= UNIDENTIFIED * max(w.max(), 1e-300)
    keep = v[:, ~null]
    cov = (keep / w[~null]) @ keep.T
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    corr = cov / np.maximum(np.outer(se, se), 1e-300)
    lost = np.abs(v[:, null]).max(1) > 0.1 if null.any() else np.zeros(len(w), bool)
    se[lost] = np.inf
    corr[lost, :] = np.nan
    corr[:, lost] = np.nan
    return se, corr
