"""The ladder kernel: the exact kernel's step with the book held as liquidation ladders.

Stages 1-2 and 4-6 are those of `engine.model.kernel` (shared in `engine.model.stages`); the
cascade (stage 3) works on the rung groups of `engine.model.ladder`: per round a window of the
next `WINDOW` positions of each group, or for ranges beyond it a whole-group search, finds the
cohorts the round's price reaches, sums or prefix sums give their units and accounts, and the
fill of each round is the dense whole-position cascade's
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

import jax
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


def _any(x: jnp.ndarray) -> jnp.ndarray:
    """Whether any element of x (bool, any shape) is true, as `[]`."""
    return L.fold(x.reshape(-1), jnp.logical_or, False)


def _total(x: jnp.ndarray) -> jnp.ndarray:
    """Sum `[]` of x `[assets, groups]` in a fixed order."""
    return L.fold(L.fold(x))


def _by_side(x: jnp.ndarray, side: jnp.ndarray) -> jnp.ndarray:
    """Sum `[assets, groups]` into `[assets, 2]` (long, short)."""
    return jnp.stack([L.fold(jnp.where(side > 0, x, 0.0)), L.fold(jnp.where(side < 0, x, 0.0))], -1)


# Positions per group that a round of the windowed cascade looks at (`run_ladder(window=True)`).
WINDOW = 8


def _hits(st: _Step, level, price):
    """The window from `level` at `price` `[assets]`: (hit `[assets, groups, WINDOW]`, q, b, e,
    exhausted `[]`: some group's window was hit to its last position, so hits may lie beyond)."""
    s = st.lad.side[..., None]
    inside, u, q, b, e = L.window(st.lad, level, WINDOW)
    den = (1.0 - st.lad.side * st.mmr)[..., None]
    hit = inside & st.active[:, None, None] & (s * (price[:, None, None] - (-s * u) / den) <= 0)
    return hit, q, b, e, _any(L.fold(hit, jnp.logical_and, True))


def _round(st: _Step, c: _Rung, windowed: bool) -> _Rung:
    """One round: how far this round's price reaches into each group, the orders, the fill and
    the accounts of the newly hit cohorts. windowed: the hits are read from a window of
    `WINDOW` positions (cohort by cohort; a range beyond it sets `overflow`), else found by a
    whole-group search (`engine.model.ladder.first_false`) and summed by prefix sums."""
    lad, pol = st.lad, st.params.policy
    s = lad.side
    p_r = st.price(c.flow)
    if windowed:
        hit, q, b, e, exhausted = _hits(st, c.level, p_r)
        dq_i = jnp.where(hit, q, 0.0)
        level, at = c.level + L.fold(hit.astype(jnp.int32)), c.at
        dq, dqb, dqe = L.fold(dq_i), L.fold(dq_i * b), L.fold(dq_i * e)
    else:
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
    if windowed:
        short = L.fold(jnp.maximum(-(s[..., None] * dq_i * (fill[..., None] - b)), 0.0))
        over = exhausted
    else:
        short, over = L.shortfall(lad, c.level, level, c.at, fill, st.static)
    equity = s * (fill * dq - dqb)
    return _Rung(
        flow=flow,
        backstop_left=c.backstop_left - absorbed,
        level=level,
        at=at,
        liquidated=c.liquidated + _by_side(fill * dq, s),
        shortfall=c.shortfall + _by_side(short, s),
        trader_loss=c.trader_loss + _total(s * (dqe - dqb)),  # the traders lose the margin
        counterparty=c.counterparty + _total(s * (dqe - fill * dq)),
        fund_inflow=c.fund_inflow + _total(equity + short),
        backstop_qty=c.backstop_qty + phi * net,
        # the backstop pays p_r (1 - s d) per unit: sum of s dq p_r (1 - s d)
        backstop_cash=c.backstop_cash - phi * L.fold(p_r * (net - d * size)),
        busy=c.busy + _any(size > 0).astype(jnp.int32),
        overflow=c.overflow | _any(over),
    )


def run_ladder(
    level,
    flow0,
    x_base,
    lo,
    hi,
    sigma,
    mmr,
    active,
    backstop_left,
    params: Params,
    static: Static,
    windowed=False,
):
    """The cascade of one path on the ladder (`engine.model.cascade.run_cascade_whole`'s numbers).

    level: `[assets, groups]` int32; mmr: `[assets, groups]` rates in force; other arguments as
    `run_cascade`'s. Returns (Cascade with quantity and bankrupt None, new level, flag `[]`):
    with `windowed` (`_round`) the flag says that some range outran the window (rerun the step
    without), else that an equity split outran `engine.model.ladder.WINDOW` (the path goes to
    the dense kernel).
    """
    lad = params.ladder
    st = _Step(lad, mmr, active, x_base, lo, hi, sigma, params, static)
    z = jnp.zeros((), flow0.dtype)
    side2 = jnp.zeros((flow0.shape[0], 2), flow0.dtype)
    at = (None, None) if windowed else L.cum_at(lad, level)
    start = _Rung(
        flow0, backstop_left, level, at, side2, side2, z, z, z,
        jnp.zeros_like(flow0), z, jnp.zeros((), jnp.int32), jnp.zeros((), bool),
    )  # fmt: skip
    end = until_quiet(lambda c: _round(st, c, windowed), start, lambda c: c.busy, static.rounds)
    # cohorts still beyond their liquidation price when the rounds ran out (they carry over)
    p_end = st.price(end.flow)
    if windowed:
        hit, q, _, _, exhausted = _hits(st, end.level, p_end)
        left = L.fold(jnp.where(hit, q, 0.0))
        flag = end.overflow | exhausted
    else:
        crossed = L.crossed(lad, p_end, mmr, static)
        reach = jnp.where(active[:, None], jnp.maximum(crossed, end.level), end.level)
        left = L.between(L.cum_at(lad, reach), end.at)[..., 0]
        flag = end.overflow
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
        residual=L.fold(p_end * L.fold(left)),
    )
    return c, end.level, flag


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


class _Before(NamedTuple):
    """Stages 1-2 of one path and the cascade's inputs (`run_ladder`'s arguments in order)."""

    m: stages.Move
    queue: jnp.ndarray  # [assets] USD queued during a halt
    args: tuple  # level, flow0, x_base, lo, hi, sigma, mmr, active, backstop_left


def _before(state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static) -> _Before:
    """Stages 1-2: the market move, the breaker limits, the flow that meets the book."""
    pol, mp = params.policy, params.market
    m = stages.move_market(state, draws, t, shock, params, static)
    lo, hi = policies.mark_limits(state.x_mark, m.x_ref, m.halted, pol)
    flow0 = jnp.where(m.halted, 0.0, flow + state.queue)
    queue = jnp.where(m.halted, state.queue + flow, 0.0)
    mmr = policies.maintenance_rate(params.ladder.mmr, m.sigma, mp.sigma0, pol)
    args = (state.level, flow0, m.x_fair + m.x_trans, lo, hi, m.sigma, mmr, ~m.halted, state.backstop_left)
    return _Before(m, queue, args)


def _after(state: SimState, draws, t, b: _Before, cascade: tuple, params: Params, static: Static) -> SimState:
    """Stages 4-5 and the fund after the cascade (`run_ladder`'s result); flags the path at the
    first step it needs ADL or outran a split window."""
    c, level, overflow = cascade
    pol, m = params.policy, b.m
    _, _, _, lo, hi, _, _, open_, _ = b.args
    mk = stages.move_mark(m, c, open_, lo, hi, params)
    halt_left = stages.count_halt(state, policies.halt_triggered(mk.target, m.x_ref, m.halted, pol), params)
    f = pay_from_fund(state.fund, c.fund_inflow, c.shortfall)
    new = stages.close_step(state, draws, t, c, f, mk, (m.halted, halt_left, b.queue), params, static)
    needs_dense = overflow | ((pol.adl_rule > 0) & jnp.any(f.deficit > 0))
    return new._replace(
        level=level, fallback=jnp.where(needs_dense, jnp.minimum(state.fallback, t), state.fallback)
    )


def market_step(
    state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static
) -> SimState:
    """Stages 1-5 and the fund of one path (as `engine.model.kernel.market_step`) on the ladder."""
    b = _before(state, draws, t, shock, flow, params, static)
    return _after(state, draws, t, b, run_ladder(*b.args, params, static), params, static)


def _reaches(level, flow0, x_base, lo, hi, sigma, mmr, active, backstop_left, params: Params) -> jnp.ndarray:
    """Whether the step's first price reaches the next cohort of some group `[]` bool (else the
    cascade does nothing: `_quiet`)."""
    lad = params.ladder
    st = _Step(lad, mmr, active, x_base, lo, hi, sigma, params, None)
    s = lad.side
    p = st.price(flow0)[:, None]
    hit = s * (p - (-s * L.take(lad.u, level)) / (1.0 - s * mmr)) <= 0
    return _any(hit & (level < lad.end) & active[:, None])


def _quiet(args: tuple) -> tuple:
    """`run_ladder`'s result `[paths, ...]` for paths whose first price reaches no cohort."""
    level, flow0, _, _, _, _, _, _, backstop_left = args
    z = jnp.zeros_like(backstop_left)
    c = Cascade(
        None, None, flow0, jnp.zeros(flow0.shape + (2,), flow0.dtype), jnp.zeros(flow0.shape + (2,), flow0.dtype),
        z, z, z, backstop_left, jnp.zeros_like(flow0), z, jnp.zeros(z.shape, jnp.int32), z,
    )  # fmt: skip
    return c, level, jnp.zeros(z.shape, bool)


# Batch shares for which a compacted cascade is compiled (the busiest steps run all paths): the
# windowed cascade, and the whole-group search for the fewer paths whose range outran the window.
# Measured (W1 book, 8,192 x 288): with (32, 4) and (64,) instead, compile 20 s instead of 25-28 s
# but 256 cohorts 1.69 M path-steps/s instead of 2.21 M, 4,096 cohorts 175 k instead of 486 k.
WINDOWED_SHARES = (128, 32, 8, 2)
SEARCHED_SHARES = (512, 64, 8)


def _for_some(mask, run, args: tuple, others, shares: tuple[int, ...]):
    """`run(*args)` (batched) for the paths of `mask` `[paths]`, `others` (same structure) for the
    rest: the masked paths are gathered into a batch of 1/k of the paths (k in `shares`, the
    least batch that holds them) or all, so a step pays for the paths that need the work."""
    n_paths = mask.shape[0]
    sizes = [n_paths // k for k in shares if n_paths // k >= 8]

    def compacted(size):
        def go(args):
            idx = jnp.nonzero(mask, size=size, fill_value=0)[0]
            done = run(*jax.tree_util.tree_map(lambda x: x[idx], args))
            return jax.tree_util.tree_map(lambda o, d: o.at[idx].set(d), others, done)

        return go

    n = jnp.sum(mask)
    which = jnp.where(n == 0, 0, 1 + jnp.sum(n > jnp.asarray(sizes, jnp.int32)))
    full = lambda a: jax.tree_util.tree_map(lambda o, d: jnp.where(_rows(mask, o), d, o), others, run(*a))
    return jax.lax.switch(which, [lambda a: others, *map(compacted, sizes), full], args)


def _rows(mask, x):
    """mask `[paths]` broadcast against x `[paths, ...]`."""
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def market_batch(states: SimState, draws, t, shock, flow, params: Params, static: Static) -> SimState:
    """`market_step` of a batch of paths (leading axis). The cascade runs only for the paths
    whose price reaches a cohort this step (W1: 3-7% of path-steps), windowed (`run_ladder`),
    and with whole-group searches only for those whose range outran the window. A path's numbers do not
    depend on which batch computed them."""
    per_path = (0, 0, None, None, None, None, None)
    b = jax.vmap(_before, per_path)(states, draws, t, shock, flow, params, static)
    busy = jax.vmap(lambda *a: _reaches(*a, params))(*b.args)
    windowed = jax.vmap(lambda *a: run_ladder(*a, params, static, windowed=True))
    searched = jax.vmap(lambda *a: run_ladder(*a, params, static))
    quiet = _quiet(b.args)
    cascade = _for_some(busy, windowed, b.args, quiet, WINDOWED_SHARES)
    c, level, outran = cascade
    cascade = _for_some(busy & outran, searched, b.args, (c, level, jnp.zeros_like(outran)), SEARCHED_SHARES)
    return jax.vmap(_after, (0, 0, None, 0, 0, None, None))(states, draws, t, b, cascade, params, static)


def adl_step(state: SimState, params: Params) -> SimState:
    """Stage 6 after the fund with ADL off: the deficit is bad debt. (With an ADL rule on, a
    path with a deficit was flagged by `market_step`; its numbers come from the dense kernel.)"""
    tot = state.totals
    bad = jnp.where(params.policy.adl_rule == 0, jnp.sum(state.deficit), 0.0)
    return state._replace(
        deficit=jnp.zeros_like(state.deficit), totals=tot._replace(bad_debt=tot.bad_debt + bad)
    )


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
