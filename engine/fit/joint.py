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
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field, model_validator

from engine.config import build
from engine.config.errors import ConfigError
from engine.config.events import Event, library, load_event
from engine.config.schema import Config
from engine.config.strict import Strict
from engine.fit import book_map
from engine.fit.book_map import BookMap
from engine.fit.calibrate import CalibrationSettings, FreeParam
from engine.fit.common import (
    descend,
    differentiable_outputs,
    in_precision,
    load_fit_config,
    relaxed_static,
    sized,
    to_unconstrained,
    to_values,
)
from engine.model import params as P
from engine.model.kernel import word64
from engine.sim.simulate import precision

MARKET_FIELDS = ("impact_y", "depth_kappa", "resilience_halflife_steps")
TARGET_KINDS = ("liquidations", "long_share", "by_asset", "fall", "open_interest")
LOG_KINDS = ("liquidations", "by_asset")
NOT_CONVERGED_RATIO = 1.5


class ShockBounds(Strict):
    """Bounds and start of every event's headline shock (log return, `scenario.shock`)."""

    lower: float = Field(default=-0.5, ge=-2, lt=0)
    upper: float = Field(default=-0.001, lt=0)
    init: float = Field(default=-0.05, lt=0)

    @model_validator(mode="after")
    def _order(self) -> ShockBounds:
        if not self.lower < self.init < self.upper:
            raise ValueError(f"need lower < init < upper (got {self.lower}, {self.init}, {self.upper})")
        return self


class Tolerances(Strict):
    """Each target's tolerance in the fit, and the goal a held-out prediction must meet
    (`engine.fit.backtest`): liquidations within a factor, the long share within a difference,
    per-asset liquidations within a factor, each asset's fall and the open-interest decline
    within a difference (fractions)."""

    liquidations_factor: float = Field(default=1.5, gt=1, le=100)
    long_share: float = Field(default=0.1, gt=0, le=1)
    by_asset_factor: float = Field(default=2.0, gt=1, le=100)
    fall: float = Field(default=0.03, gt=0, le=1)
    open_interest: float = Field(default=0.15, gt=0, le=1)


class Weights(Strict):
    """Weight of each kind of target in the loss (0 leaves it out)."""

    liquidations: float = Field(default=1.0, ge=0)
    long_share: float = Field(default=1.0, ge=0)
    by_asset: float = Field(default=0.5, ge=0)
    fall: float = Field(default=1.0, ge=0)
    open_interest: float = Field(default=0.25, ge=0)


class BacktestSettings(Strict):
    """`liqstress backtest`: exact-kernel paths per held-out prediction, their seed (fresh:
    not one of the fit's), the iterations of the held-out shock's fit, the band (central
    probability) reported around the median."""

    n_paths: Annotated[int, Field(ge=8, le=1_000_000)] = 512
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 7
    shock_iterations: Annotated[int, Field(ge=1, le=10_000)] = 40
    band: Annotated[float, Field(gt=0, lt=1)] = 0.9


class JointConfig(Strict):
    """A joint calibration: the template `scenario`, the `events` (names in the library or
    event files relative to this one), the shared free `[[params]]` (`market.<field>`,
    `market.assets.<ASSET>.<field>` with field in MARKET_FIELDS, or `book_map.<field>`), the
    per-event `[shock]`, the map's fixed values `[book_map]`, `[tolerances]`, `[weights]`, and
    the `[backtest]` settings."""

    kind: Literal["joint_calibration"]
    scenario: Config
    events: tuple[str, ...] = Field(min_length=2)
    calibration: CalibrationSettings = CalibrationSettings()
    params: tuple[FreeParam, ...]
    shock: ShockBounds = ShockBounds()
    book_map: BookMap = BookMap()
    tolerances: Tolerances = Tolerances()
    weights: Weights = Weights()
    backtest: BacktestSettings = BacktestSettings()

    @model_validator(mode="after")
    def _check(self) -> JointConfig:
        if not self.params:
            raise ValueError("params: give at least one free parameter")
        for i, p in enumerate(self.params):
            param_slot(p.path, list(self.scenario.market.assets), f"params.{i}.path")
        if len(set(self.events)) != len(self.events):
            raise ValueError("events: an event is named twice")
        book = self.scenario.book
        if book.positions or book.liquidation_map:
            raise ValueError(
                "scenario.book: the joint calibration builds the book from each event; allowed: the parametric book"
            )
        if book.entry_log_mean != 0.0:
            raise ValueError(
                f"scenario.book.entry_log_mean: must be 0 (the book map places the entries; got {book.entry_log_mean})"
            )
        if self.scenario.policy.partial_liquidation != 1.0:
            raise ValueError(
                "scenario.policy.partial_liquidation must be 1 (the relaxed kernel liquidates fully)"
            )
        return self


def param_slot(path: str, assets: list[str], where: str) -> tuple[str, str, str | None]:
    """(group, field, asset or None) of a free parameter's path; ValueError if unknown."""
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "book_map" and parts[1] in book_map.FIELDS:
        return "book_map", parts[1], None
    if len(parts) == 2 and parts[0] == "market" and parts[1] in MARKET_FIELDS:
        return "market", parts[1], None
    if len(parts) == 4 and parts[:2] == ["market", "assets"] and parts[3] in MARKET_FIELDS:
        if parts[2] not in assets:
            raise ValueError(f"{where}: unknown asset {parts[2]!r}; the template's assets are {assets}")
        return "market", parts[3], parts[2]
    allowed = [f"book_map.{f}" for f in book_map.FIELDS] + [
        f"market[.assets.<ASSET>].{f}" for f in MARKET_FIELDS
    ]
    raise ValueError(f"{where}: unknown free parameter {path!r}; allowed: {allowed}")


def load_joint(path: str | Path) -> tuple[JointConfig, dict[str, Event]]:
    """A validated joint calibration and its events by name (library events by their name,
    files by their stem); ConfigError naming the file and the field if not."""
    jc, p = load_fit_config(path, JointConfig)
    shipped = None
    events = {}
    for name in jc.events:
        f = p.parent / name
        if name.endswith(".toml") or f.is_file():
            events[Path(name).stem] = load_event(f)
            continue
        shipped = shipped if shipped is not None else library()
        if name not in shipped:
            raise ConfigError(
                f"{p}: events: unknown event {name!r}; the library has {list(shipped)} (or give a file)"
            )
        events[name] = shipped[name]
    for name, ev in events.items():
        event_config(jc.scenario, ev, name)  # every event must make a scenario
    return jc, events


# ----------------------------------------------------------------------------------------
# One event's scenario and targets
# ----------------------------------------------------------------------------------------


def simulated_assets(event: Event) -> list[str]:
    """The event's assets with a price and an open interest: those the simulation holds."""
    return [
        a
        for a, x in event.pre_event.assets.items()
        if x.price is not None and x.open_interest_usd is not None
    ]


def event_config(template: Config, event: Event, name: str) -> Config:
    """The template scenario with the event's assets, prices and open interest. An asset's
    daily volume is the event's figure, else the template's scaled by the ratio of open
    interests (the same turnover). Correlations are the template's for those assets."""
    assets = simulated_assets(event)
    if not assets:
        raise ConfigError(
            f"event {name}: pre_event.assets: no asset has both a price and an open_interest_usd"
        )
    known = list(template.market.assets)
    for a in assets:
        if a not in known:
            raise ConfigError(
                f"event {name}: pre_event.assets.{a}: not an asset of the template; allowed: {known}"
            )
    data = template.model_dump(mode="json")
    out = {}
    for a in assets:
        t, pre = data["market"]["assets"][a], event.pre_event.assets[a]
        oi = pre.open_interest_usd.central
        volume = (
            pre.daily_volume_usd.central
            if pre.daily_volume_usd is not None
            else t["daily_volume_usd"] * oi / max(t["open_interest_usd"], 1.0)
        )
        out[a] = {**t, "price": pre.price.central, "open_interest_usd": oi, "daily_volume_usd": volume}
    data["market"]["assets"] = out
    corr = template.market.correlation
    if corr is not None:
        idx = [known.index(a) for a in assets]
        data["market"]["correlation"] = [[corr[i][j] for j in idx] for i in idx]
    data["name"], data["description"] = name, event.description
    try:
        return Config.model_validate(data)
    except ValueError as e:
        raise ConfigError(
            f"event {name}: the template with its figures is not a valid scenario: {e}"
        ) from None


def coverage(event: Event) -> float:
    """Aggregate open interest over the simulated assets' (at least 1; 1 without a figure)."""
    agg = event.pre_event.aggregate_open_interest_usd
    modelled = sum(event.pre_event.assets[a].open_interest_usd.central for a in simulated_assets(event))
    return max(1.0, agg.central / modelled) if agg is not None and modelled > 0 else 1.0


class Target(NamedTuple):
    """One reported outcome of an event: `kind` in TARGET_KINDS, the asset's index for
    `by_asset` and `fall`, the reported range (low = high for a value) and its central value."""

    kind: str
    asset: int | None
    label: str
    value: float
    low: float
    high: float


def event_targets(event: Event, assets: list[str]) -> list[Target]:
    """The event's reported outcomes that the simulation can be held against."""
    o = event.outcomes

    def target(kind, asset, label, fig, sign=1.0):
        lo, hi = (fig.low, fig.high) if fig.low is not None else (fig.value, fig.value)
        lo, hi = sorted((sign * lo, sign * hi))
        return Target(kind, asset, label, sign * fig.central, lo, hi)

    out = [target("liquidations", None, "liquidations_usd", o.liquidations_usd)]
    if o.long_share is not None:
        out.append(target("long_share", None, "long_share", o.long_share))
    for a, fig in o.by_asset_usd.items():
        if a in assets:
            out.append(target("by_asset", assets.index(a), f"liquidations_usd.{a}", fig))
    for a, move in event.price_path.items():
        if a not in assets:
            continue
        if move.fall is not None:
            out.append(target("fall", assets.index(a), f"fall.{a}", move.fall))
        elif move.peak is not None and move.trough is not None:
            fall = 1.0 - move.trough.central / move.peak.central
            out.append(Target("fall", assets.index(a), f"fall.{a}", fall, fall, fall))
    if o.open_interest_change is not None:
        out.append(target("open_interest", None, "open_interest_decline", o.open_interest_change, -1.0))
    return out


# ----------------------------------------------------------------------------------------
# The differentiable problem of one event
# ----------------------------------------------------------------------------------------


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
    coverage, targets in the fit's units `goal` and their `tolerance` `[n_stats]`, which assets
    each shared parameter sets (`masks` `[n_shared, assets]`, 1 or 0), the map's fixed values
    and the entry grid's width."""

    base: P.Params
    unit_shock: jnp.ndarray
    shock0: jnp.ndarray
    obs: book_map.Observables
    oi: jnp.ndarray
    coverage: jnp.ndarray
    goal: jnp.ndarray
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
        name = "resilience" if field == "resilience_halflife_steps" else field
        v = 0.5 ** (1.0 / v) if field == "resilience_halflife_steps" else v
        cur = getattr(mp, name)
        mp = mp._replace(**{name: cur + data.masks[k] * (v - cur)})
    book = book_map.apply(p.book, mp.price0, data.oi, data.obs, m, data.grid_std)
    sched = p.schedule._replace(shock=p.schedule.shock + (shock - data.shock0) * data.unit_shock)
    return p._replace(market=mp, book=book, schedule=sched)


def statistics(out: dict, data: EventData, oi) -> jnp.ndarray:
    """Every statistic of `stat_slots` `[n_stats]` from per-path outputs (means over paths)."""
    total = jnp.mean(out["liquidated_total"])
    notional = jnp.mean(out["liquidated_notional"], 0)
    return jnp.concatenate(
        [
            jnp.stack([data.coverage * total, jnp.sum(notional[:, 0]) / jnp.maximum(total, 1e-30)]),
            jnp.sum(notional, -1),
            jnp.mean(out["max_drawdown"], 0),
            jnp.mean(out["open_interest_decline"] @ (oi / jnp.sum(oi)))[None],
        ]
    )


def in_fit_units(x, n_assets: int):
    """Statistics `[n_stats]` in the fit's units: log for liquidations, as is otherwise."""
    is_log = np.array([k in LOG_KINDS for k, _ in stat_slots(n_assets)])
    return jnp.where(is_log, jnp.log(jnp.maximum(x, 1.0)), x)


def residuals(values, shock, key, data: EventData, *, static, n_paths, fields):
    """Scaled errors `[n_stats]` (statistic - target) / tolerance in the fit's units, and the
    statistics."""
    prm = apply_values(data, fields, values, shock)
    out = differentiable_outputs(prm, static, key, n_paths)
    st = statistics(out, data, prm.book.quantity.sum(-1) * prm.market.price0)
    return (in_fit_units(st, static.n_assets) - data.goal) / data.tolerance, st


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
    goal = np.zeros(len(slots))
    weight = np.zeros(len(slots))
    goal[list(index)] = [np.log(t.value) if t.kind in LOG_KINDS else t.value for t in targets]
    weight[list(index)] = [getattr(jc.weights, t.kind) for t in targets]
    obs, missing = book_map.observables(event, assets)
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
            obs=book_map.Observables(*(arr(x) for x in obs)),
            oi=arr([a.open_interest_usd for a in cfg.market.assets.values()]),
            coverage=arr(coverage(event)),
            goal=arr(goal),
            tolerance=arr([tolerance_of(k, jc.tolerances) for k, _ in slots]),
            masks=arr(masks.reshape(len(lay.slots), len(assets))),
            fixed_map={k: arr(v) for k, v in jc.book_map.model_dump().items()},
            grid_std=arr(cfg.book.entry_log_std),
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


# ----------------------------------------------------------------------------------------
# The joint fit
# ----------------------------------------------------------------------------------------


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


def problems(jc: JointConfig, events: dict[str, Event]) -> dict[str, EventProblem]:
    """Every event's problem (its objective compiles on first use, once per shape)."""
    lay = layout(jc)
    return {name: make_problem(jc, name, ev, lay) for name, ev in events.items()}


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
    every = max(1, jc.calibration.iterations // 5)
    fits = []
    for seed in jc.calibration.seeds:
        cb = None
        if log:
            cb = lambda i, loss, seed=seed: (
                log(f"seed {seed}: iteration {i + 1}/{jc.calibration.iterations}, loss {loss:.4g}")
                if i % every == 0 or i == jc.calibration.iterations - 1
                else None
            )
        fits.append(fit_joint(jc, probs, seed, cb))
    return fits


@dataclass
class JointAssessment:
    """Converged seeds (best loss at most NOT_CONVERGED_RATIO x the median) and the means
    and sds (ddof 1; 0 for one seed) over them of the shared values and the shocks."""

    converged: np.ndarray
    values: np.ndarray
    spread: np.ndarray
    shocks: dict[str, float]
    shock_spread: dict[str, float]
    statistics: dict[str, np.ndarray]


def assess_joint(fits: list[JointFit]) -> JointAssessment:
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
    """Gauss-Newton covariance of the fitted values (shared, then one shock per event) with
    each target's tolerance as its standard deviation: (J^T J)^+ with J the Jacobian of the
    weighted, scaled residuals. Returns (standard errors `[n]`, correlations `[n, n]`)."""
    lay = layout(jc)
    names = list(probs)
    n = len(values)
    blocks = []
    for k, name in enumerate(names):
        pr = probs[name]
        fn = partial(residuals, static=pr.static, n_paths=jc.calibration.n_paths, fields=lay.fields)

        def scaled(x, pr=pr, fn=fn):
            r, _ = fn(x[:n], x[n], word64(seed), pr.data)
            return jnp.sqrt(jnp.asarray(pr.weight, r.dtype)) * r

        with precision(pr.cfg.run.dtype):
            x = jnp.asarray(np.append(values, shocks[name]), pr.data.oi.dtype)
            jac = np.asarray(jax.jit(jax.jacfwd(scaled))(x), float)[np.array(pr.index)]
        full = np.zeros((jac.shape[0], n + len(names)))
        full[:, :n], full[:, n + k] = jac[:, :n], jac[:, n]
        blocks.append(full)
    j = np.concatenate(blocks)
    cov = np.linalg.pinv(j.T @ j)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    corr = cov / np.maximum(np.outer(se, se), 1e-300)
    return se, corr
