"""Parameters as JAX pytrees: what a sweep varies is an array leaf, what shapes the kernel is static.

The types only: `engine.config.build` makes them from a `Config`.

`Static` holds the shape-deciding numbers (assets, cohorts, steps, rounds, ring-buffer length,
fan-chart points); a change there compiles a new kernel. Everything in `Params` is traced, so
one compiled kernel serves every policy point and scenario variant of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # the types are read by the config layer, which `liqstress validate` runs without JAX
    import jax.numpy as jnp

# A breaker that is off is a limit too wide to bind (log units).
NO_LIMIT = 1e6
ADL_RULES = {"off": 0, "queue": 1, "pro_rata": 2}
IMPACT_LAWS = {"linear": 0, "sqrt": 1}
# Most jumps counted per step by the inverse-CDF Poisson draw. The truncated mass, P(N > JUMP_MAX)
# at the step's intensity (`engine.config.build.jump_truncation`), sets `jump_cdf_max`; the kernel
# flags the paths where a draw fell beyond it (the cube's `n_jump_truncated`).
JUMP_MAX = 4
# Upper edges of the leverage buckets of the outputs by leverage (x; the last bucket is open).
LEVERAGE_EDGES = (5.0, 10.0, 20.0, 50.0, 100.0)
LEVERAGE_BUCKETS = ("1-5x", "5-10x", "10-20x", "20-50x", "50-100x", "100x+")
MARGIN_MODES = ("isolated", "cross")


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
    # The kernel's form: the relaxed, differentiable variants (`engine.model.relaxed`, used by
    # `engine.fit`) instead of the exact ones. `engine.model.kernel.form` reads it, once.
    relaxed: bool = False
    # The point(s) close liquidated positions whole (partial fraction 1): the exact kernel
    # may use the faster `engine.model.cascade.run_cascade_whole`. Set by
    # `engine.config.forms.specialise`.
    whole_only: bool = False
    # 0, or the point(s)' Student-t dof is an integer at most this: the chi-square is drawn
    # loop-free (`engine.model.market.draw`). Set by `engine.config.forms.specialise`.
    dof_max: int = 0
    # 0, or the point(s) close positions whole and the kernel runs on liquidation ladders
    # (`engine.model.ladder`): the number of distinct base maintenance rates of the book (rung
    # groups per side), and the cells of each group's search grid (`engine.model.ladder.find`).
    # Set by `engine.config.forms.specialise`.
    ladder: int = 0
    ladder_cells: int = 0
    # Cross-margin account cohorts and collateral assets (`Params.accounts`, `Params.collateral`),
    # and whether cohorts carry stop orders (`BookParams.stop`); 0/False: none, and the kernel
    # does no work for them. The dense kernel runs them on its general cascade; the ladder holds
    # the accounts in a shared table and the stop orders in rung groups of their own.
    n_accounts: int = 0
    n_collateral: int = 0
    stops: bool = False
    # Holders close part of their isolated positions voluntarily (`engine.model.derisk`; rates
    # `MarketParams.derisk_vol`, `derisk_loss`). False: the step does no work for it, and the
    # rates are not read. Set by `engine.config.build` where some rate is above 0; a fit of the
    # rates from 0 sets it itself.
    derisk: bool = False


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
    # Voluntary closing rates per day (`engine.model.derisk`; read only with `Static.derisk`):
    # per unit of excess volatility sigma/sigma0 - 1, and per unit of the side's log loss.
    derisk_vol: jnp.ndarray
    derisk_loss: jnp.ndarray


class BookParams(NamedTuple):
    """Cohorts `[assets, cohorts]` (see `engine.config.book`): positions, the number of
    positions a cohort stands for; stop: the trigger price (USD) of the stop order that closes
    the cohort (0 for a long and infinity for a short without one), or None when no cohort has
    one (`Static.stops`)."""

    side: jnp.ndarray
    leverage: jnp.ndarray
    entry: jnp.ndarray
    quantity: jnp.ndarray
    bankrupt: jnp.ndarray
    mmr: jnp.ndarray
    maint_amount: jnp.ndarray
    positions: jnp.ndarray
    stop: Any = None


class AccountParams(NamedTuple):
    """Cross-margin account cohorts (`engine.model.accounts`), `[accounts, assets]` unless
    stated. Each is the sum of `weight` accounts alike: its legs' units, wallets and collateral
    are totals over them.

    side: +1 long / -1 short (either where the account holds no leg). entry: USD. quantity:
    units (0: no leg). mmr, maint_amount: the leg's maintenance rate and amount per unit (USD),
    by the tier of one account's leg. positions: positions the leg stands for. wallet:
    `[accounts]` USD cash. collateral: `[accounts, collateral]` units held. weight:
    `[accounts]` accounts. leverage: `[accounts]` notional at entry over margin at t0 (x).
    """

    side: jnp.ndarray
    entry: jnp.ndarray
    quantity: jnp.ndarray
    mmr: jnp.ndarray
    maint_amount: jnp.ndarray
    positions: jnp.ndarray
    wallet: jnp.ndarray
    collateral: jnp.ndarray
    weight: jnp.ndarray
    leverage: jnp.ndarray


class CollateralParams(NamedTuple):
    """Collateral assets `[collateral]` (`engine.model.collateral`): price0, USD at par;
    haircut, fraction of value margin does not count; track, int32 index of the perp whose
    mark it follows, -1 for none; depeg_prob, chance of a random depeg per step; depeg_size,
    the gap (fraction below par) a depeg opens; recovery, per-step factor of the gap."""

    price0: jnp.ndarray
    haircut: jnp.ndarray
    track: jnp.ndarray
    depeg_prob: jnp.ndarray
    depeg_size: jnp.ndarray
    recovery: jnp.ndarray


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
    """Scheduled inputs `[steps, assets]`: log shocks and exogenous flow (USD, + sells);
    depeg: `[steps, collateral]` the least gap of each collateral asset (scheduled depegs),
    None without collateral."""

    shock: jnp.ndarray
    flow: jnp.ndarray
    depeg: Any = None


class Params(NamedTuple):
    market: MarketParams
    book: BookParams
    policy: PolicyParams
    schedule: Schedule
    # Width (log price) of the relaxed liquidation threshold; unused by the exact kernel.
    temperature: jnp.ndarray
    # The ladder kernel's sorted book (`engine.model.ladder.Ladder`), built inside the compiled
    # call by `engine.model.kernel.prepare`; None outside it and in the other forms.
    ladder: Any = None
    # Cross-margin account cohorts and collateral assets; None when the book has none.
    accounts: AccountParams | None = None
    collateral: CollateralParams | None = None


def cast(tree, dtype):
    """Device arrays of the leaves of `tree` (NumPy or JAX), floating ones cast to `dtype`."""
    import jax  # here, not above: see the TYPE_CHECKING import
    import jax.numpy as jnp

    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.asarray(x), tree
    )
