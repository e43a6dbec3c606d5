"""The simulation kernel: path state, the pure step, and the chunk rollout.

One step of one path (`step`), in order:

1. volatility sigma = sqrt(h); exogenous return (`engine.market`) moves the fair log price;
   transient impact decays by the resilience factor;
2. breaker limits for the mark (`engine.policies.mark_limits`); a halted asset is frozen and
   its exogenous flow queues;
3. the in-step cascade (`engine.cascade`) at the dynamic maintenance rate;
4. impact splits into a permanent part (fair price) and a transient part; the new mark is
   the fair plus transient price clipped to the limits; a move beyond the halt threshold
   starts a halt;
5. GARCH variance update from the realised mark return, drawdown and counters;
6. the waterfall (`engine.waterfall`): fund, then ADL, then bad debt.

Prices are carried as log marks relative to `price0` (`x`), cohorts in USD. `rollout` runs a
chunk of paths through `lax.scan` over time with the step `vmap`ped over paths inside; the
ADL stage runs under `lax.cond` only when some path of the chunk has a deficit, and fan-chart
histograms across the chunk's paths are accumulated in the carry, so nothing of size
`[paths, steps]` is ever built.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from engine.model import market, policies
from engine.model.cascade import run_cascade, run_cascade_whole
from engine.model.impact import impact
from engine.model.params import Params, Static
from engine.model.waterfall import auto_deleverage, pay_from_fund


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
    # Relaxed kernel only (None in the exact one): strength in [0, 1] of the current halt.
    halt_weight: jnp.ndarray | None = None


def init_state(params: Params, static: Static) -> SimState:
    """State at t0 of one path (identical for all paths of a policy point)."""
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
    )
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
        halt_weight=za if static.relaxed else None,
    )


def market_step(state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static):
    """Stages 1-5 and the fund of stage 6 for one path; leaves `state.deficit` for ADL.

    t: `[]` int step; shock: `[assets]` scheduled log shock; flow: `[assets]` USD.
    """
    mp, pol, book = params.market, params.policy, params.book
    sigma = jnp.sqrt(state.variance)
    x_fair = state.x_fair + market.exogenous_return(draws, sigma, shock, mp)
    x_trans = state.x_trans * mp.resilience
    halted = state.halt_left > 0
    slot = jnp.mod(t - pol.halt_window, static.max_window)
    x_ref = state.ring[:, slot]
    mmr = policies.maintenance_rate(book.mmr, sigma, mp.sigma0, pol)
    if static.relaxed:
        # A halt of strength w: the mark, the flow and the liquidations are the mix of a
        # halted (weight w) and an open market; w is 0 or 1 as the temperature goes to 0.
        w = jnp.where(halted, state.halt_weight, 0.0)
        lo_open, hi_open = policies.mark_limits(state.x_mark, x_ref, jnp.zeros_like(halted), pol)
        lo, hi = w * state.x_mark + (1 - w) * lo_open, w * state.x_mark + (1 - w) * hi_open
        flow0, queue = (1 - w) * (flow + state.queue), w * (state.queue + flow)
        open_ = 1.0 - w
        relax = {"temperature": params.temperature, "quantity0": policies.cap_leverage(book, pol)[0]}
    else:
        lo, hi = policies.mark_limits(state.x_mark, x_ref, halted, pol)
        flow0 = jnp.where(halted, 0.0, flow + state.queue)
        queue = jnp.where(halted, state.queue + flow, 0.0)
        open_ = ~halted
        relax = {}

    cascade_args = (
        state.quantity,
        state.bankrupt,
        flow0,
        x_fair + x_trans,
        lo,
        hi,
        sigma,
        mmr,
        open_,
        state.backstop_left,
        book,
        mp,
        pol,
        static.rounds,
    )
    if static.whole_only and not static.relaxed:
        c = run_cascade_whole(*cascade_args)
    else:
        c = run_cascade(*cascade_args, early_exit=not static.relaxed, **relax)
    dx = open_ * impact(c.flow, sigma, mp)
    x_fair = x_fair + mp.permanent * dx
    x_trans = x_trans + (1.0 - mp.permanent) * dx
    target = x_fair + x_trans
    x_mark = jnp.clip(target, lo, hi)
    halt_weight = state.halt_weight
    if static.relaxed:
        beyond = jnp.abs(target - x_ref) - pol.halt_threshold
        strength = jnp.where(halted, 0.0, jnp.clip(beyond / params.temperature + 0.5, 0.0, 1.0))
        trig = strength > 0
        halt_weight = jnp.where(trig, strength, state.halt_weight)
        halted_now = w
    else:
        trig = policies.halt_triggered(target, x_ref, halted, pol)
        halted_now = halted
    halt_left = jnp.where(trig, pol.halt_duration, jnp.maximum(state.halt_left - 1, 0))

    variance = market.garch_variance(state.variance, x_mark - state.x_mark, mp)
    ring = state.ring.at[:, jnp.mod(t, static.max_window)].set(x_mark)
    peak = jnp.maximum(state.peak, x_mark)
    f = pay_from_fund(state.fund, c.fund_inflow, c.shortfall, relax.get("temperature"))

    tot = state.totals
    finite = jnp.all(jnp.isfinite(x_mark)) & jnp.isfinite(f.fund) & jnp.all(jnp.isfinite(c.quantity))
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
    )
    return SimState(
        x_fair=x_fair,
        x_trans=x_trans,
        x_mark=x_mark,
        peak=peak,
        variance=variance,
        ring=ring,
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
        halt_weight=halt_weight,
    )


def adl_step(state: SimState, params: Params, temperature=None) -> SimState:
    """Stage 6 after the fund: ADL the step's deficit, the rest is bad debt (temperature:
    the relaxed kernel's, or None)."""
    price = params.market.price0 * jnp.exp(state.x_mark)
    r = auto_deleverage(
        state.quantity, state.bankrupt, price, state.deficit, params.book, params.policy, temperature
    )
    tot = state.totals
    return state._replace(
        quantity=r.quantity,
        deficit=jnp.zeros_like(state.deficit),
        totals=tot._replace(
            adl_absorbed=tot.adl_absorbed + r.absorbed,
            adl_notional=tot.adl_notional + r.notional,
            bad_debt=tot.bad_debt + r.bad_debt,
        ),
    )


def step(state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static) -> SimState:
    """One full step of one path (all six stages)."""
    temperature = params.temperature if static.relaxed else None
    return adl_step(market_step(state, draws, t, shock, flow, params, static), params, temperature)


class Word64(NamedTuple):
    """A whole number in [0, 2**64) as two uint32 words `[]`: seeds reach 2**63 and global path
    indices 10**10, while JAX's integers are 32-bit unless x64 is on (it is off by default)."""

    hi: jnp.ndarray
    lo: jnp.ndarray


def word64(value) -> Word64:
    """`value` as a `Word64`: a Python or NumPy integer in [0, 2**64), a `Word64`, or a traced
    non-negative integer scalar (which fits the low word)."""
    if isinstance(value, Word64):
        return value
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if not 0 <= value < 2**64:
            raise ValueError(f"{value} is not in [0, 2**64)")
        return Word64(np.uint32(value >> 32), np.uint32(value & 0xFFFFFFFF))
    return Word64(jnp.zeros((), jnp.uint32), jnp.asarray(value).astype(jnp.uint32))


def add_offsets(base: Word64, offsets: jnp.ndarray) -> Word64:
    """`base + offsets` with the carry into the high word (offsets: non-negative integers
    below 2**32, any shape; the words take their shape)."""
    lo = base.lo + offsets.astype(jnp.uint32)
    return Word64(base.hi + (lo < base.lo).astype(jnp.uint32), lo)


def path_keys(seed, start, n: int) -> jax.Array:
    """Keys `[n]` of global paths `start .. start+n-1`, a pure function of (seed, path index),
    so a path's numbers do not depend on chunking or devices.

    seed, start: anything `word64` takes, up to 2**64 - 1. The seed's key is threefry's key of
    the 64-bit seed (words hi, lo); a path's key hashes its 64-bit index (words hi, lo) with it,
    which for indices below 2**32 is `jax.random.fold_in(jax.random.key(seed), index)`.
    """
    s = word64(seed)
    seed_key = jnp.stack([jnp.asarray(s.hi, jnp.uint32), jnp.asarray(s.lo, jnp.uint32)])
    idx = add_offsets(word64(start), jnp.arange(n, dtype=jnp.uint32))
    data = jax.vmap(lambda hi, lo: threefry_2x32(seed_key, jnp.stack([hi, lo])))(idx.hi, idx.lo)
    return jax.random.wrap_key_data(data, impl="threefry2x32")


def step_keys(keys: jax.Array, t) -> jax.Array:
    """Per-path keys `[paths]` of step t."""
    return jax.vmap(jax.random.fold_in, (0, None))(keys, t)


def step_draws(keys: jax.Array, t, params: Params, static: Static, nudge=0.0) -> market.Draws:
    """The random numbers of step t for the paths of `keys` (`path_keys`), leading axis paths.

    nudge: `[]` traced; every draw is scaled by (1 + nudge * eps of the dtype), i.e. moved by
    about `nudge` ulps (the tipping-point probe, `engine.tipping`); 0 leaves them as drawn.
    """
    dtype = params.market.price0.dtype
    one = lambda k: market.draw(k, static.n_assets, params.market.tail_dof, dtype, static.dof_max)
    draws = jax.vmap(one)(step_keys(keys, t))
    scale = 1 + jnp.asarray(nudge, dtype) * jnp.finfo(dtype).eps
    return jax.tree_util.tree_map(lambda x: x * scale, draws)
