"""Parameters as JAX pytrees: what a sweep varies is an array leaf, what shapes the kernel is static.

`Static` holds the shape-deciding numbers (assets, cohorts, steps, rounds, ring-buffer length,
fan-chart points); a change there compiles a new kernel. Everything in `Params` is traced, so
one compiled kernel serves every policy point and scenario variant of the same shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import poisson

from engine.config.book import build_cohorts
from engine.config.schema import Config

# A breaker that is off is a limit too wide to bind (log units).
NO_LIMIT = 1e6
ADL_RULES = {"off": 0, "queue": 1, "pro_rata": 2}
IMPACT_LAWS = {"linear": 0, "sqrt": 1}
# Most jumps counted per step by the inverse-CDF Poisson draw; the truncated mass is
# P(N > JUMP_MAX) at the step's intensity, reported by `jump_truncation`.
JUMP_MAX = 4


@dataclass(frozen=True)
class Static:
    """Shape-deciding settings (hashable, a `jit` static argument)."""

    n_assets: int
    n_cohorts: int
    steps: int
    rounds: int
    max_window: int
    fan_stride: int
    fan_points: int
    # The relaxed, differentiable kernel (engine.calibrate) instead of the exact one.
    relaxed: bool = False
    # The point(s) close liquidated positions whole (partial fraction 1): the exact kernel
    # may use the faster `engine.cascade.run_cascade_whole`. Set by `specialise`.
    whole_only: bool = False
    # 0, or the point(s)' Student-t dof is an integer at most this: the chi-square is drawn
    # loop-free (`engine.market.draw`). Set by `specialise`.
    dof_max: int = 0


class MarketParams(NamedTuple):
    """Per-asset market parameters, `[assets]` unless stated. Log units per step."""

    price0: jnp.ndarray  # starting price, USD
    mu: jnp.ndarray  # drift per step
    sigma0: jnp.ndarray  # long-run volatility per step
    sigma_init: jnp.ndarray  # volatility at t0 per step
    chol: jnp.ndarray  # [assets, assets] Cholesky factor of the correlation
    tail_dof: jnp.ndarray  # [] Student-t dof; 0 = Gaussian
    garch_alpha: jnp.ndarray  # []
    garch_beta: jnp.ndarray  # []
    jump_cdf: jnp.ndarray  # [JUMP_MAX] Poisson CDF of jump counts per step
    jump_cdf_max: jnp.ndarray  # [] P(N <= JUMP_MAX): a draw above it had jumps beyond JUMP_MAX
    jump_mean: jnp.ndarray  # mean log jump size
    jump_std: jnp.ndarray  # std of log jump size
    impact_law: jnp.ndarray  # 0 linear, 1 square root
    impact_y: jnp.ndarray  # square-root law prefactor
    volume: jnp.ndarray  # daily volume, USD
    depth: jnp.ndarray  # linear-law depth, USD per log unit
    depth_kappa: jnp.ndarray  # depth withdrawal exponent
    permanent: jnp.ndarray  # permanent share of impact
    resilience: jnp.ndarray  # per-step decay factor of transient impact
    steps_per_day: jnp.ndarray  # []
    clearance_fee: jnp.ndarray  # [] fraction of notional


class BookParams(NamedTuple):
    """Cohorts `[assets, cohorts]` (see `engine.book`)."""

    side: jnp.ndarray
    leverage: jnp.ndarray
    entry: jnp.ndarray
    quantity: jnp.ndarray
    bankrupt: jnp.ndarray
    mmr: jnp.ndarray
    maint_amount: jnp.ndarray


class PolicyParams(NamedTuple):
    """One policy point, all scalars `[]`."""

    leverage_cap: jnp.ndarray
    cap_add_margin: jnp.ndarray  # 1.0 = add margin, 0.0 = reduce size
    halt_threshold: jnp.ndarray  # log move that halts; NO_LIMIT when off
    halt_window: jnp.ndarray  # int steps
    halt_duration: jnp.ndarray  # int steps
    band: jnp.ndarray  # log move per step; NO_LIMIT when off
    insurance_fund: jnp.ndarray  # USD
    backstop_capacity: jnp.ndarray  # USD
    backstop_discount: jnp.ndarray  # fraction of mark
    adl_rule: jnp.ndarray  # int, see ADL_RULES
    partial_fraction: jnp.ndarray  # fraction closed per liquidation event
    dynamic_margin: jnp.ndarray  # mmr multiplier slope in excess volatility


class Schedule(NamedTuple):
    """Scheduled inputs `[steps, assets]`: log shocks and exogenous flow (USD, + sells)."""

    shock: jnp.ndarray
    flow: jnp.ndarray


class Params(NamedTuple):
    market: MarketParams
    book: BookParams
    policy: PolicyParams
    schedule: Schedule
    # Width (log price) of the relaxed liquidation threshold; unused by the exact kernel.
    temperature: jnp.ndarray


def static_of(cfg: Config) -> Static:
    run = cfg.run
    fan_points = min(run.fan_points, run.steps)
    stride = math.ceil(run.steps / fan_points)
    return Static(
        n_assets=len(cfg.market.assets),
        n_cohorts=cfg.book.cohorts_per_asset,
        steps=run.steps,
        rounds=run.cascade_rounds,
        max_window=run.max_window,
        fan_stride=stride,
        fan_points=math.ceil(run.steps / stride),
    )


# Largest integer dof drawn loop-free (floor(n / 2) exponentials per path-step).
LOOP_FREE_DOF = 16


def specialise(static: Static, points: list[Config]) -> Static:
    """`static` with the faster kernel forms that every one of `points` allows: the
    whole-position cascade when no point liquidates partially, the loop-free chi-square
    when every point's dof is an integer up to `LOOP_FREE_DOF`.

    The numbers of the whole-position cascade equal the general one's; the loop-free
    chi-square has the same distribution as the gamma sampler's but other draws.
    `engine.simulate` specialises each point on its own, so that a point's numbers depend only
    on that point, not on which others share the call.
    """
    dofs = [p.market.tail_dof for p in points]
    integer = all(d == int(d) and d <= LOOP_FREE_DOF for d in dofs)
    return dataclasses.replace(
        static,
        whole_only=all(p.policy.partial_liquidation >= 1.0 for p in points),
        dof_max=max(1, int(max(dofs))) if integer else 0,
    )


def dtype_of(cfg: Config):
    return jnp.float64 if cfg.run.dtype == "float64" else jnp.float32


def market_params(cfg: Config) -> MarketParams:
    dt = jnp.asarray
    spy, spd = cfg.steps_per_year, cfg.steps_per_day
    assets = list(cfg.market.assets.values())
    col = lambda f: np.array([f(a) for a in assets], float)
    sigma0 = col(lambda a: a.vol_annual) / math.sqrt(spy)
    lam = cfg.market.jump_intensity_per_day / spd
    return MarketParams(
        price0=dt(col(lambda a: a.price)),
        mu=dt(col(lambda a: a.drift_annual) / spy),
        sigma0=dt(sigma0),
        sigma_init=dt(sigma0 * col(lambda a: a.init_vol_mult)),
        chol=dt(np.linalg.cholesky(cfg.market.correlation_matrix() + 1e-12 * np.eye(len(assets)))),
        tail_dof=dt(cfg.market.tail_dof),
        garch_alpha=dt(cfg.market.garch_alpha),
        garch_beta=dt(cfg.market.garch_beta),
        jump_cdf=dt(poisson.cdf(np.arange(JUMP_MAX), lam)),
        jump_cdf_max=dt(1.0 - jump_truncation(cfg)),
        jump_mean=dt(col(lambda a: a.jump_mean)),
        jump_std=dt(col(lambda a: a.jump_std)),
        impact_law=dt(col(lambda a: IMPACT_LAWS[a.impact_law])),
        impact_y=dt(col(lambda a: a.impact_y)),
        volume=dt(col(lambda a: a.daily_volume_usd)),
        depth=dt(col(lambda a: a.depth_usd)),
        depth_kappa=dt(col(lambda a: a.depth_kappa)),
        permanent=dt(col(lambda a: a.impact_permanent)),
        resilience=dt(0.5 ** (1.0 / col(lambda a: a.resilience_halflife_steps))),
        steps_per_day=dt(spd),
        clearance_fee=dt(cfg.exchange.clearance_fee),
    )


def jump_truncation(cfg: Config) -> float:
    """Probability mass of more than JUMP_MAX jumps in one step (counted as JUMP_MAX; the
    kernel flags the paths where it happened, `jump_truncated`)."""
    return float(poisson.sf(JUMP_MAX, cfg.market.jump_intensity_per_day / cfg.steps_per_day))


def book_params(cfg: Config) -> BookParams:
    c = build_cohorts(cfg)
    return BookParams(*(jnp.asarray(x) for x in c))


def policy_params(cfg: Config) -> PolicyParams:
    p, br = cfg.policy, cfg.policy.breaker
    # float() also for values that reached the Config unvalidated (model_copy with an int):
    # every point must give leaves of the same type, or the kernel compiles again
    f = lambda x: jnp.asarray(float(x))
    return PolicyParams(
        leverage_cap=f(p.leverage_cap),
        cap_add_margin=f(1.0 if p.leverage_cap_mode == "add_margin" else 0.0),
        halt_threshold=f(br.threshold if br.kind == "halt" else NO_LIMIT),
        halt_window=jnp.asarray(br.window, jnp.int32),
        halt_duration=jnp.asarray(br.duration if br.kind == "halt" else 0, jnp.int32),
        band=f(br.band if br.kind == "band" else NO_LIMIT),
        insurance_fund=f(p.insurance_fund_usd),
        backstop_capacity=f(p.backstop_capacity_usd),
        backstop_discount=f(p.backstop_discount),
        adl_rule=jnp.asarray(ADL_RULES[p.adl_rule], jnp.int32),
        partial_fraction=f(p.partial_liquidation),
        dynamic_margin=f(p.dynamic_margin),
    )


def schedule(cfg: Config) -> Schedule:
    names = cfg.asset_names
    steps = cfg.run.steps
    shock = np.zeros((steps, len(names)))
    beta = np.array([a.shock_beta for a in cfg.market.assets.values()])
    for s in cfg.scenario.all_shocks():
        mask = np.ones(len(names)) if s.assets is None else np.isin(names, s.assets).astype(float)
        lo, hi = min(s.start_step, steps), min(s.start_step + s.steps, steps)
        shock[lo:hi] += s.size / s.steps * beta * mask
    flow = np.zeros((steps, len(names)))
    for f in cfg.scenario.flows:
        lo, hi = min(f.start_step, steps), min(f.start_step + f.steps, steps)
        flow[lo:hi, names.index(f.asset)] += f.usd / f.steps
    return Schedule(shock=jnp.asarray(shock), flow=jnp.asarray(flow))


def build(cfg: Config) -> tuple[Params, Static]:
    """All traced parameters of one configuration, cast to the run's float type."""
    params = Params(market_params(cfg), book_params(cfg), policy_params(cfg), schedule(cfg), jnp.asarray(0.0))
    return cast(params, dtype_of(cfg)), static_of(cfg)


def cast(tree, dtype):
    """Cast floating leaves to `dtype`, leave integer leaves alone."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )
