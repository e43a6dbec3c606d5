"""Policy optimisation: the least restrictive policy that keeps a tail risk under a bound.

    minimise   sum_i cost_i * r_i(v_i)  +  penalty * max(0, (S(v) - bound) / bound)^2

over policy levers `v` in bounded intervals (sigmoid transform), where `r_i` in [0, 1] is the
restrictiveness of lever i (0 at its loosest bound, 1 at its tightest; in log space for
`log = true` levers) and `S` a risk statistic of the simulated paths (mean or expected
shortfall at 99% of an output). Gradients come from the relaxed kernel (`engine.fit.common`)
on a fixed set of paths (common random numbers across iterations); Adam from optax.

A point is feasible with confidence `P(feasible) = Phi((bound - S) / se)`, the normal
approximation with the exact kernel's statistic `S` and its Monte Carlo standard error `se`;
it counts as feasible only when that reaches `confidence` (config, e.g. 0.95).

The search starts from the cheapest confidently feasible point of a coarse exact grid on
scouting paths (the relaxed gradient carries little information far from a binding policy, e.g.
for a breaker that never fires), and its end replaces that start only if it is confidently
feasible and no costlier on the scouting paths. The optimum is then checked with the exact
kernel on fresh paths against the same grid evaluated on those fresh paths. It is accepted only
if it is feasible at the required confidence there; otherwise the report recommends the
cheapest grid point that is, or says that none is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field, model_validator

from engine.config import build, forms
from engine.config.errors import ConfigError
from engine.config.schema import Config, Strict
from engine.fit.common import (
    descend,
    differentiable_outputs,
    load_fit_config,
    relaxed_static,
    sized,
    to_unconstrained,
    to_values,
)
from engine.model import params as P
from engine.model.kernel import word64
from engine.sim.reduce import ES_LEVEL, MIN_ES_TAIL_PATHS
from engine.sim.rollout import rollout
from engine.sim.simulate import precision

# Lever path -> PolicyParams field (and the breaker kind it needs, if any).
LEVERS = {
    "policy.leverage_cap": ("leverage_cap", None),
    "policy.breaker.threshold": ("halt_threshold", "halt"),
    "policy.breaker.band": ("band", "band"),
    "policy.insurance_fund_usd": ("insurance_fund", None),
    "policy.backstop_capacity_usd": ("backstop_capacity", None),
    "policy.dynamic_margin": ("dynamic_margin", None),
}
# Cost slack when comparing the optimum with the best grid point (cost units).
COST_TOLERANCE = 0.02
RISK_OUTPUTS = (
    "shortfall",
    "bad_debt",
    "liquidated_total",
    "trader_loss",
    "insurance_fund_draw",
    "adl_notional",
)


class Lever(Strict):
    path: str
    lower: float = Field(allow_inf_nan=False)
    upper: float = Field(allow_inf_nan=False)
    # Which end is restrictive: "low" (a low leverage cap, a tight breaker) or "high".
    restrictive: Literal["low", "high"] = "low"
    cost: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    log: bool = True

    @model_validator(mode="after")
    def _check(self) -> Lever:
        if self.path not in LEVERS:
            raise ValueError(f"path: unknown lever {self.path!r}; allowed: {list(LEVERS)}")
        if not self.upper > self.lower:
            raise ValueError(f"upper ({self.upper}) must be greater than lower ({self.lower})")
        if self.log and self.lower <= 0:
            raise ValueError("lower must be positive for a log-scaled lever (log = true)")
        return self


class Constraint(Strict):
    """`statistic` is `mean_<output>` or `es99_<output>` (output in RISK_OUTPUTS);
    `bound` is a USD amount or "insurance_fund" (the scenario's fund)."""

    statistic: str
    bound: float | Literal["insurance_fund"] = "insurance_fund"

    @model_validator(mode="after")
    def _check(self) -> Constraint:
        kind, _, out = self.statistic.partition("_")
        if kind not in ("mean", "es99") or out not in RISK_OUTPUTS:
            allowed = [f"{k}_{o}" for k in ("mean", "es99") for o in RISK_OUTPUTS]
            raise ValueError(f"statistic: unknown {self.statistic!r}; allowed: {allowed}")
        if isinstance(self.bound, float) and self.bound <= 0:
            raise ValueError("bound must be positive")
        return self


class OptimisationSettings(Strict):
    """`[optimise]`: the relaxed search, its annealed temperature, and the exact check."""

    n_paths: Annotated[int, Field(ge=8, le=100_000)] = 128
    steps: Annotated[int, Field(ge=1)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    temperature: Annotated[float, Field(gt=0, le=1)] = 0.05
    # The temperature is annealed geometrically to this value over the iterations, so the
    # relaxed statistic approaches the exact one as the search settles.
    final_temperature: Annotated[float, Field(gt=0, le=1)] = 0.005
    iterations: Annotated[int, Field(ge=1, le=100_000)] = 60
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.1
    penalty: Annotated[float, Field(gt=0)] = 100.0
    check_paths: Annotated[int, Field(ge=100, le=1_000_000)] = 2048
    check_seed: Annotated[int, Field(ge=0, lt=2**63 - 1)] = 987654321  # check_seed + 1 seeds the scout
    grid_points: Annotated[int, Field(ge=2, le=50)] = 5
    # P(feasible) a point needs on the exact kernel (normal approximation of its Monte Carlo error)
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95


class OptimisationConfig(Strict):
    kind: Literal["optimisation"] = "optimisation"
    scenario: Config
    optimise: OptimisationSettings = OptimisationSettings()
    levers: tuple[Lever, ...]
    constraint: Constraint

    @model_validator(mode="after")
    def _check(self) -> OptimisationConfig:
        if not self.levers:
            raise ValueError("levers: give at least one lever")
        kind = self.scenario.policy.breaker.kind
        for i, lv in enumerate(self.levers):
            need = LEVERS[lv.path][1]
            if need and kind != need:
                raise ValueError(
                    f"levers.{i}.path: {lv.path} needs scenario.policy.breaker.kind = {need!r} (it is {kind!r})"
                )
        if len({lv.path for lv in self.levers}) != len(self.levers):
            raise ValueError("levers: each path may appear once")
        if self.scenario.policy.partial_liquidation != 1.0:
            raise ValueError(
                "scenario.policy.partial_liquidation must be 1 (the relaxed kernel liquidates fully)"
            )
        return self

    @property
    def bound(self) -> float:
        b = self.constraint.bound
        return self.scenario.policy.insurance_fund_usd if b == "insurance_fund" else float(b)


def load_optimisation(path: str | Path) -> OptimisationConfig:
    """A validated optimisation config, by path or shipped name (`optimise_oct10_2025`);
    `scenario` as in `engine.fit.calibrate.load_calibration`."""
    oc, p = load_fit_config(path, OptimisationConfig)
    if oc.bound <= 0:
        raise ConfigError(f"{p}:\nconstraint.bound: the insurance fund is 0; give a positive USD bound")
    return oc


def restrictiveness(lv: Lever, v):
    """0 at the loosest end of the lever, 1 at the tightest (NumPy or JAX)."""
    xp = jnp if isinstance(v, jax.Array) else np
    f = xp.log if lv.log else (lambda x: x)
    frac = (f(v) - f(lv.lower)) / (f(lv.upper) - f(lv.lower))
    return 1.0 - frac if lv.restrictive == "low" else frac


def risk_statistic(values, kind: str):
    """Mean or ES99 (mean of the largest 1% of paths, at least one) of `[paths]` values."""
    xp = jnp if isinstance(values, jax.Array) else np
    if kind == "mean":
        return xp.mean(values)
    k = max(1, math.ceil(0.01 * values.shape[0]))
    top = jax.lax.top_k(values, k)[0] if xp is jnp else np.sort(values)[-k:]
    return xp.mean(top)


def with_levers(base: P.Params, oc: OptimisationConfig, values) -> P.Params:
    pol = base.policy
    for lv, v in zip(oc.levers, values):
        field = LEVERS[lv.path][0]
        pol = pol._replace(**{field: jnp.asarray(v, getattr(pol, field).dtype)})
    return base._replace(policy=pol)


@dataclass
class Result:
    """values: the optimum; check: it on fresh paths; grid / best_grid: the grid on the same
    fresh paths and its cheapest feasible point; start / searched: the scouted grid point the
    search began from and where the search ended (both on scouting paths)."""

    values: np.ndarray
    trajectory: list[dict]
    check: dict
    grid: list[dict]
    best_grid: dict | None
    start: dict
    searched: dict


def _setup(oc: OptimisationConfig):
    """(config, params, static) of the search's paths; call within the scenario's precision."""
    s = oc.optimise
    cfg = sized(oc.scenario, s.n_paths, s.steps)
    params, static = build.build(cfg)
    return cfg, params, static


def temperature_at(s: OptimisationSettings, i: int) -> float:
    """The relaxed kernel's temperature at iteration i: annealed geometrically from
    `temperature` to `final_temperature` over the iterations."""
    frac = i / max(s.iterations - 1, 1)
    return s.temperature * (s.final_temperature / s.temperature) ** frac


def optimise(oc: OptimisationConfig, log: Callable[[str], None] = print) -> Result:
    """Coarse exact grid for a start, gradient search on the relaxed kernel, exact check of
    the optimum against the grid on fresh paths (within the scenario's precision)."""
    with precision(oc.scenario.run.dtype):
        return _optimise(oc, log)


def _optimise(oc: OptimisationConfig, log: Callable[[str], None]) -> Result:
    s = oc.optimise
    cfg, params, static = _setup(oc)
    # Start from the cheapest feasible point of a coarse exact grid on scouting paths (not the
    # check's): the relaxed gradient is informative near a policy that binds, much less so at
    # the loosest end, where a breaker never fires.
    log(f"scouting a {s.grid_points}-point-per-lever grid with the exact kernel")
    scout = exact_evaluator(oc, cfg, s.check_seed + 1)
    scouted = [scout(v) for v in grid(oc)]
    start = cheapest_feasible(scouted, s.confidence) or max(scouted, key=lambda g: g["p_feasible"])
    trajectory, u = search(oc, params, static, start["values"], log)
    searched = scout(np.asarray(lever_values(oc, u)))
    # keep the search's end if it is confidently feasible and no costlier than where it started
    # (scouting paths), else the start: the confidence guards against choosing a point that is
    # feasible only on the scouting paths' noise
    confident = searched["p_feasible"] >= s.confidence
    chosen = searched if confident and searched["cost"] <= start["cost"] else start
    log("checking the optimum and the grid with the exact kernel on fresh paths")
    check_eval = exact_evaluator(oc, cfg, s.check_seed)
    check = check_eval(np.asarray(chosen["values"]))
    grid_checked = [check_eval(v) for v in grid(oc)]
    return Result(
        values=np.asarray(chosen["values"]),
        trajectory=trajectory,
        check=check,
        grid=grid_checked,
        best_grid=cheapest_feasible(grid_checked, s.confidence),
        start=start,
        searched=searched,
    )


def search(
    oc: OptimisationConfig, base: P.Params, static: P.Static, start, log: Callable[[str], None]
) -> tuple[list[dict], jax.Array]:
    """The gradient search on the relaxed kernel from lever values `start`: its trajectory (one
    dict per iteration) and the unconstrained point where it ended."""
    s = oc.optimise
    relaxed = relaxed_static(static)
    kind, _, out_name = oc.constraint.statistic.partition("_")
    bound = oc.bound

    def objective(u, temperature):
        v = lever_values(oc, u)
        params = with_levers(base, oc, v)._replace(temperature=temperature)
        out = differentiable_outputs(params, relaxed, s.seed, s.n_paths)
        stat = risk_statistic(out[out_name], kind)
        cost = sum(lv.cost * restrictiveness(lv, v[i]) for i, lv in enumerate(oc.levers))
        excess = jnp.maximum(stat / bound - 1.0, 0.0)
        return cost + s.penalty * excess**2, (cost, stat)

    trajectory = []
    every = max(1, s.iterations // 10)

    def record(i, u, obj, aux):
        cost, stat = aux
        trajectory.append(
            {
                "iteration": i,
                "values": np.asarray(lever_values(oc, u)).tolist(),
                "objective": obj,
                "cost": float(cost),
                "statistic": float(stat),
                "temperature": temperature_at(s, i),
            }
        )
        if i % every == 0:
            log(
                f"iteration {i + 1}/{s.iterations}: objective {obj:.4g}, cost {float(cost):.3f}, {oc.constraint.statistic} {float(stat):.4g} (bound {bound:.4g})"
            )

    d = descend(
        jax.jit(jax.value_and_grad(objective, has_aux=True)),
        jnp.asarray(levers_to_unconstrained(oc, start), jnp.float32),
        iterations=s.iterations,
        learning_rate=s.learning_rate,
        clip_norm=1.0,
        args=lambda i: (jnp.asarray(temperature_at(s, i), base.temperature.dtype),),
        on_step=record,
    )
    if d.stopped is not None:
        log(f"iteration {d.stopped + 1}: non-finite gradient, stopping the search here")
    return trajectory, d.u


def feasibility(statistic: float, mc_se: float, bound: float) -> float:
    """P(feasible) = P(true statistic <= bound) = Phi((bound - statistic) / mc_se), the normal
    approximation of the Monte Carlo error (USD in, probability out); 1 or 0 when mc_se is 0."""
    if mc_se <= 0:
        return float(statistic <= bound)
    return NormalDist().cdf((bound - statistic) / mc_se)


def cheapest_feasible(points: list[dict], confidence: float) -> dict | None:
    """The cheapest point whose `p_feasible` reaches `confidence`, or None."""
    feasible = [g for g in points if g["p_feasible"] >= confidence]
    return min(feasible, key=lambda g: g["cost"]) if feasible else None


def levers_to_unconstrained(oc: OptimisationConfig, values) -> np.ndarray:
    """Inverse of `lever_values`, kept a little inside the bounds (the sigmoid's slope)."""
    out = []
    for lv, v in zip(oc.levers, values):
        f = np.log if lv.log else (lambda x: x)
        frac = np.clip((f(v) - f(lv.lower)) / (f(lv.upper) - f(lv.lower)), 0.05, 0.95)
        out.append(to_unconstrained(frac, 0.0, 1.0))
    return np.asarray(out)


def lever_values(oc: OptimisationConfig, u) -> jnp.ndarray:
    """Lever values `[levers]` from unconstrained `u`: a sigmoid between the bounds, taken
    in log space for log-scaled levers."""
    out = []
    for i, lv in enumerate(oc.levers):
        if lv.log:
            out.append(jnp.exp(to_values(u[i], math.log(lv.lower), math.log(lv.upper))))
        else:
            out.append(to_values(u[i], lv.lower, lv.upper))
    return jnp.stack(out)


def grid_values(lv: Lever, n: int) -> np.ndarray:
    return np.geomspace(lv.lower, lv.upper, n) if lv.log else np.linspace(lv.lower, lv.upper, n)


def grid(oc: OptimisationConfig) -> list[np.ndarray]:
    """Every point of the comparison grid (`grid_points` per lever)."""
    axes = [grid_values(lv, oc.optimise.grid_points) for lv in oc.levers]
    return [np.array(v) for v in itertools.product(*axes)]


def exact_evaluator(oc: OptimisationConfig, cfg: Config, seed: int) -> Callable[[np.ndarray], dict]:
    """`evaluate(values) -> {values, statistic, mc_se, p_feasible, cost}` with the exact kernel
    on `check_paths` paths of `seed` (the same paths for every call); the Monte Carlo error is
    a bootstrap over paths."""
    s = oc.optimise
    run = cfg.run.model_copy(update={"n_paths": s.check_paths, "seed": seed})
    ccfg = Config.model_validate(cfg.model_copy(update={"run": run}).model_dump())
    params, static = build.build(ccfg)
    # the faster kernel forms the scenario allows (no lever changes partial liquidation or the
    # tail dof, so they hold at every lever value)
    static = forms.specialise(static, [ccfg])
    kind, _, out_name = oc.constraint.statistic.partition("_")
    boot = np.random.default_rng(0).integers(0, s.check_paths, size=(200, s.check_paths))

    def evaluate(values) -> dict:
        out, _ = rollout(
            with_levers(params, oc, values),
            word64(seed),
            0,
            s.check_paths,
            static=static,
            n_paths=s.check_paths,
        )
        x = np.asarray(out[out_name], np.float64)
        stat = float(risk_statistic(x, kind))
        se = float(np.std([risk_statistic(x[b], kind) for b in boot], ddof=1))
        cost = float(sum(lv.cost * restrictiveness(lv, float(v)) for lv, v in zip(oc.levers, values)))
        return {
            "values": [float(v) for v in values],
            "statistic": stat,
            "mc_se": se,
            "p_feasible": feasibility(stat, se, oc.bound),
            "cost": cost,
        }

    return evaluate


def tail_warnings(oc: OptimisationConfig) -> list[str]:
    """Why the exact check's statistic may not be an estimate: an ES99 constraint checked on
    fewer tail paths than a run's cube needs to call ES99 an estimate (`engine.sim.reduce`)."""
    if not oc.constraint.statistic.startswith("es99"):
        return []
    tail = (1.0 - ES_LEVEL) * oc.optimise.check_paths
    if tail >= MIN_ES_TAIL_PATHS:
        return []
    need = math.ceil(MIN_ES_TAIL_PATHS / (1.0 - ES_LEVEL))
    message = (
        f"{oc.constraint.statistic} is checked on {oc.optimise.check_paths:,} paths, {tail:.0f} beyond q99: "
        f"a run's cube calls ES99 an estimate from {MIN_ES_TAIL_PATHS} tail paths; P(feasible) "
        f"rests on a bootstrap of few tail paths. Set optimise.check_paths to {need:,} or more"
    )
    return [message]


def judge(oc: OptimisationConfig, res: Result) -> dict:
    """Whether the optimum is accepted (feasible at the required confidence on fresh paths),
    what to use (the optimum if accepted, else the cheapest grid point feasible at that
    confidence, None if no grid point is), and how it compares with that grid point."""
    c, b = res.check, res.best_grid
    accepted = c["p_feasible"] >= oc.optimise.confidence
    no_costlier = b is None or c["cost"] <= b["cost"] + COST_TOLERANCE
    return {
        "optimum_accepted": bool(accepted),
        "recommended": c if accepted else b,
        "optimum_no_costlier_than_best_grid": bool(no_costlier),
        "optimum_at_least_as_good_as_grid": bool(accepted and no_costlier),
    }
