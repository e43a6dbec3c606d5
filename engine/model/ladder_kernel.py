"""The ladder kernel: the exact kernel's step with the book held as liquidation ladders.

Stages 1-2 and 4-6 are those of `engine.model.kernel` (shared in `engine.model.stages`); the
cascade (stage 3) works on the rung groups of `engine.model.ladder`: per round one binary
search per group finds the cohorts the round's price reaches, prefix sums give their units and
accounts, and the fill of each round is the dense whole-position cascade's
(`engine.model.cascade.run_cascade_whole`), so the two give the same numbers to the rounding of
their sums. A path's book is its levels `[assets, groups]`; nothing per cohort is carried.

What the ladder does not represent, it flags rather than approximates: from the first step
where a path needs ADL (a deficit with an ADL rule on: ADL closes cohorts in the middle of a
group), or where an equity split's uncertain band outruns `engine.model.ladder.WINDOW`,
`SimState.fallback` holds that step and the path's numbers are taken from the dense kernel
(`engine.sim.fallback`). With ADL off the deficit is bad debt, as in the dense kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from engine.model import ladder as L
from engine.model import market, outputs, policies, stages
from engine.model.cascade import Cascade, backstop_share, until_quiet
from engine.model.impact import impact
from engine.model.params import Params, Static
from engine.model.stages import SimState
from engine.model.waterfall import pay_from_fund

# `SimState.fallback` of a path the ladder computed exactly to the end.
FALLBACK_NEVER = 2**30


class _Rung(NamedTuple):
    """The carry of the ladder cascade's rounds (USD unless stated)."""

    flow: jnp.ndarray  # [assets]
    backstop_left: jnp.ndarray  # []
    level: jnp.ndarray  # [assets, groups] int32 ladder positions liquidated so far
    at: tuple  # `ladder.cum_at(level)`
    liquidated: jnp.ndarray  # [assets, 2]
    shortfall: jnp.ndarray  # [assets, 2]
    trader_loss: jnp.ndarray
    counterparty: jnp.ndarray
    fund_inflow: jnp.ndarray
    backstop_qty: jnp.ndarray  # [assets] units
    backstop_cash: jnp.ndarray
    busy: jnp.ndarray  # [] int32 rounds with a liquidation
    overflow: jnp.ndarray  # [] bool: an equity split outran the window


class _Step(NamedTuple):
    """What one step's rounds share."""

    lad: L.Ladder
    mmr: jnp.ndarray  # [assets, groups] maintenance rate in force
    active: jnp.ndarray  # [assets] bool
    x_base: jnp.ndarray
    lo: jnp.ndarray
    hi: jnp.ndarray
    sigma: jnp.ndarray
    params: Params
    static: Static

    def price(self, flow):
        """Mark price `[assets]` (USD) after cumulative flow `flow` (as the dense cascade's)."""
        mp = self.params.market
        return mp.price0 * jnp.exp(jnp.clip(self.x_base + impact(flow, self.sigma, mp), self.lo, self.hi))


def _by_side(x: jnp.ndarray, side: jnp.ndarray) -> jnp.ndarray:
    """Sum `[assets, groups]` into `[assets, 2]` (long, short)."""
    return jnp.stack([jnp.sum(jnp.where(side > 0, x, 0.0), -1), jnp.sum(jnp.where(side < 0, x, 0.0), -1)], -1)


def _round(st: _Step, c: _Rung) -> _Rung:
    """One round: how far this round's price reaches into each group, the orders, the fill and
    the accounts of the newly hit cohorts."""
    lad, pol = st.lad, st.params.policy
    s = lad.side
    p_r = st.price(c.flow)
    reach = L.crossed(lad, p_r, st.mmr, st.static)
    level = jnp.where(st.active[:, None], jnp.maximum(c.level, reach), c.level)
    at = L.cum_at(lad, level)
    dq, dqb, dqe = jnp.unstack(L.between(at, c.at), axis=-1)
    units = _by_side(dq, s)
    net, size = units[:, 0] - units[:, 1], units[:, 0] + units[:, 1]
    orders = p_r * net
    absorbed, phi = backstop_share(orders, c.backstop_left)
    flow = c.flow + (1.0 - phi) * orders
    d = pol.backstop_discount
    fill = phi * p_r[:, None] * (1.0 - s * d) + (1.0 - phi) * st.price(flow)[:, None]
    short, over = L.shortfall(lad, c.level, level, c.at, fill, st.static)
    equity = s * (fill * dq - dqb)
    return _Rung(
        flow=flow,
        backstop_left=c.backstop_left - absorbed,
        level=level,
        at=at,
        liquidated=c.liquidated + _by_side(fill * dq, s),
        shortfall=c.shortfall + _by_side(short, s),
        trader_loss=c.trader_loss + jnp.sum(s * (dqe - dqb)),  # the traders lose the margin
        counterparty=c.counterparty + jnp.sum(s * (dqe - fill * dq)),
        fund_inflow=c.fund_inflow + jnp.sum(equity + short),
        backstop_qty=c.backstop_qty + phi * net,
        # the backstop pays p_r (1 - s d) per unit: sum of s dq p_r (1 - s d)
        backstop_cash=c.backstop_cash - phi * jnp.sum(p_r * (net - d * size)),
        busy=c.busy + jnp.any(size > 0).astype(jnp.int32),
        overflow=c.overflow | jnp.any(over),
    )


def run_ladder(level, flow0, x_base, lo, hi, sigma, mmr, active, backstop_left, params: Params, static: Static):
    """The cascade of one path on the ladder (`engine.model.cascade.run_cascade_whole`'s numbers).

    level: `[assets, groups]` int32; mmr: `[assets, groups]` rates in force; other arguments as
    `run_cascade`'s. Returns (Cascade with quantity and bankrupt None, new level, overflow `[]`).
    """
    lad = params.ladder
    st = _Step(lad, mmr, active, x_base, lo, hi, sigma, params, static)
    z = jnp.zeros((), flow0.dtype)
    side2 = jnp.zeros((flow0.shape[0], 2), flow0.dtype)
    start = _Rung(
        flow0, backstop_left, level, L.cum_at(lad, level), side2, side2, z, z, z,
        jnp.zeros_like(flow0), z, jnp.zeros((), jnp.int32), jnp.zeros((), bool),
    )  # fmt: skip
    end = until_quiet(lambda c: _round(st, c), start, lambda c: c.busy, static.rounds)
    # cohorts still beyond their liquidation price when the rounds ran out (they carry over)
    p_end = st.price(end.flow)
    reach = jnp.where(active[:, None], jnp.maximum(L.crossed(lad, p_end, mmr, static), end.level), end.level)
    left = L.between(L.cum_at(lad, reach), end.at)[..., 0]
    c = Cascade(
        quantity=None,
        bankrupt=None,
        flow=end.flow,
        liquidated=end.liquidated,
        shortfall=end.shortfall,
        trader_loss=end.trader_loss,
        counterparty=end.counterparty,
        fund_inflow=end.fund_inflow,
        backstop_left=end.backstop_left,
        backstop_qty=end.backstop_qty,
        backstop_cash=end.backstop_cash,
        rounds=end.busy,
        residual=jnp.sum(p_end * jnp.sum(left, -1)),
    )
    return c, end.level, end.overflow


def init_state(params: Params, static: Static) -> SimState:
    """State at t0 of one path: the dense kernel's, with the book as ladder levels (nothing
    liquidated) instead of per-cohort arrays. `params` must be `prepare`d."""
    state = stages.init_state(params, static)
    return state._replace(
        quantity=None,
        bankrupt=None,
        level=params.ladder.start,
        fallback=jnp.asarray(FALLBACK_NEVER, jnp.int32),
    )


def market_step(state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static) -> SimState:
    """Stages 1-5 and the fund (as `engine.model.kernel.market_step`) on the ladder; flags the
    path (`SimState.fallback`) at the first step it needs ADL or outruns a split window."""
    pol, mp = params.policy, params.market
    m = stages.move_market(state, draws, t, shock, params, static)
    lo, hi = policies.mark_limits(state.x_mark, m.x_ref, m.halted, pol)
    flow0 = jnp.where(m.halted, 0.0, flow + state.queue)
    queue = jnp.where(m.halted, state.queue + flow, 0.0)
    open_ = ~m.halted
    mmr = policies.maintenance_rate(params.ladder.mmr, m.sigma, mp.sigma0, pol)
    c, level, overflow = run_ladder(
        state.level, flow0, m.x_fair + m.x_trans, lo, hi, m.sigma, mmr, open_, state.backstop_left, params, static
    )
    mk = stages.move_mark(m, c, open_, lo, hi, params)
    halt_left = stages.count_halt(state, policies.halt_triggered(mk.target, m.x_ref, m.halted, pol), params)
    f = pay_from_fund(state.fund, c.fund_inflow, c.shortfall)
    new = stages.close_step(state, draws, t, c, f, mk, (m.halted, halt_left, queue), params, static)
    needs_dense = overflow | ((pol.adl_rule > 0) & jnp.any(f.deficit > 0))
    return new._replace(level=level, fallback=jnp.where(needs_dense, jnp.minimum(state.fallback, t), state.fallback))


def adl_step(state: SimState, params: Params) -> SimState:
    """Stage 6 after the fund with ADL off: the deficit is bad debt. (With an ADL rule on, a
    path with a deficit was flagged by `market_step`; its numbers come from the dense kernel.)"""
    tot = state.totals
    bad = jnp.where(params.policy.adl_rule == 0, jnp.sum(state.deficit), 0.0)
    return state._replace(deficit=jnp.zeros_like(state.deficit), totals=tot._replace(bad_debt=tot.bad_debt + bad))


def extract(state: SimState, params: Params, static: Static) -> dict[str, jnp.ndarray]:
    """Per-path outputs of a final ladder state (`engine.model.outputs`), and `fallback_step`
    `[]` int32 (`FALLBACK_NEVER` if the ladder computed the path exactly)."""
    lad, mp = params.ladder, params.market
    fair = mp.price0 * jnp.exp(state.x_fair + state.x_trans)
    mmr = policies.maintenance_rate(lad.mmr, jnp.sqrt(state.variance), mp.sigma0, params.policy)
    at = L.cum_at(lad, state.level)
    open_units = L.between(L.cum_at(lad, lad.end), at)[..., 0]
    reach = jnp.maximum(L.crossed(lad, fair, mmr, static), state.level)
    deferred = L.between(L.cum_at(lad, reach), at)[..., 0]
    out = outputs.assemble(state, params, jnp.sum(open_units, -1), jnp.sum(fair * jnp.sum(deferred, -1)))
    return out | {"fallback_step": state.fallback}

