"""One event's differentiable problem for the joint calibration (`engine.fit.joint`).

Every event computes the same statistics (`stat_slots`: total liquidations, long share,
liquidations and fall per asset, open-interest decline), and its targets pick some of them by
weight, so that the objective is one jitted function of the event's data (`EventData`) and
events with as many assets share its compiled code. The shared values enter through
`apply_values`: market fields where each parameter's asset mask says, the book map
(`engine.fit.book_map`) on the base book, and the shock shifted along the unit schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from engine.config import build
from engine.config.events import Event
from engine.config.observables import Observables, observables
from engine.config.schema import Config
from engine.fit import book_map
from engine.fit.common import (
    differentiable_outputs,
    in_precision,
    relaxed_static,
    sized,
    to_values,
)
from engine.fit.event_setup import (
    DERISK_FIELDS,
    LOG_KINDS,
    JointConfig,
    Target,
    Tolerances,
    coverage,
    event_config,
    event_targets,
    param_slot,
)
from engine.model import params as P
from engine.sim.simulate import precision

# Liquidations (USD) of a path below which its long share counts as 0.
USD_FLOOR = 1e6
# Names in `engine.model.params.MarketParams` of the free market fields that differ.
PARAM_NAMES = {
    "resilience_halflife_steps": "resilience",
    **{f"derisk.{k}": v for k, v in DERISK_FIELDS.items()},
}


def stat_slots(n_assets: int) -> list[tuple[str, int | None]]:
    """The statistics every event computes, in order: total liquidations, the long share,
    liquidations and fall per asset, the open-interest decline. An event's targets pick
    some of them (the rest get weight 0), so events with as many assets share compiled code."""
    per_asset = [(k, a) for k in ("by_asset", "fall") for a in range(n_assets)]
    return [("liquidations", None), ("long_share", None), *per_asset, ("open_interest", None)]


def tolerance_of(kind: str, tol: Tolerances) -> float:
    """The scale of a kind of target in the fit (log units for factors)."""
    return {
        "liquidations": np.log(tol.liquidations_factor),
        "long_share": tol.long_share,
        "by_asset": np.log(tol.by_asset_factor),
        "fall": tol.fall,
        "open_interest": tol.open_interest,
    }[kind]


class Layout(NamedTuple):
    """The shared free parameters: `slots` (group, field, asset) and bounds `[n_shared]`."""

    paths: tuple[str, ...]
    slots: tuple[tuple[str, str, str | None], ...]
    lower: np.ndarray
    upper: np.ndarray

    @property
    def fields(self) -> tuple[tuple[str, str], ...]:
        """(group, field) of each slot: what the compiled objective needs to know."""
        return tuple((g, f) for g, f, _ in self.slots)


def layout(jc: JointConfig) -> Layout:
    assets = list(jc.scenario.market.assets)
    return Layout(
        paths=tuple(p.path for p in jc.params),
        slots=tuple(param_slot(p.path, assets, p.path) for p in jc.params),
        lower=np.array([p.lower for p in jc.params]),
        upper=np.array([p.upper for p in jc.params]),
    )


class EventData(NamedTuple):
    """An event's traced inputs (a pytree): base parameters, the schedule of a unit shock
    `[steps, assets]` and the scenario's shock, observables, open interest `[assets]` USD,
    coverage, targets in the fit's units (`goal` the central value, `low` and `high` the
    reported range) and their `tolerance` `[n_stats]`, which assets
    each shared parameter sets (`masks` `[n_shared, assets]`, 1 or 0), the map's fixed values
    and the entry grid's width."""

    base: P.Params
    unit_shock: jnp.ndarray
    shock0: jnp.ndarray
    obs: Observables
    oi: jnp.ndarray
    coverage: jnp.ndarray
    goal: jnp.ndarray
    low: jnp.ndarray
    high: jnp.ndarray
    tolerance: jnp.ndarray
    masks: jnp.ndarray
    fixed_map: dict
    grid_std: jnp.ndarray


@dataclass(frozen=True)
class EventProblem:
    """One event: its scenario, relaxed static settings, traced data, targets (with their
    index in `stat_slots`), each statistic's weight (0 where the event reports nothing) and
    the observables the event does not report."""

    name: str
    event: Event
    cfg: Config
    static: P.Static
    data: EventData
    targets: tuple[Target, ...]
    index: tuple[int, ...]
    weight: np.ndarray
    missing: tuple[str, ...]

    def objective(self, lay: Layout, n_paths: int, bounds) -> Callable:
        """`(u_shared, u_shock, key, weight) -> ((loss, statistics), (grad_shared, grad_shock))`."""
        fn = partial(_value_and_grad, static=self.static, n_paths=n_paths, fields=lay.fields)
        return in_precision(self.cfg.run.dtype, lambda u, us, key, w: fn(u, us, key, w, self.data, bounds))


def apply_values(data: EventData, fields, values, shock) -> P.Params:
    """The event's parameters with the shared `values` `[n_shared]` and its `shock` put in
    (differentiable): market fields set where the masks say, the book reweighted by the map,
    the shock shifted."""
    p = data.base
    mp = p.market
    m = dict(data.fixed_map)
    for k, ((group, field), v) in enumerate(zip(fields, values)):
        if group == "book_map":
            m[field] = v
            continue
        name = PARAM_NAMES.get(field, field)
        v = 0.5 ** (1.0 / v) if field == "resilience_halflife_steps" else v
        cur = getattr(mp, name)
        mp = mp._replace(**{name: cur + data.masks[k] * (v - cur)})
    book = book_map.apply(p.book, mp.price0, data.oi, data.obs, m, data.grid_std)
    sched = p.schedule._replace(shock=p.schedule.shock + (shock - data.shock0) * data.unit_shock)
    return p._replace(market=mp, book=book, schedule=sched)


def path_statistics(out: dict, data: EventData, oi) -> jnp.ndarray:
    """Every statistic of `stat_slots` per path `[paths, n_stats]` from per-path outputs:
    liquidations in total (times the coverage, USD), the long share of the total (0 on a path
    that liquidates less than USD_FLOOR), liquidations per asset (USD), each asset's fall (max
    drawdown, fraction) and the open-interest decline weighted by `oi` `[assets]` USD."""
    total = data.coverage * out["liquidated_total"]
    notional = out["liquidated_notional"]
    long = data.coverage * jnp.sum(notional[:, :, 0], -1)
    return jnp.concatenate(
        [
            jnp.stack([total, long / jnp.maximum(total, USD_FLOOR)], -1),
            jnp.sum(notional, -1),
            out["max_drawdown"],
            (out["open_interest_decline"] @ (oi / jnp.sum(oi)))[:, None],
        ],
        -1,
    )


def statistics(out: dict, data: EventData, oi) -> jnp.ndarray:
    """The medians over paths `[n_stats]` of `path_statistics`: the statistic the backtest
    predicts, so that the fit and the prediction aim at the same thing. With common random
    numbers the median of the relaxed kernel's smooth per-path outputs is a continuous,
    piecewise smooth function of the parameters, differentiable through its middle paths."""
    return jnp.median(path_statistics(out, data, oi), 0)


def in_fit_units(x, n_assets: int):
    """Statistics `[n_stats]` in the fit's units: log for liquidations, as is otherwise."""
    is_log = np.array([k in LOG_KINDS for k, _ in stat_slots(n_assets)])
    return jnp.where(is_log, jnp.log(jnp.maximum(x, 1.0)), x)


def residuals(values, shock, key, data: EventData, *, static, n_paths, fields, interval=True):
    """Scaled errors `[n_stats]` in the fit's units over the tolerance, and the statistics.
    The error is the distance to the reported range (0 inside it: the backtest counts a
    prediction inside the range as exact), or with `interval` False to the central value."""
    prm = apply_values(data, fields, values, shock)
    out = differentiable_outputs(prm, static, key, n_paths)
    st = statistics(out, data, prm.book.quantity.sum(-1) * prm.market.price0)
    x = in_fit_units(st, static.n_assets)
    err = jnp.maximum(x - data.high, 0.0) - jnp.maximum(data.low - x, 0.0) if interval else x - data.goal
    return err / data.tolerance, st


@partial(jax.jit, static_argnames=("static", "n_paths", "fields"))
def _value_and_grad(u_shared, u_shock, key, weight, data: EventData, bounds, *, static, n_paths, fields):
    lower, upper, s_lower, s_upper = bounds

    def loss(u, us):
        dtype = data.oi.dtype
        values = to_values(u, lower, upper).astype(dtype)
        shock = to_values(us, s_lower, s_upper).astype(dtype)
        r, st = residuals(values, shock, key, data, static=static, n_paths=n_paths, fields=fields)
        return jnp.sum(weight * r**2), st

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(u_shared, u_shock)


def make_problem(jc: JointConfig, name: str, event: Event, lay: Layout) -> EventProblem:
    """One event's fixed parts."""
    s = jc.calibration
    cfg = sized(event_config(jc.scenario, event, name), s.n_paths, s.steps)
    assets = cfg.asset_names
    slots = stat_slots(len(assets))
    targets = tuple(event_targets(event, assets))
    index = tuple(slots.index((t.kind, t.asset)) for t in targets)
    goal, low, high, weight = (np.zeros(len(slots)) for _ in range(4))
    for t, i in zip(targets, index):
        unit = np.log if t.kind in LOG_KINDS else float
        goal[i], low[i], high[i] = unit(t.value), unit(t.low), unit(t.high)
    weight[list(index)] = [getattr(jc.weights, t.kind) for t in targets]
    obs, missing = observables(event, assets)
    masks = np.array([[1.0 if a is None or a == x else 0.0 for x in assets] for _, _, a in lay.slots])
    with precision(cfg.run.dtype):
        params, static = build.build(cfg)
        dtype = params.market.price0.dtype
        unit_cfg = cfg.model_copy(
            update={"scenario": cfg.scenario.model_copy(update={"shock": 1.0, "shocks": (), "flows": ()})}
        )
        arr = lambda x: jnp.asarray(x, dtype)
        data = EventData(
            base=params._replace(temperature=arr(s.temperature)),
            unit_shock=build.build_schedule(unit_cfg).shock.astype(dtype),
            shock0=arr(cfg.scenario.shock),
            obs=Observables(*(arr(x) for x in obs)),
            oi=arr([a.open_interest_usd for a in cfg.market.assets.values()]),
            coverage=arr(coverage(event)),
            goal=arr(goal),
            low=arr(low),
            high=arr(high),
            tolerance=arr([tolerance_of(k, jc.tolerances) for k, _ in slots]),
            masks=arr(masks.reshape(len(lay.slots), len(assets))),
            fixed_map={k: arr(v) for k, v in jc.book_map.model_dump().items()},
            grid_std=arr(cfg.book.entry_log_std),
        )
    # fitting a closing rate from 0 needs the step's closing on (`Static.derisk`)
    static = dataclasses.replace(
        static, derisk=static.derisk or any(f.startswith("derisk.") for _, f in lay.fields)
    )
    return EventProblem(name, event, cfg, relaxed_static(static), data, targets, index, weight, missing)


def bounds_of(jc: JointConfig) -> tuple:
    """(lower, upper, shock lower, shock upper) of the free values."""
    lay = layout(jc)
    return (
        jnp.asarray(lay.lower),
        jnp.asarray(lay.upper),
        jnp.asarray(jc.shock.lower),
        jnp.asarray(jc.shock.upper),
    )


def problems(jc: JointConfig, events: dict[str, Event]) -> dict[str, EventProblem]:
    """Every event's problem (its objective compiles on first use, once per shape)."""
    lay = layout(jc)
    return {name: make_problem(jc, name, ev, lay) for name, ev in events.items()}
