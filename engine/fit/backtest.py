"""Leave-one-event-out validation (`liqstress backtest`): fit on all events but one, then
predict the one left out from its pre-event state and its observed price move.

For each held-out event:

1. the joint calibration (`engine.fit.joint`) fits the shared parameters and the other
   events' shocks, one fit per seed; the fold's values are the means over converged seeds;
2. the held-out event's shock is fitted to its observed falls alone (its `fall` targets),
   the shared values held fixed, so that the exact kernel's median fall of each asset is the
   observed one (`held_out_shock`): the price move is an input, not a prediction;
3. the exact kernel runs `backtest.n_paths` fresh paths of the held-out event with those
   values; the prediction of each target is the median over paths and a central band.

The goals (`Tolerances`): total liquidations within a factor, the long share within a
difference, per-asset liquidations within a factor. A reported range counts as met when the
median lies in it; outside it the factor (or difference) is to the nearer end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize_scalar

from engine.config.events import Event
from engine.fit.common import differentiable_outputs
from engine.fit.event_problem import EventProblem, apply_values, layout, path_statistics, problems
from engine.fit.event_setup import LOG_KINDS, JointConfig, Target
from engine.fit.joint import JointFit, assess_joint, calibrate_joint
from engine.model.kernel import word64
from engine.sim.simulate import precision


def held_out_shock(jc: JointConfig, pr: EventProblem, values) -> float:
    """The event's shock, the shared `values` fixed, that brings the exact kernel's median
    fall of each asset with an observed fall closest to it (least squares in units of the fall
    tolerance; bounded Brent search over `[shock]`'s bounds on the prediction's own paths).
    The shock's starting value if the event reports no fall."""
    falls = [i for i, t in enumerate(pr.targets) if t.kind == "fall"]
    if not falls:
        return jc.shock.init
    observed = np.array([pr.targets[i].value for i in falls])

    def loss(shock: float) -> float:
        median = np.median(simulate_exact(jc, pr, values, shock)[:, falls], 0)
        return float(np.sum(((median - observed) / jc.tolerances.fall) ** 2))

    res = minimize_scalar(
        loss, bounds=(jc.shock.lower, jc.shock.upper), method="bounded", options={"xatol": 1e-4}
    )
    return float(res.x)


def simulate_exact(jc: JointConfig, pr: EventProblem, values, shock: float) -> np.ndarray:
    """Per-path statistics `[paths, n_targets]` of the exact kernel on `backtest.n_paths`
    fresh paths (seed `backtest.seed`) of the event with the shared `values` and `shock`."""
    with precision(pr.cfg.run.dtype):
        dtype = pr.data.oi.dtype
        out, oi = _exact(
            jnp.asarray(values, dtype),
            jnp.asarray(shock, dtype),
            word64(jc.backtest.seed),
            pr.data,
            static=dataclasses.replace(pr.static, relaxed=False),
            n_paths=jc.backtest.n_paths,
            fields=layout(jc).fields,
        )
    return np.asarray(path_statistics(out, pr.data, oi), float)[:, list(pr.index)]


@partial(jax.jit, static_argnames=("static", "n_paths", "fields"))
def _exact(values, shock, key, data, *, static, n_paths, fields):
    prm = apply_values(data, fields, values, shock)
    return differentiable_outputs(prm, static, key, n_paths), prm.book.quantity.sum(-1) * prm.market.price0


@dataclass
class TargetResult:
    """One target of a held-out event: reported range and value, predicted median and band,
    the miss (a factor for factor goals, an absolute difference otherwise; 1 or 0 inside the
    reported range), the goal and whether it was met (None: no goal for this kind)."""

    target: Target
    median: float
    low: float
    high: float
    miss: float
    goal: float | None
    met: bool | None


def miss_of(t: Target, median: float, factor: bool) -> float:
    """How far `median` lies from the reported range: a factor (>= 1) or a difference (>= 0)."""
    if t.low <= median <= t.high:
        return 1.0 if factor else 0.0
    if factor:
        m = max(median, 1e-300)
        return max(t.low / m, m / max(t.high, 1e-300))
    return min(abs(median - t.low), abs(median - t.high))


def judge(jc: JointConfig, targets, stats: np.ndarray) -> list[TargetResult]:
    """Medians, bands and goals of every target from per-path statistics `[paths, n]`."""
    tail = (1.0 - jc.backtest.band) / 2.0
    tol = jc.tolerances
    goals = {
        "liquidations": tol.liquidations_factor,
        "long_share": tol.long_share,
        "by_asset": tol.by_asset_factor,
    }
    res = []
    for i, t in enumerate(targets):
        col = stats[:, i]
        lo, med, hi = (float(x) for x in np.quantile(col, [tail, 0.5, 1.0 - tail]))
        miss = miss_of(t, med, t.kind in LOG_KINDS)
        goal = goals.get(t.kind)
        res.append(TargetResult(t, med, lo, hi, miss, goal, None if goal is None else miss <= goal))
    return res


@dataclass
class Fold:
    """One held-out event: the fold's joint fits, the shared values (means over converged
    seeds) and their sd, the held-out shock, and each target's result."""

    event: str
    fits: list[JointFit]
    values: np.ndarray
    spread: np.ndarray
    shock: float
    results: list[TargetResult]


def backtest(
    jc: JointConfig,
    events: dict[str, Event],
    probs: dict[str, EventProblem] | None = None,
    log: Callable[[str], None] = lambda line: None,
    only: list[str] | None = None,
) -> list[Fold]:
    """Leave-one-event-out over `events` (or only the held-out events named in `only`);
    `probs` as from `engine.fit.event_problem.problems`, built here if not given."""
    probs = probs if probs is not None else problems(jc, events)
    seeds = jc.backtest.seeds or jc.calibration.seeds
    fold_config = jc.model_copy(update={"calibration": jc.calibration.model_copy(update={"seeds": seeds})})
    folds = []
    for name in only or list(events):
        rest = {k: v for k, v in events.items() if k != name}
        log(f"{name}: fitting on {', '.join(rest)}")
        fits = calibrate_joint(fold_config, rest, probs, log=lambda line, name=name: log(f"  {line}"))
        a = assess_joint(fits)
        shock = held_out_shock(jc, probs[name], a.values)
        log(f"{name}: held-out shock {shock:.4f}; predicting on {jc.backtest.n_paths} exact paths")
        stats = simulate_exact(jc, probs[name], a.values, shock)
        folds.append(Fold(name, fits, a.values, a.spread, shock, judge(jc, probs[name].targets, stats)))
    return folds
