"""Calibration of unobserved parameters to an observed event, by gradient, with optax.

The exact kernel has discontinuities (a cohort is liquidated or not), so gradients of outcome
statistics with respect to parameters are zero almost everywhere. Calibration therefore runs
the relaxed kernel (`Static.relaxed`, see `engine.model.relaxed`): a cohort's liquidated share is a
ramp of width `temperature` (log price) in how far the mark crossed its liquidation price.
As the temperature goes to zero the relaxed kernel converges to the exact one.

Free parameters live in bounded intervals (the sigmoid transform of `engine.fit.common`),
and their unconstrained values are fitted by `engine.fit.common.descend` (Adam) on

    loss(u) = sum_i weight_i * ((statistic_i(u) - target_i) / tolerance_i)^2

where each statistic is a mean over the same paths (common random numbers across
iterations, so the objective is deterministic). Several seeds give the spread of the fit.

Honesty checks on the result (`assess`): a seed whose best loss exceeds
`NOT_CONVERGED_RATIO` times the median best loss over seeds is "not converged" (it ended in a
worse local minimum or stopped early) and is left out of the fitted mean and its spread; a
target whose fitted mean (over converged seeds) is further from its value than its tolerance
is "outside tolerance". Fitted values are written rounded to `SIGNIFICANT_DIGITS`
significant digits, the precision at which the shipped defaults quote them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field, model_validator

from engine.config import build
from engine.config.schema import Config, Strict
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
from engine.model.sides import by_side, side_matrix
from engine.sim.simulate import precision

# Free parameters: dotted config paths (per asset, or shared by all assets with no asset
# name) and the leverage-distribution tilt.
ASSET_FIELDS = ("impact_y", "depth_kappa", "daily_volume_usd")
TILT = "book.leverage_tilt"
STATISTICS = (
    "liquidated_total_usd",  # mean liquidated notional, all assets and sides
    "long_share",  # long liquidations / all liquidations (ratio of means)
    "max_drawdown",  # mean max drawdown of one asset: max_drawdown.BTC
    "open_interest_decline",  # OI-weighted mean decline, or of one asset
    "insurance_fund_draw_usd",  # mean fund draw
)
# A seed is not converged when its best loss is above this multiple of the median over seeds.
NOT_CONVERGED_RATIO = 1.5
SIGNIFICANT_DIGITS = 3


class FreeParam(Strict):
    """A parameter to fit: `path` is `scenario.shock`, `book.leverage_tilt` (weights times
    leverage**tilt), `market.assets.<ASSET>.<field>` or `market.<field>` (all assets), with
    field one of ASSET_FIELDS."""

    path: str
    lower: float = Field(allow_inf_nan=False)
    upper: float = Field(allow_inf_nan=False)
    init: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> FreeParam:
        if not self.upper > self.lower:
            raise ValueError(f"upper ({self.upper}) must be greater than lower ({self.lower})")
        if self.init is not None and not self.lower < self.init < self.upper:
            raise ValueError(f"init ({self.init}) must lie strictly between lower and upper")
        return self


class Target(Strict):
    """An observed statistic: `statistic` from STATISTICS, optionally `.ASSET`."""

    statistic: str
    value: float = Field(allow_inf_nan=False)
    tolerance: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    source: str = ""


class CalibrationSettings(Strict):
    """`[calibration]`: paths per seed, seeds, relaxed-kernel temperature and the search."""

    n_paths: Annotated[int, Field(ge=1, le=100_000)] = 128
    steps: Annotated[int, Field(ge=1)] | None = None
    seeds: tuple[Annotated[int, Field(ge=0, lt=2**63)], ...] = (0, 1, 2)
    temperature: Annotated[float, Field(gt=0, le=1)] = 0.01
    iterations: Annotated[int, Field(ge=1, le=100_000)] = 150
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.05
    clip_norm: Annotated[float, Field(gt=0)] = 1.0


class CalibrationConfig(Strict):
    """`[calibration]` settings, the free `[[params]]`, the `[[targets]]` and the scenario."""

    kind: Literal["calibration"] = "calibration"
    scenario: Config
    calibration: CalibrationSettings = CalibrationSettings()
    params: tuple[FreeParam, ...]
    targets: tuple[Target, ...]

    @model_validator(mode="after")
    def _check(self) -> CalibrationConfig:
        assets = self.scenario.asset_names
        if not self.params:
            raise ValueError("params: give at least one free parameter")
        if not self.targets:
            raise ValueError("targets: give at least one target")
        for i, p in enumerate(self.params):
            _param_slot(p.path, assets, f"params.{i}.path")
        for i, t in enumerate(self.targets):
            _statistic_slot(t.statistic, assets, f"targets.{i}.statistic")
        if self.scenario.policy.partial_liquidation != 1.0:
            raise ValueError(
                "scenario.policy.partial_liquidation must be 1 for calibration (the relaxed kernel liquidates fully)"
            )
        return self


def _param_slot(path: str, assets: list[str], where: str) -> tuple[str, int | None]:
    """(field, asset index or None for all) of a free-parameter path; ValueError if unknown."""
    if path in ("scenario.shock", TILT):
        return path, None
    parts = path.split(".")
    if len(parts) == 4 and parts[:2] == ["market", "assets"] and parts[3] in ASSET_FIELDS:
        if parts[2] not in assets:
            raise ValueError(f"{where}: unknown asset {parts[2]!r}; assets are {assets}")
        return parts[3], assets.index(parts[2])
    if len(parts) == 2 and parts[0] == "market" and parts[1] in ASSET_FIELDS:
        return parts[1], None
    allowed = ["scenario.shock", TILT] + [f"market[.assets.<ASSET>].{f}" for f in ASSET_FIELDS]
    raise ValueError(f"{where}: unknown free parameter {path!r}; allowed: {allowed}")


def _statistic_slot(name: str, assets: list[str], where: str) -> tuple[str, int | None]:
    base, _, asset = name.partition(".")
    if base not in STATISTICS:
        raise ValueError(
            f"{where}: unknown statistic {name!r}; allowed: {list(STATISTICS)} (drawdown and OI decline may end in .ASSET)"
        )
    if asset:
        if base not in ("max_drawdown", "open_interest_decline"):
            raise ValueError(f"{where}: {base} has no per-asset form")
        if asset not in assets:
            raise ValueError(f"{where}: unknown asset {asset!r}; assets are {assets}")
        return base, assets.index(asset)
    if base == "max_drawdown":
        raise ValueError(f"{where}: max_drawdown needs an asset, e.g. max_drawdown.{assets[0]}")
    return base, None


def load_calibration(path: str | Path) -> CalibrationConfig:
    """A validated calibration config, by path or by the name of a shipped one
    (`calibrate_oct10_2025`). Its `scenario` is the path of a scenario file (relative to this
    one) or a table, optionally with `base` = a scenario file it overrides."""
    return load_fit_config(path, CalibrationConfig)[0]


# ----------------------------------------------------------------------------------------
# The differentiable simulation
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Everything fixed during a fit: base parameters, how free values enter them, targets."""

    cfg: Config
    static: P.Static
    base: P.Params
    unit_shock: jnp.ndarray  # [steps, assets] schedule of a headline shock of size 1
    slots: tuple[tuple[str, int | None], ...]
    stats: tuple[tuple[str, int | None], ...]
    lower: np.ndarray
    upper: np.ndarray
    target: np.ndarray
    tolerance: np.ndarray
    weight: np.ndarray
    n_paths: int


def make_problem(cc: CalibrationConfig) -> Problem:
    """The fixed parts of the fit, at the scenario's dtype (float64 arrays within its precision)."""
    s = cc.calibration
    cfg = sized(cc.scenario, s.n_paths, s.steps)
    with precision(cfg.run.dtype):
        params, static = build.build(cfg)
        static = relaxed_static(static)
        params = params._replace(temperature=jnp.asarray(s.temperature, params.market.price0.dtype))
        unit_cfg = cfg.model_copy(
            update={"scenario": cfg.scenario.model_copy(update={"shock": 1.0, "shocks": (), "flows": ()})}
        )
        assets = cfg.asset_names
        return Problem(
            cfg=cfg,
            static=static,
            base=params,
            unit_shock=build.build_schedule(unit_cfg).shock.astype(params.market.price0.dtype),
            slots=tuple(_param_slot(p.path, assets, p.path) for p in cc.params),
            stats=tuple(_statistic_slot(t.statistic, assets, t.statistic) for t in cc.targets),
            lower=np.array([p.lower for p in cc.params]),
            upper=np.array([p.upper for p in cc.params]),
            target=np.array([t.value for t in cc.targets]),
            tolerance=np.array([t.tolerance for t in cc.targets]),
            weight=np.array([t.weight for t in cc.targets]),
            n_paths=s.n_paths,
        )


def apply_values(prob: Problem, values) -> P.Params:
    """Base parameters with the free values `[n_free]` put in (differentiable)."""
    p = prob.base
    mp, book, sched = p.market, p.book, p.schedule
    for (field, asset), v in zip(prob.slots, values):
        if field == "scenario.shock":
            sched = sched._replace(shock=sched.shock + (v - prob.cfg.scenario.shock) * prob.unit_shock)
        elif field == TILT:
            notional = book.quantity * book.entry
            tilted = notional * book.leverage**v
            # reweight by leverage**tilt, keeping each side's open interest
            sides = side_matrix(book.side)
            ratio = by_side(notional, sides) / jnp.maximum(by_side(tilted, sides), 1e-30)
            scale = jnp.where(book.side > 0, ratio[:, :1], ratio[:, 1:])
            book = book._replace(quantity=book.quantity * book.leverage**v * scale)
        else:
            name = {"daily_volume_usd": "volume"}.get(field, field)
            cur = getattr(mp, name)
            mp = mp._replace(**{name: jnp.full_like(cur, v) if asset is None else cur.at[asset].set(v)})
    return p._replace(market=mp, book=book, schedule=sched)


def statistics(out: dict, params: P.Params, stats) -> jnp.ndarray:
    """The target statistics `[n_targets]` from per-path outputs (means over paths)."""
    oi0 = jnp.sum(params.book.quantity, -1) * params.market.price0
    res = []
    for base, asset in stats:
        if base == "liquidated_total_usd":
            res.append(jnp.mean(out["liquidated_total"]))
        elif base == "long_share":
            res.append(
                jnp.mean(jnp.sum(out["liquidated_notional"][:, :, 0], -1))
                / jnp.maximum(jnp.mean(out["liquidated_total"]), 1e-30)
            )
        elif base == "max_drawdown":
            res.append(jnp.mean(out["max_drawdown"][:, asset]))
        elif base == "open_interest_decline":
            d = out["open_interest_decline"]
            res.append(jnp.mean(d[:, asset]) if asset is not None else jnp.mean(d @ (oi0 / jnp.sum(oi0))))
        else:  # insurance_fund_draw_usd
            res.append(jnp.mean(out["insurance_fund_draw"]))
    return jnp.stack(res)


def objective(prob: Problem) -> Callable:
    """`loss(u, seed) -> (loss, statistics)`, jitted once for the problem's shapes; it runs
    within the scenario's precision."""
    with precision(prob.cfg.run.dtype):
        lower, upper = jnp.asarray(prob.lower), jnp.asarray(prob.upper)
        target, tol, w = (jnp.asarray(x) for x in (prob.target, prob.tolerance, prob.weight))

    def loss(u, seed):
        values = to_values(u, lower, upper).astype(prob.base.market.price0.dtype)
        params = apply_values(prob, values)
        out = differentiable_outputs(params, prob.static, seed, prob.n_paths)
        st = statistics(out, params, prob.stats)
        return jnp.sum(w * ((st - target) / tol) ** 2), st

    return in_precision(prob.cfg.run.dtype, jax.jit(jax.value_and_grad(loss, has_aux=True)))


@dataclass
class Fit:
    """One seed's fit: `values` [n_free] and `statistics` [n_targets] at its best iterate,
    `loss` there, `losses` per iteration."""

    seed: int
    values: np.ndarray
    statistics: np.ndarray
    losses: list[float]
    loss: float


def fit(
    cc: CalibrationConfig,
    seed: int,
    prob: Problem | None = None,
    grad_fn: Callable | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Fit:
    """Fit the free parameters on the paths of one seed."""
    prob = prob or make_problem(cc)
    grad_fn = grad_fn or objective(prob)
    s = cc.calibration
    init = np.array([starting_value(cc, p) for p in cc.params])
    key = word64(seed)  # two uint32 words: a traced int would overflow above 2**31
    with precision(prob.cfg.run.dtype):
        d = descend(
            grad_fn,
            jnp.asarray(to_unconstrained(init, prob.lower, prob.upper), jnp.float32),
            iterations=s.iterations,
            learning_rate=s.learning_rate,
            clip_norm=s.clip_norm,
            args=lambda i: (key,),
            on_step=(lambda i, u, loss, st: progress(i, loss)) if progress else None,
            score_end=True,
        )
        values = np.asarray(to_values(d.best_u, prob.lower, prob.upper))
    return Fit(seed=seed, values=values, statistics=np.asarray(d.best_aux), losses=d.losses, loss=d.best_loss)


def starting_value(cc: CalibrationConfig, p: FreeParam) -> float:
    """`init`, else the scenario's own value (mean over assets for shared fields; tilt 0),
    else the middle of the bounds when the scenario's value lies outside them."""
    if p.init is not None:
        return p.init
    assets = cc.scenario.market.assets
    if p.path == "scenario.shock":
        v = cc.scenario.scenario.shock
    elif p.path == TILT:
        v = 0.0
    else:
        parts = p.path.split(".")
        names = [parts[2]] if len(parts) == 4 else list(assets)
        v = float(np.mean([getattr(assets[a], parts[-1]) for a in names]))
    return v if p.lower < v < p.upper else 0.5 * (p.lower + p.upper)


@dataclass
class Assessment:
    """Which seeds converged and which targets the fit meets, from the seeds' fits.

    converged: [seeds] bool; values, spread: [n_free] mean and sd (ddof 1; 0 for one seed)
    over converged seeds; statistics: [n_targets] mean over converged seeds; within: [n_targets]
    bool, |statistic - target| <= tolerance."""

    converged: np.ndarray
    values: np.ndarray
    spread: np.ndarray
    statistics: np.ndarray
    within: np.ndarray


def assess(cc: CalibrationConfig, fits: list[Fit]) -> Assessment:
    """Flag seeds that did not converge and targets outside tolerance (see the module doc)."""
    loss = np.array([f.loss for f in fits])
    converged = loss <= NOT_CONVERGED_RATIO * np.median(loss)
    vals = np.stack([f.values for f in fits])[converged]
    stats = np.stack([f.statistics for f in fits])[converged].mean(0)
    spread = vals.std(0, ddof=1) if len(vals) > 1 else np.zeros(vals.shape[1])
    target = np.array([t.value for t in cc.targets])
    tolerance = np.array([t.tolerance for t in cc.targets])
    return Assessment(
        converged=converged,
        values=vals.mean(0),
        spread=spread,
        statistics=stats,
        within=np.abs(stats - target) <= tolerance,
    )


def flags(cc: CalibrationConfig, fits: list[Fit], a: Assessment) -> list[str]:
    """One line per seed not converged and per target outside tolerance."""
    median = float(np.median([f.loss for f in fits]))
    lines = [
        f"seed {f.seed}: not converged (best loss {f.loss:.4g} > {NOT_CONVERGED_RATIO} x the median {median:.4g}); "
        "left out of the fitted values"
        for f, ok in zip(fits, a.converged)
        if not ok
    ]
    lines += [
        f"{t.statistic}: outside tolerance (fitted {st:.4g}, target {t.value:.4g} ± {t.tolerance:.3g})"
        for t, st, ok in zip(cc.targets, a.statistics, a.within)
        if not ok
    ]
    return lines


def rounded(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`x` rounded to `digits` significant digits."""
    return float(f"{x:.{digits}g}")


def fitted_config(cc: CalibrationConfig, values) -> Config:
    """The scenario with fitted values written into its fields (ready for `liqstress run`),
    rounded to SIGNIFICANT_DIGITS (leverage weights: percentages to 2 decimals)."""
    data = cc.scenario.model_dump(mode="json")
    lev = np.asarray(cc.scenario.book.leverage, float)
    for p, v in zip(cc.params, np.asarray(values, float)):
        v = rounded(float(v))
        if p.path == "scenario.shock":
            data["scenario"]["shock"] = v
        elif p.path == TILT:
            w = np.asarray(cc.scenario.book.leverage_weights, float) * lev**v
            data["book"]["leverage_weights"] = [round(float(x), 2) for x in w / w.sum() * 100.0]
        else:
            parts = p.path.split(".")
            names = [parts[2]] if len(parts) == 4 else list(data["market"]["assets"])
            for a in names:
                data["market"]["assets"][a][parts[-1]] = v
    return Config.model_validate(data)


def calibrate(
    cc: CalibrationConfig,
    progress: Callable[[int, int, float], None] | None = None,
    prob: Problem | None = None,
    grad_fn: Callable | None = None,
) -> list[Fit]:
    """Fit once per seed of `calibration.seeds` (same compiled objective for all; `prob` and
    `grad_fn` as from `make_problem` and `objective`, built here if not given)."""
    prob = prob or make_problem(cc)
    grad_fn = grad_fn or objective(prob)
    fits = []
    for k, seed in enumerate(cc.calibration.seeds):
        cb = (lambda i, loss, k=k: progress(k, i, loss)) if progress else None
        fits.append(fit(cc, seed, prob, grad_fn, cb))
    return fits


def logged_progress(cc: CalibrationConfig, log: Callable[[str], None]) -> Callable[[int, int, float], None]:
    """A `calibrate` progress callback that logs about ten lines per seed."""
    every = max(1, cc.calibration.iterations // 10)

    def progress(k, i, loss):
        if i % every == 0 or i == cc.calibration.iterations - 1:
            log(
                f"seed {cc.calibration.seeds[k]}: iteration {i + 1}/{cc.calibration.iterations}, loss {loss:.4g}"
            )

    return progress
