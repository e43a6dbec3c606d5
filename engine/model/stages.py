"""Path state and the stages of a step that every form of the kernel shares.

`engine.model.skeleton` composes them into the step, once for all forms (dense, ladder,
relaxed); the stage numbers are those of `engine.model.kernel`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from engine.model import accounts, collateral, market, policies
from engine.model import tally as T
from engine.model.cascade import Cascade, CascadeInputs
from engine.model.impact import impact
from engine.model.params import Params, Static
from engine.model.waterfall import Fund, auto_deleverage


class Totals(NamedTuple):
    """Running per-path totals, USD unless stated."""

    liquidated: jnp.ndarray  # [assets, 2] (long, short)
    trader_loss: jnp.ndarray
    counterparty: jnp.ndarray  # gain of the fills' other side vs liquidated entries
    fund_inflow: jnp.ndarray
    shortfall: jnp.ndarray
    fund_draw: jnp.ndarray
    adl_absorbed: jnp.ndarray
    adl_notional: jnp.ndarray
    bad_debt: jnp.ndarray
    halted_steps: jnp.ndarray  # [assets] steps
    max_rounds: jnp.ndarray  # [] int
    max_residual: jnp.ndarray  # [] USD
    max_drawdown: jnp.ndarray  # [assets] fraction
    nonfinite: jnp.ndarray  # [] bool: a NaN or infinity appeared
    jump_truncated: jnp.ndarray  # [] bool: some step had more jumps than the kernel counts
    tally: T.Tally  # stops, counts, losses by leverage and margin mode (`engine.model.tally`)
    # Voluntary closing (`Static.derisk`, `engine.model.derisk`; None without): notional closed
    # by holders at the fill marks `[assets, 2]` USD (long, short), and units closed `[assets]`.
    voluntary: jnp.ndarray | None = None
    voluntary_units: jnp.ndarray | None = None


class SimState(NamedTuple):
    """State of one path. Log prices are relative to `price0`; `[assets]` unless stated."""

    x_fair: jnp.ndarray  # permanent log price
    x_trans: jnp.ndarray  # transient impact (log)
    x_mark: jnp.ndarray  # log mark
    peak: jnp.ndarray  # running max of the log mark
    variance: jnp.ndarray  # GARCH variance per step
    ring: jnp.ndarray  # [assets, max_window] past log marks (slot t mod max_window)
    halt_left: jnp.ndarray  # int steps of halt remaining
    queue: jnp.ndarray  # exogenous flow queued during a halt (USD)
    quantity: jnp.ndarray  # [assets, cohorts]
    bankrupt: jnp.ndarray  # [assets, cohorts] USD
    fund: jnp.ndarray  # [] insurance fund (USD)
    deficit: jnp.ndarray  # [assets, 2] USD waiting for ADL in this step
    backstop_left: jnp.ndarray  # [] USD capacity
    backstop_qty: jnp.ndarray  # units held by the backstop
    backstop_cash: jnp.ndarray  # [] USD
    totals: Totals
    # Relaxed kernel only (None in the exact one): strength in [0, 1] of the current halt, and
    # the cohorts' quantities after the leverage cap `[assets, cohorts]` (`engine.model.relaxed`).
    halt_weight: jnp.ndarray | None = None
    quantity0: jnp.ndarray | None = None
    # Ladder kernel only (`engine.model.ladder_kernel`), where `quantity` and `bankrupt` are None:
    # cohorts liquidated so far per rung group `[assets, groups]` (int32 ladder positions), and
    # the first step the ladder could not compute exactly (int32 `[]`; `FALLBACK_NEVER` if none),
    # from which the path's numbers come from the dense kernel (`engine.sim.fallback`).
    level: jnp.ndarray | None = None
    fallback: jnp.ndarray | None = None
    # Books with cross-margin accounts (`Static.n_accounts`): leg units `[accounts, assets]`;
    # with collateral (`Static.n_collateral`): the depeg gap `[collateral]` (fraction below par).
    accounts: jnp.ndarray | None = None
    gap: jnp.ndarray | None = None
    # Dense whole-position form: units liquidated so far per cohort `[assets, cohorts]`, the
    # path's tally at its end (cheaper than tallying every step).
    liquidated_units: jnp.ndarray | None = None
    # Ladder kernel with accounts, where `accounts` is None: the account cohorts still open
    # `[accounts]` bool (`engine.model.account_book`).
    alive: jnp.ndarray | None = None
    # Ladder kernel with voluntary closing (`Static.derisk`): the share of its t0 units every
    # open cohort of a side still holds `[assets, 2]` (long, short; `engine.model.derisk.shrink`).
    held: jnp.ndarray | None = None
    # Ladder kernel: the ADL events the path has seen (`engine.model.ladder_adl.Record`).
    adl: Any = None


def init_state(params: Params, static: Static) -> SimState:
    """State at t0 of one path (identical for all paths of a policy point), exact kernel."""
    mp, pol = params.market, params.policy
    dtype = mp.price0.dtype
    za = jnp.zeros(static.n_assets, dtype)
    z = jnp.zeros((), dtype)
    quantity, bankrupt = policies.cap_leverage(params.book, pol)
    totals = Totals(
        liquidated=jnp.zeros((static.n_assets, 2), dtype),
        trader_loss=z,
        counterparty=z,
        fund_inflow=z,
        shortfall=z,
        fund_draw=z,
        adl_absorbed=z,
        adl_notional=z,
        bad_debt=z,
        halted_steps=za,
        max_rounds=jnp.zeros((), jnp.int32),
        max_residual=z,
        max_drawdown=za,
        nonfinite=jnp.zeros((), bool),
        jump_truncated=jnp.zeros((), bool),
        tally=T.zero(static.n_assets, dtype),
        voluntary=jnp.zeros((static.n_assets, 2), dtype) if static.derisk else None,
        voluntary_units=za if static.derisk else None,
    )
    acc = params.accounts
    return SimState(
        x_fair=za,
        x_trans=za,
        x_mark=za,
        peak=za,
        variance=mp.sigma_init**2,
        ring=jnp.zeros((static.n_assets, static.max_window), dtype),
        halt_left=jnp.zeros(static.n_assets, jnp.int32),
        queue=za,
        quantity=quantity,
        bankrupt=bankrupt,
        fund=pol.insurance_fund.astype(dtype),
        deficit=jnp.zeros((static.n_assets, 2), dtype),
        backstop_left=pol.backstop_capacity.astype(dtype),
        backstop_qty=za,
        backstop_cash=z,
        totals=totals,
        accounts=None if acc is None else accounts.capped(acc, pol)[0],
        gap=None if params.collateral is None else jnp.zeros(static.n_collateral, dtype),
        liquidated_units=jnp.zeros_like(quantity) if static.whole_only and not static.relaxed else None,
    )


class Move(NamedTuple):
    """Stage 1 of one path, and what stages 2-4 read from the state, `[assets]` unless stated."""

    sigma: jnp.ndarray  # volatility per step
    x_fair: jnp.ndarray  # fair log price after the exogenous return
    x_trans: jnp.ndarray  # transient impact after decay
    halted: jnp.ndarray  # bool, halted at the start of the step
    x_ref: jnp.ndarray  # log mark `halt_window` steps ago
    mmr: jnp.ndarray  # [assets, cohorts] maintenance rate in force
    gap: jnp.ndarray | None = None  # [collateral] depeg gap of the step (`engine.model.collateral`)


def move_market(state: SimState, draws: market.Draws, t, shock, params: Params, static: Static) -> Move:
    """Stage 1: sigma = sqrt(h); the exogenous return moves the fair log price; transient
    impact decays by the resilience factor; collateral depeg gaps move. shock: `[assets]`
    scheduled log shock."""
    mp, pol = params.market, params.policy
    sigma = jnp.sqrt(state.variance)
    x_fair = state.x_fair + market.exogenous_return(draws, sigma, shock, mp)
    x_trans = state.x_trans * mp.resilience
    halted = state.halt_left > 0
    slot = jnp.mod(t - pol.halt_window, static.max_window)
    mmr = policies.maintenance_rate(params.book.mmr, sigma, mp.sigma0, pol)
    gap = None
    if params.collateral is not None:
        gap = collateral.next_gap(state.gap, draws.u_depeg, params.schedule.depeg[t], params.collateral)
    return Move(sigma, x_fair, x_trans, halted, state.ring[:, slot], mmr, gap)


def account_args(state: SimState, m: Move, params: Params) -> tuple | None:
    """The `accounts` argument of `engine.model.cascade.run_cascade` for this step, or None."""
    if params.accounts is None:
        return None
    return accounts.prepare(params, m.gap, m.sigma), state.accounts


def cascade_inputs(state: SimState, m: Move, flow0, lo, hi, active) -> CascadeInputs:
    """What `engine.model.cascade.run_cascade` takes of this step (`CascadeInputs`)."""
    return CascadeInputs(
        state.quantity,
        state.bankrupt,
        flow0,
        m.x_fair + m.x_trans,
        lo,
        hi,
        m.sigma,
        m.mmr,
        active,
        state.backstop_left,
    )


class Mark(NamedTuple):
    """Stage 4 of one path, log prices `[assets]`."""

    x_fair: jnp.ndarray
    x_trans: jnp.ndarray
    target: jnp.ndarray  # fair plus transient, before the limits
    x_mark: jnp.ndarray


def count_halt(state: SimState, triggered, params: Params) -> jnp.ndarray:
    """Halt steps left `[assets]` (int): a new halt where triggered, else one step less."""
    return jnp.where(triggered, params.policy.halt_duration, jnp.maximum(state.halt_left - 1, 0))


def move_mark(m: Move, c: Cascade, open_, lo, hi, params: Params) -> Mark:
    """Stage 4: the cascade's flow moves the price (permanent and transient parts) where the
    market is open (`open_`: bool, or the open share); the mark is clipped to the limits."""
    mp = params.market
    dx = open_ * impact(c.flow, m.sigma, mp)
    x_fair = m.x_fair + mp.permanent * dx
    x_trans = m.x_trans + (1.0 - mp.permanent) * dx
    target = x_fair + x_trans
    return Mark(x_fair, x_trans, target, jnp.clip(target, lo, hi))


def close_step(
    state: SimState,
    draws: market.Draws,
    t,
    c: Cascade,
    f: Fund,
    mk: Mark,
    halt: tuple,
    params: Params,
    static: Static,
) -> SimState:
    """Stage 5: GARCH variance from the realised mark return, the ring of past marks, drawdown,
    the cascade's and the fund's totals. halt: (halted_now `[assets]` bool or the halt
    strength, halt_left `[assets]` int steps, queue `[assets]` USD)."""
    halted_now, halt_left, queue = halt
    mp = params.market
    x_mark = mk.x_mark
    peak = jnp.maximum(state.peak, x_mark)
    tot = state.totals
    # the book's state: the cohorts' quantities, or (ladder kernel) the step's liquidations
    book = c.liquidated if c.quantity is None else c.quantity
    finite = jnp.all(jnp.isfinite(x_mark)) & jnp.isfinite(f.fund) & jnp.all(jnp.isfinite(book))
    totals = tot._replace(
        liquidated=tot.liquidated + c.liquidated,
        trader_loss=tot.trader_loss + c.trader_loss,
        counterparty=tot.counterparty + c.counterparty,
        fund_inflow=tot.fund_inflow + c.fund_inflow,
        shortfall=tot.shortfall + jnp.sum(c.shortfall),
        fund_draw=tot.fund_draw + f.draw,
        halted_steps=tot.halted_steps + halted_now.astype(tot.halted_steps.dtype),
        max_rounds=jnp.maximum(tot.max_rounds, c.rounds),
        max_residual=jnp.maximum(tot.max_residual, c.residual),
        max_drawdown=jnp.maximum(tot.max_drawdown, 1.0 - jnp.exp(x_mark - peak)),
        nonfinite=tot.nonfinite | ~finite,
        jump_truncated=tot.jump_truncated | market.jump_truncated(draws, mp),
        tally=tot.tally if c.tally is None else T.add(tot.tally, c.tally),
    )
    return state._replace(
        x_fair=mk.x_fair,
        x_trans=mk.x_trans,
        x_mark=x_mark,
        peak=peak,
        variance=market.garch_variance(state.variance, x_mark - state.x_mark, mp),
        ring=state.ring.at[:, jnp.mod(t, static.max_window)].set(x_mark),
        halt_left=halt_left,
        queue=queue,
        quantity=c.quantity,
        bankrupt=c.bankrupt,
        fund=f.fund,
        deficit=f.deficit,
        backstop_left=c.backstop_left,
        backstop_qty=state.backstop_qty + c.backstop_qty,
        backstop_cash=state.backstop_cash + c.backstop_cash,
        totals=totals,
        accounts=c.accounts,
        liquidated_units=(
            state.liquidated_units
            if c.liquidated_units is None
            else state.liquidated_units + c.liquidated_units
        ),
    )


def deleverage(state: SimState, params: Params, minimum=jnp.minimum) -> SimState:
    """Stage 6 after the fund: ADL the step's deficit, the rest is bad debt (minimum: as
    `engine.model.waterfall.auto_deleverage` takes it)."""
    mp = params.market
    price = mp.price0 * jnp.exp(state.x_mark)
    legs = None
    if params.accounts is not None:
        sigma = jnp.sqrt(state.variance)
        st = accounts.prepare(params, state.gap, sigma)
        legs = accounts.adl_legs(st, state.accounts, price)
    r = auto_deleverage(
        state.quantity, state.bankrupt, price, state.deficit, params.book, params.policy, minimum, legs
    )
    tot = state.totals
    return state._replace(
        quantity=r.quantity,
        accounts=r.accounts,
        deficit=jnp.zeros_like(state.deficit),
        totals=tot._replace(
            adl_absorbed=tot.adl_absorbed + r.absorbed,
            adl_notional=tot.adl_notional + r.notional,
            bad_debt=tot.bad_debt + r.bad_debt,
        ),
    )
