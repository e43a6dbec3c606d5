"""Config -> Params/Static: the traced parameters and the kernel's shape of one configuration.

Everything that reads a `Config` to feed the model lives here (host side, NumPy and SciPy), so
that `engine.model` needs neither pydantic nor SciPy. The parameters are built as NumPy arrays
(`host_params`) and moved to the device by `build` only: loading and checking a config
(`liqstress validate`, the sweep's checks) imports neither JAX nor SciPy, which take seconds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from engine.config import accounts, book_file, liquidation_map, stops
from engine.config.book import Cohorts, build_cohorts
from engine.config.schema import Config
from engine.model.params import (
    ADL_RULES,
    IMPACT_LAWS,
    JUMP_MAX,
    NO_LIMIT,
    AccountParams,
    BookParams,
    CollateralParams,
    MarketParams,
    Params,
    PolicyParams,
    Schedule,
    Static,
    cast,
)


def static_of(cfg: Config) -> Static:
    """The shape-deciding settings of `cfg` (exact kernel, general forms; the faster forms a
    point allows are chosen by `engine.config.forms.specialise`)."""
    run = cfg.run
    fan_points = min(run.fan_points, run.steps)
    stride = math.ceil(run.steps / fan_points)
    if cfg.book.positions:
        book = book_file.cohorts_per_asset(cfg)
    elif cfg.book.liquidation_map:
        book = liquidation_map.map_cohorts_per_asset(cfg)
    else:
        book = cfg.book.cohorts_per_asset
    acc = accounts.account_cohorts(cfg)
    n_accounts = 0 if acc is None else len(acc.weight)
    return Static(
        n_assets=len(cfg.market.assets),
        n_cohorts=book + 2 * stops.per_side(cfg),  # the config's stops beside the book
        steps=run.steps,
        rounds=run.cascade_rounds,
        max_window=run.max_window,
        fan_stride=stride,
        fan_points=math.ceil(run.steps / stride),
        n_accounts=n_accounts,
        n_collateral=len(cfg.collateral) if n_accounts else 0,
        stops=bool(cfg.book.stops) or bool(cfg.book.positions and book_file.has_stops(cfg)),
    )


def derisks(points: list[Config]) -> bool:
    """Whether holders close positions voluntarily at some of `points` (`market.derisk`)."""
    return any(p.market.derisk.on for p in points)


def dtype_of(cfg: Config) -> type:
    """The run's float type."""
    return np.float64 if cfg.run.dtype == "float64" else np.float32


def market_params(cfg: Config) -> MarketParams:
    """Per-asset market parameters in log units per step (annual figures scaled by the step)."""
    dt = np.asarray
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
        jump_cdf=dt(_poisson_cdf(np.arange(JUMP_MAX), lam)),
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
        derisk_vol=dt(np.full(len(assets), cfg.market.derisk.vol_rate_per_day)),
        derisk_loss=dt(np.full(len(assets), cfg.market.derisk.loss_rate_per_day)),
    )


def jump_truncation(cfg: Config) -> float:
    """Probability mass of more than JUMP_MAX jumps in one step (counted as JUMP_MAX; the
    kernel flags the paths where it happened, `jump_truncated`)."""
    return float(_poisson_sf(JUMP_MAX, cfg.market.jump_intensity_per_day / cfg.steps_per_day))


def _poisson_cdf(k, lam):
    """P(N <= k), N ~ Poisson(lam): SciPy's special function (what `scipy.stats.poisson.cdf`
    computes), imported when parameters are built, not when a config is read."""
    from scipy.special import pdtr

    return pdtr(k, lam)


def _poisson_sf(k, lam):
    """P(N > k), N ~ Poisson(lam), like `_poisson_cdf`."""
    from scipy.special import pdtrc

    return pdtrc(k, lam)


def cohorts(cfg: Config) -> Cohorts:
    """The book of `cfg`: from its positions file (`engine.config.book_file`), its liquidation
    map (`engine.config.liquidation_map`) or parametric (`engine.config.book.build_cohorts`),
    with the config's stop orders beside it (`engine.config.stops`)."""
    if cfg.book.positions:
        book = book_file.cohorts_from_file(cfg)
    elif cfg.book.liquidation_map:
        book = liquidation_map.cohorts_from_map(cfg)
    else:
        book = build_cohorts(cfg)
    return stops.with_stops(cfg, book)


def book_params(cfg: Config) -> BookParams:
    """The cohorts of `cohorts` as arrays."""
    return BookParams(*(None if x is None else np.asarray(x) for x in cohorts(cfg)))


def account_params(cfg: Config) -> AccountParams | None:
    """The cross-margin account cohorts of `cfg`'s positions file (`engine.config.accounts`) as
    arrays, or None without any."""
    acc = accounts.account_cohorts(cfg)
    return None if acc is None else AccountParams(*map(np.asarray, acc))


def collateral_params(cfg: Config) -> CollateralParams | None:
    """The collateral assets `[collateral]` of `cfg` (in the order of its `collateral`), or
    None when it has none or the book has no accounts to hold them."""
    if not cfg.collateral or accounts.account_cohorts(cfg) is None:
        return None
    names = cfg.asset_names
    held = list(cfg.collateral.values())
    col = lambda f: np.array([f(c) for c in held], float)
    return CollateralParams(
        price0=col(lambda c: c.price),
        haircut=col(lambda c: c.haircut),
        track=np.asarray([-1 if c.tracks is None else names.index(c.tracks) for c in held], np.int32),
        depeg_prob=col(lambda c: -math.expm1(-c.depeg_per_day / cfg.steps_per_day)),
        depeg_size=col(lambda c: c.depeg_size),
        recovery=col(lambda c: 0.5 ** (1.0 / c.recovery_halflife_steps)),
    )


def depeg_schedule(cfg: Config) -> np.ndarray | None:
    """The least depeg gap `[steps, collateral]` (fraction below par) of each collateral asset:
    the largest scheduled depeg (`scenario.depegs`) over its steps, 0 elsewhere; None without
    `collateral_params`."""
    if collateral_params(cfg) is None:
        return None
    held = list(cfg.collateral)
    gap = np.zeros((cfg.run.steps, len(held)))
    for d in cfg.scenario.depegs:
        rows = slice(d.start_step, d.start_step + d.steps)
        c = held.index(d.collateral)
        gap[rows, c] = np.maximum(gap[rows, c], d.gap)
    return gap


def policy_params(cfg: Config) -> PolicyParams:
    """The policy point of `cfg`; a lever that is off gets a value that does not bind."""
    p, br = cfg.policy, cfg.policy.breaker
    # float() also for values that reached the Config unvalidated (model_copy with an int):
    # every point must give leaves of the same type, or the kernel compiles again
    f = lambda x: np.asarray(float(x))
    return PolicyParams(
        leverage_cap=f(p.leverage_cap),
        cap_add_margin=f(1.0 if p.leverage_cap_mode == "add_margin" else 0.0),
        halt_threshold=f(br.threshold if br.kind == "halt" else NO_LIMIT),
        halt_window=np.asarray(br.window, np.int32),
        halt_duration=np.asarray(br.duration if br.kind == "halt" else 0, np.int32),
        band=f(br.band if br.kind == "band" else NO_LIMIT),
        insurance_fund=f(p.insurance_fund_usd),
        backstop_capacity=f(p.backstop_capacity_usd),
        backstop_discount=f(p.backstop_discount),
        adl_rule=np.asarray(ADL_RULES[p.adl_rule], np.int32),
        partial_fraction=f(p.partial_liquidation),
        dynamic_margin=f(p.dynamic_margin),
    )


def build_schedule(cfg: Config) -> Schedule:
    """Scheduled shocks and flows `[steps, assets]` of the scenario (log units, USD)."""
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
    depeg = depeg_schedule(cfg)
    return Schedule(shock=shock, flow=flow, depeg=depeg)


def host_params(cfg: Config) -> Params:
    """All traced parameters of one configuration as NumPy arrays (float64 and int32)."""
    return Params(
        market_params(cfg),
        book_params(cfg),
        policy_params(cfg),
        build_schedule(cfg),
        np.asarray(0.0),
        accounts=account_params(cfg),
        collateral=collateral_params(cfg),
    )


def build(cfg: Config) -> tuple[Params, Static]:
    """All traced parameters of one configuration as device arrays of the run's float type, and
    its static settings (`static_of`, with `Static.derisk` where the config's holders close
    voluntarily)."""
    # voluntary closing is a form of the step, not a shape: sweeps compare `static_of`
    static = dataclasses.replace(static_of(cfg), derisk=derisks([cfg]))
    return cast(host_params(cfg), dtype_of(cfg)), static
