"""Calibration of unobserved parameters to an observed event, by gradient, with optax.

The exact kernel has discontinuities (a cohort is liquidated or not), so gradients of outcome
statistics with respect to parameters are zero almost everywhere. Calibration therefore runs
the relaxed kernel (`Static.relaxed`, see `engine.cascade`): a cohort's liquidated share is a
ramp of width `temperature` (log price) in how far the mark crossed its liquidation price.
As the temperature goes to zero the relaxed kernel converges to the exact one.

Free parameters live in bounded intervals through a sigmoid transform,
`value = lower + (upper - lower) * sigmoid(u)`, and `u` is fitted with Adam (gradient
clipping, cosine-decayed learning rate) on

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

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from pydantic import Field, ValidationError, model_validator

from engine.config import build
from engine.config.errors import ConfigError, describe
from engine.config.files import merge_tables, read_config_dict, read_toml, resolve_config_path
from engine.config.schema import Config, Strict
from engine.model import params as P
from engine.model.cascade import by_side, side_matrix
from engine.model.kernel import init_state, path_keys, step, step_draws, word64
from engine.model.outputs import extract

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


class Settings(Strict):
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
    calibration: Settings = Settings()
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


def resolve_scenario(data: dict, p: Path) -> dict:
    """`data` with its `scenario` read in: the path of a scenario file (relative to `p`), or
    a table whose optional `base` names one and whose other keys override it."""
    scen = data.get("scenario")
    if isinstance(scen, str):
        scen = {"base": scen}
    if isinstance(scen, dict) and isinstance(scen.get("base"), str):
        rest = {k: v for k, v in scen.items() if k != "base"}
        base = read_config_dict(resolve_config_path(scen["base"], relative_to=p.parent))
        base.pop("sweep", None)
        data = {**data, "scenario": merge_tables(base, rest)}
    return data


def load_calibration(path: str | Path) -> CalibrationConfig:
    """A validated calibration config, by path or by the name of a shipped one
    (`calibrate_oct10_2025`). Its `scenario` is the path of a scenario file (relative to this
    one) or a table, optionally with `base` = a scenario file it overrides."""
    p = resolve_config_path(path)
    data = resolve_scenario(read_toml(p), p)
    try:
        return CalibrationConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{p}:\n{describe(err)}") from None


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
    s = cc.calibration
    run = cc.scenario.run.model_copy(update={"n_paths": s.n_paths, **({"steps": s.steps} if s.steps else {})})
    cfg = cc.scenario.model_copy(update={"run": run})
    cfg = Config.model_validate(cfg.model_dump())
    if cfg.run.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    params, static = build.build(cfg)
    static = P.Static(**{**static.__dict__, "relaxed": True})
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


def to_values(u, lower, upper):
    """Bounded values from unconstrained ones (sigmoid transform)."""
    return lower + (upper - lower) * jax.nn.sigmoid(u)


def to_unconstrained(v, lower, upper):
    x = (np.asarray(v, float) - lower) / (upper - lower)
    return np.log(x / (1.0 - x))


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


def differentiable_outputs(params: P.Params, static: P.Static, seed, n_paths: int) -> dict:
    """Per-path outputs `{name: [paths, ...]}` of the relaxed kernel; reverse-mode safe.

    A plain `lax.scan` over steps with the full step `vmap`ped over paths, rematerialised per
    step so the backward pass stores only the carried state of each step.
    """
    keys = path_keys(seed, 0, n_paths)
    one = init_state(params, static)
    states = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n_paths,) + x.shape), one)
    advance = jax.vmap(step, in_axes=(0, 0, None, None, None, None, None))

    @jax.checkpoint
    def body(states, xs):
        t, shock, flow = xs
        return advance(states, step_draws(keys, t, params, static), t, shock, flow, params, static), None

    ts = jnp.arange(static.steps, dtype=jnp.int32)
    states, _ = jax.lax.scan(body, states, (ts, params.schedule.shock, params.schedule.flow))
    return jax.vmap(extract, in_axes=(0, None, None))(states, params, static)


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
    """`loss(u, seed) -> (loss, statistics)`, jitted once for the problem's shapes."""
    lower, upper = jnp.asarray(prob.lower), jnp.asarray(prob.upper)
    target, tol, w = (jnp.asarray(x) for x in (prob.target, prob.tolerance, prob.weight))

    def loss(u, seed):
        values = to_values(u, lower, upper).astype(prob.base.market.price0.dtype)
        params = apply_values(prob, values)
        out = differentiable_outputs(params, prob.static, seed, prob.n_paths)
        st = statistics(out, params, prob.stats)
        return jnp.sum(w * ((st - target) / tol) ** 2), st

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


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
    u = jnp.asarray(to_unconstrained(init, prob.lower, prob.upper), jnp.float32)
    schedule = optax.cosine_decay_schedule(s.learning_rate, s.iterations, alpha=0.05)
    opt = optax.chain(optax.clip_by_global_norm(s.clip_norm), optax.adam(schedule))
    state = opt.init(u)
    losses, best = [], (math.inf, u, None)
    key = word64(seed)  # two uint32 words: a traced int would overflow above 2**31
    for i in range(s.iterations):
        (loss, st), g = grad_fn(u, key)
        loss = float(loss)
        losses.append(loss)
        if loss < best[0]:
            best = (loss, u, st)
        if progress:
            progress(i, loss)
        if not np.all(np.isfinite(np.asarray(g))):
            break
        updates, state = opt.update(g, state, u)
        u = optax.apply_updates(u, updates)
    (loss, st), _ = grad_fn(u, key)
    if float(loss) < best[0]:
        best = (float(loss), u, st)
    values = np.asarray(to_values(best[1], prob.lower, prob.upper))
    return Fit(seed=seed, values=values, statistics=np.asarray(best[2]), losses=losses, loss=best[0])


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


def write_outputs(cc: CalibrationConfig, fits: list[Fit], run_dir: Path) -> dict:
    """fitted.json, loss_curve.png, report.md and fitted_scenario.toml in `run_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tomli_w

    from engine.report.ticks import plain_log_axis

    run_dir.mkdir(parents=True, exist_ok=True)
    a = assess(cc, fits)
    vals = np.stack([f.values for f in fits])
    stats = np.stack([f.statistics for f in fits])
    summary = {
        "params": [
            {
                "path": p.path,
                "lower": p.lower,
                "upper": p.upper,
                "mean": float(m),
                "std_over_seeds": float(s),
                "per_seed": [float(x) for x in vals[:, i]],
            }
            for i, (p, m, s) in enumerate(zip(cc.params, a.values, a.spread))
        ],
        "targets": [
            {
                "statistic": t.statistic,
                "target": t.value,
                "tolerance": t.tolerance,
                "fitted_mean": float(a.statistics[i]),
                "within_tolerance": bool(a.within[i]),
                "per_seed": [float(x) for x in stats[:, i]],
            }
            for i, t in enumerate(cc.targets)
        ],
        "seeds": [f.seed for f in fits],
        "converged": [bool(c) for c in a.converged],
        "best_loss": [f.loss for f in fits],
        "final_loss": [f.losses[-1] for f in fits],
        "not_converged_rule": f"best loss > {NOT_CONVERGED_RATIO} x the median best loss over seeds",
        "warnings": flags(cc, fits, a),
        "settings": cc.calibration.model_dump(),
    }
    tmp = run_dir / "fitted.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(run_dir / "fitted.json")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for f in fits:
        ax.plot(f.losses, label=f"seed {f.seed}")
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (weighted, scaled squared error)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curve.png", dpi=100)
    plt.close(fig)

    intro = (
        f"Scenario `{cc.scenario.name}`, {cc.calibration.n_paths} paths per seed, "
        f"seeds {[f.seed for f in fits]}, temperature {cc.calibration.temperature}. Means and spreads are over "
        f"the converged seeds (a seed is not converged when {summary['not_converged_rule']})."
    )
    lines = [
        "# Calibration report",
        "",
        intro,
        "",
        "## Seeds",
        "",
        "| seed | best loss | converged |",
        "|---|---|---|",
    ]
    lines += [
        f"| {f.seed} | {f.loss:.4g} | {'yes' if c else '**not converged**'} |"
        for f, c in zip(fits, a.converged)
    ]
    lines += [
        "",
        "## Fitted parameters",
        "",
        "| parameter | lower | upper | fitted (mean) | spread over seeds (sd) |",
        "|---|---|---|---|---|",
    ]
    for p, m, s in zip(cc.params, a.values, a.spread):
        lines.append(f"| `{p.path}` | {p.lower:g} | {p.upper:g} | {m:.4g} | {s:.2g} |")
    lines += [
        "",
        "## Targets",
        "",
        "| statistic | target | tolerance | fitted (mean) | flag | source |",
        "|---|---|---|---|---|---|",
    ]
    for t, st, ok in zip(cc.targets, a.statistics, a.within):
        flag = "" if ok else "**outside tolerance**"
        lines.append(
            f"| `{t.statistic}` | {t.value:.4g} | {t.tolerance:.3g} | {st:.4g} | {flag} | {t.source} |"
        )
    runnable = (
        f"`fitted_scenario.toml` (the fitted means, {SIGNIFICANT_DIGITS} significant digits) runs as is: "
        "`liqstress run fitted_scenario.toml`."
    )
    lines += ["", "![loss curve](loss_curve.png)", "", runnable, ""]
    (run_dir / "report.md").write_text("\n".join(lines))

    fitted = fitted_config(cc, a.values)
    (run_dir / "fitted_scenario.toml").write_text(
        tomli_w.dumps(fitted.model_dump(mode="json", exclude_none=True))
    )
    return summary


def run_calibration(path: str | Path, run_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Load, fit every seed, write the outputs to `run_dir`; returns the fitted summary."""
    cc = load_calibration(path)
    every = max(1, cc.calibration.iterations // 10)

    def progress(k, i, loss):
        if i % every == 0 or i == cc.calibration.iterations - 1:
            log(
                f"seed {cc.calibration.seeds[k]}: iteration {i + 1}/{cc.calibration.iterations}, loss {loss:.4g}"
            )

    fits = calibrate(cc, progress)
    return write_outputs(cc, fits, Path(run_dir))
