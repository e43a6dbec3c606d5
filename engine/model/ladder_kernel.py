"""The ladder kernel: the exact kernel's step with the book held as liquidation ladders.

Stages 1-2 and 4-6 are those of `engine.model.kernel` (the step's skeleton,
`engine.model.skeleton`, with this module's book form `LADDER`); the cascade (stage 3) works on
the rung groups of `engine.model.ladder`: per round a search of each group's grid finds the
cohorts the round's price reaches, prefix sums give their units and accounts, and the fill of
each round is the dense whole-position cascade's (`engine.model.cascade.run_cascade_whole`), so
the two give the same numbers to the rounding of their sums. A path's book is its levels
`[assets, groups]`; nothing per cohort is carried. With voluntary closing
(`engine.model.derisk`) every open cohort of a side holds the same share of its t0 units
(`SimState.held`, `[assets, 2]`), so a range's prefix sums are scaled by its side's share, and
the step's liquidations are tallied as they happen (`engine.model.ladder.tallied`).

The queue's ADL runs on the ladder (`engine.model.ladder_adl`: a path records each event's
threshold, not the cohorts it closed). What the ladder does not represent, it flags rather than
approximates: from the first step where a path needs ADL it cannot hold (pro rata), where an
equity split's uncertain band or a search outruns `engine.model.ladder.WINDOW`, or (with
voluntary closing) whose cascade reaches a cohort ADL closed, `SimState.fallback` holds that step
and the path's numbers are taken from the dense kernel (`engine.sim.fallback`). Without voluntary
closing, a step whose cascade reaches a closed cohort runs again on the path's open book
(`_past_closed`).
Cross-margin accounts join each round's orders from their shared table
(`engine.model.account_book`); a path carries which account cohorts are still open and which
of their legs ADL closed.
Stop orders are rung groups of their own, whose units join the orders and close with no
margin and no waterfall (`engine.model.ladder_stops`).

The module stays whole: one path's rounds (`run_ladder`) and a batch's (`run_batch`, where only
busy paths run the cascade) share the rounds' private carry and stages (`_Rung`, `_Hit`,
`_head`, `_split`, `_tail`), which would otherwise be imported across modules. Those one-path
stages, the step's start and end and the state at t0 are `jax.jit` functions: a run traces a
kernel per chunk size (its chunks', the tipping probe's) and the cascade twice (`_past_closed`),
and each reuses their traces (XLA inlines them: the numbers are the same).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model import account_book, derisk, ladder_adl, outputs, policies, skeleton, stages
from engine.model import ladder as L
from engine.model import tally as T
from engine.model.cascade import Cascade, CascadeInputs, backstop_share, until_quiet, with_settled
from engine.model.impact import impact
from engine.model.ladder_stops import liquidating, stop_dies, stop_rates, with_stop_notional
from engine.model.params import Params, Static
from engine.model.stages import SimState
from engine.model.waterfall import Fund

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
    pending: account_book.Hits | None = None  # the accounts hit so far, settled after the rounds
    stops: jnp.ndarray | None = None  # [assets, 2] with stop orders: their notional at fill


class Inputs(NamedTuple):
    """One path's step as the ladder cascade takes it. market: the step as the dense cascade
    takes it (`engine.model.cascade.CascadeInputs`), without the cohorts' quantity and bankruptcy
    price, with `mmr` the rates in force on the rung groups `[assets, groups]`; level: `[assets,
    groups]` int32 ladder positions liquidated so far; alive: `[accounts]` bool account cohorts
    still open, gap: `[collateral]` the step's depeg gap (each None without them); held:
    `[assets, groups]` the share of their t0 units the group's open cohorts hold after the
    step's voluntary closing (None without it); adl: the path's ADL record
    (`engine.model.ladder_adl.Record`)."""

    market: CascadeInputs
    level: jnp.ndarray
    alive: jnp.ndarray | None = None
    gap: jnp.ndarray | None = None
    held: jnp.ndarray | None = None
    adl: ladder_adl.Record | None = None


class Result(NamedTuple):
    """`run_ladder`'s result of one path: the cascade (quantity and bankrupt None), the new
    levels `[assets, groups]`, the accounts still open `[accounts]` (None without), the flag
    `[]` that an equity split or a search outran `engine.model.ladder.WINDOW`, whether the
    cascade reached a cohort ADL closed `[]` (then `market_batch` runs the step again on the
    path's open book, `_past_closed`), and the ADL record's `first` and `units` `[assets,
    groups]` after the step (`engine.model.ladder_adl.Record`)."""

    cascade: Cascade
    level: jnp.ndarray
    alive: jnp.ndarray | None
    flag: jnp.ndarray
    reached: jnp.ndarray
    first: jnp.ndarray
    units: jnp.ndarray


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
    # with accounts: what prices their equity, and those that can be liquidated this step
    # (open, every leg's market trading) `[accounts]` bool
    marks: account_book.Marks | None = None
    live: jnp.ndarray | None = None
    held: jnp.ndarray | None = None  # `Inputs.held`
    cut: jnp.ndarray | None = None  # with accounts: the legs ADL closed (`ladder_adl.Record.cut`)
    # with stop orders: the rate in force on their cohorts `[assets, groups]` (`stop_rates`)
    stop_mmr: jnp.ndarray | None = None

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


def _held(held, x: jnp.ndarray) -> jnp.ndarray:
    """x `[assets, groups, ...]`, linear in the cohorts' t0 units, at the units they still hold:
    scaled by `held` `[assets, groups]` (`Inputs.held`); x itself without voluntary closing."""
    if held is None:
        return x
    return x * held.reshape(held.shape + (1,) * (x.ndim - 2))


def _per_group(lad: L.Ladder, held) -> jnp.ndarray | None:
    """The share `[assets, groups]` of each group's side in `held` `[assets, 2]` (long, short)."""
    if held is None:
        return None
    return jnp.where(lad.side > 0, held[:, :1], held[:, 1:])


def _by_side(x: jnp.ndarray, side: jnp.ndarray) -> jnp.ndarray:
    """Sum `[assets, groups]` into `[assets, 2]` (long, short)."""
    return jnp.stack([L.fold(jnp.where(side > 0, x, 0.0)), L.fold(jnp.where(side < 0, x, 0.0))], -1)


class _Hit(NamedTuple):
    """A round up to the split of the liquidations' equity (USD unless stated)."""

    p_r: jnp.ndarray  # [assets] the round's price
    level: jnp.ndarray  # [assets, groups] int32 after the round
    at: tuple  # `ladder.cum_at(level)`
    dq: jnp.ndarray  # [assets, groups] units hit
    dqb: jnp.ndarray  # [assets, groups] sum of q b
    dqe: jnp.ndarray  # [assets, groups] sum of q e
    net: jnp.ndarray  # [assets] long minus short units hit
    size: jnp.ndarray  # [assets] units hit
    absorbed: jnp.ndarray  # [] by the backstop
    phi: jnp.ndarray  # [assets] the backstop's share
    flow: jnp.ndarray  # [assets] cumulative flow after the round
    fill: jnp.ndarray  # [assets, groups]
    short: jnp.ndarray  # [assets, groups] shortfall (exact unless `wide`)
    wide: jnp.ndarray  # [assets, groups] bool: a cohort beyond the first window may be under water
    over: jnp.ndarray  # [] bool: a search outran its window (`engine.model.ladder.find`)
    # with accounts: the round's new hits `[accounts]` bool (`engine.model.account_book.hits`)
    accounts: jnp.ndarray | None = None


@jax.jit
def _head(st: _Step, c: _Rung) -> _Hit:
    """A round up to the equity split: how far the round's price reaches into each group (a
    search, `engine.model.ladder.crossed`), the units and accounts of the newly hit cohorts
    (prefix sums), the orders, the fill, and the shortfall over the first `WINDOW` new positions
    (`engine.model.ladder.band`; `wide` where that is not all)."""
    lad, pol = st.lad, st.params.policy
    s = lad.side
    p_r = st.price(c.flow)
    reach, unsure = L.crossed(lad, p_r, st.mmr, c.level)
    level = jnp.where(st.active[:, None], reach, c.level)
    at = L.cum_at(lad, level)
    dq, dqb, dqe = jnp.unstack(_held(st.held, L.between(at, c.at)), axis=-1)
    units = _by_side(dq, s)
    hit = None
    if st.live is not None:
        can = st.live & ~c.pending.hit
        new, acc_units = account_book.hits(lad.accounts, st.params, st.marks, can, p_r, st.cut)
        units = units + acc_units
        hit = new
    net, size = units[:, 0] - units[:, 1], units[:, 0] + units[:, 1]
    orders = p_r * net
    absorbed, phi = backstop_share(orders, c.backstop_left)
    flow = c.flow + (1.0 - phi) * orders
    d = pol.backstop_discount
    fill = phi * p_r[:, None] * (1.0 - s * d) + (1.0 - phi) * st.price(flow)[:, None]
    short, wide = L.band(lad, c.level, level, fill)
    short, wide = _held(st.held, liquidating(lad, short)), liquidating(lad, wide)
    over = _any(unsure & st.active[:, None]) | stop_dies(lad, st.stop_mmr, p_r, c.level, st.active)
    return _Hit(p_r, level, at, dq, dqb, dqe, net, size, absorbed, phi, flow, fill, short, wide, over, hit)


@jax.jit
def _split(st: _Step, c: _Rung, h: _Hit) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(shortfall `[assets, groups]`, over `[]`) of a round: where the first window did not cover
    every cohort that may be under water, the search's (`engine.model.ladder.shortfall`)."""
    exact, outran = L.shortfall(st.lad, c.level, h.level, c.at, h.fill)
    return jnp.where(h.wide, _held(st.held, exact), h.short), h.over | _any(h.wide & outran)


@jax.jit
def _tail(st: _Step, c: _Rung, h: _Hit, short, over) -> _Rung:
    """The round's accounts from its hits and its shortfall `[assets, groups]`."""
    lad, d = st.lad, st.params.policy.backstop_discount
    s, dq, fill = lad.side, h.dq, h.fill
    equity = s * (fill * dq - h.dqb)
    pend = c.pending
    if h.accounts is not None:
        # every leg of the round's accounts fills as the round's cohorts of its asset and side
        sides = jnp.array([1.0, -1.0], fill.dtype)
        p_next = st.price(h.flow)[:, None]
        acc_fill = h.phi * h.p_r[:, None] * (1.0 - sides * d) + (1.0 - h.phi) * p_next
        pend = account_book.record(pend, c.busy, h.accounts, acc_fill, h.p_r)
    return _Rung(
        flow=h.flow,
        backstop_left=c.backstop_left - h.absorbed,
        level=h.level,
        at=h.at,
        liquidated=c.liquidated + _by_side(liquidating(lad, fill * dq), s),
        shortfall=c.shortfall + _by_side(short, s),
        # the traders lose the margin (a stop order closes with no margin and no waterfall)
        trader_loss=c.trader_loss + _total(liquidating(lad, s * (h.dqe - h.dqb))),
        counterparty=c.counterparty + _total(liquidating(lad, s * (h.dqe - fill * dq))),
        fund_inflow=c.fund_inflow + _total(liquidating(lad, equity + short)),
        backstop_qty=c.backstop_qty + h.phi * h.net,
        # the backstop pays p_r (1 - s d) per unit: sum of s dq p_r (1 - s d)
        backstop_cash=c.backstop_cash - h.phi * L.fold(h.p_r * (h.net - d * h.size)),
        busy=c.busy + _any(h.size > 0).astype(jnp.int32),
        overflow=c.overflow | over,
        pending=pend,
        stops=None if c.stops is None else c.stops + _by_side(jnp.where(lad.stop, fill * dq, 0.0), s),
    )


def _round(st: _Step, c: _Rung) -> _Rung:
    """One round of one path (`_head`, `_split`, `_tail`)."""
    h = _head(st, c)
    return _tail(st, c, h, *_split(st, c, h))


@jax.jit
def _step(inp: Inputs, params: Params) -> _Step:
    """What the rounds of one path's step share (`Inputs`)."""
    marks = live = cut = None
    if inp.alive is not None:
        cut = inp.adl.cut
        marks = account_book.marks(params, inp.market.sigma, inp.gap, inp.market.active)
        live = account_book.live(params.ladder.accounts, inp.alive, marks, cut)
    return _Step(
        params.ladder,
        inp.market.mmr,
        inp.market.active,
        inp.market.x_base,
        inp.market.lo,
        inp.market.hi,
        inp.market.sigma,
        params,
        marks,
        live,
        inp.held,
        cut,
        stop_rates(params, inp.market.sigma),
    )


@partial(jax.jit, static_argnums=2)
def _start(inp: Inputs, params: Params, rounds: int) -> tuple[_Step, _Rung]:
    """The step's shared values and the rounds' first carry of one path; rounds: the most
    rounds of a step (`Static.rounds`)."""
    st = _step(inp, params)
    flow0 = inp.market.flow0
    z = jnp.zeros((), flow0.dtype)
    side2 = jnp.zeros((flow0.shape[0], 2), flow0.dtype)
    at = L.cum_at(st.lad, inp.level)
    pend = None if inp.alive is None else account_book.no_hits(st.lad.accounts, rounds)
    stops = None if st.lad.stop is None else side2
    start = _Rung(
        flow0, inp.market.backstop_left, inp.level, at, side2, side2, z, z, z,
        jnp.zeros_like(flow0), z, jnp.zeros((), jnp.int32), jnp.zeros((), bool), pend, stops,
    )  # fmt: skip
    return st, start


@jax.jit
def _finish(st: _Step, inp: Inputs, end: _Rung) -> Result:
    """`run_ladder`'s result from the last round's carry: the cohorts still beyond their
    liquidation price when the rounds ran out carry over (`Cascade.residual`); the accounts hit
    in the rounds are settled (`_settle`); with voluntary closing the step's liquidations are
    tallied (`_tally_step`)."""
    lad, active = st.lad, st.active
    p_end = st.price(end.flow)
    crossed, unsure = L.crossed(lad, p_end, st.mmr, end.level)
    reach = jnp.where(active[:, None], crossed, end.level)
    left = _held(st.held, liquidating(lad, L.between(L.cum_at(lad, reach), end.at)[..., 0]))
    flag = (
        end.overflow | _any(unsure & active[:, None]) | stop_dies(lad, st.stop_mmr, p_end, end.level, active)
    )
    # a cohort closed by ADL within the reach counts in the prefix sums: the step is run again on
    # the open book (`_past_closed`); with voluntary closing the path goes to the dense kernel
    reached = ladder_adl.reached(inp.adl, reach)
    if st.held is not None:
        flag, reached = flag | reached, jnp.zeros_like(reached)
    done = (reached, inp.adl.first, inp.adl.units)
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
        tally=with_stop_notional(
            None if st.held is None else _tally_step(st.lad, st.held, inp.level, end.level), end.stops
        ),
    )
    if inp.alive is None:
        return Result(c, end.level, None, flag, *done)
    return _settle(st, inp, end, c, p_end, flag, done)


def _settle(st: _Step, inp: Inputs, end: _Rung, c: Cascade, p_end, flag, done: tuple) -> Result:
    """`_finish` with accounts: the accounts hit in the rounds closed at their fills
    (`engine.model.accounts.settle`, the step's account tally in `Cascade.tally`), and those
    still under water at the last marks `p_end` `[assets]` in the residual."""
    tab, params = st.lad.accounts, st.params
    pend = end.pending
    # the step's isolated tally, with voluntary closing, is the accounts' start
    start = T.zero(p_end.shape[0], p_end.dtype) if c.tally is None else c.tally
    r = account_book.settle(tab, params, st.marks, pend, start, st.cut)
    late = account_book.left(tab, params, st.marks, st.live & ~pend.hit, p_end, st.cut)
    return Result(with_settled(c, r, late), end.level, inp.alive & ~pend.hit, flag, *done)


def _tally_step(lad: L.Ladder, held, before, after) -> T.Tally:
    """The tally (`engine.model.tally`) of the cohorts liquidated at ladder positions [before,
    after) `[assets, groups]` of each group (a step's, or a path's from each group's start), at
    the units they held (`Inputs.held`, None: their t0 units); its `largest_loss` is that of
    every cohort liquidated before `after` (a running maximum either way)."""
    sums, worst = L.tallied(lad, before, after)
    sums = _held(held, sums)
    positions = L.fold(sums[..., 0])
    by_bucket = _total(jnp.moveaxis(sums[..., 1:], -1, 0))  # [2 buckets] entry, then loss
    entry, loss = jnp.split(by_bucket, 2)
    zero = T.zero(positions.shape[0], positions.dtype)
    return T.liquidations(
        zero, entry, loss, jnp.eye(entry.shape[0], dtype=entry.dtype), positions, worst, T.ISOLATED
    )


def run_ladder(inp: Inputs, params: Params, static: Static) -> Result:
    """The cascade of one path on the ladder (`engine.model.cascade.run_cascade_whole`'s numbers,
    and with accounts `run_cascade`'s), `Inputs` -> `Result`: the flag says that an equity split
    or a search outran `engine.model.ladder.WINDOW` (the path goes to the dense kernel)."""
    st, start = _start(inp, params, static.rounds)
    end = until_quiet(lambda c: _round(st, c), start, lambda c: c.busy, static.rounds)
    return _finish(st, inp, end)


def run_batch(args: Inputs, params: Params, static: Static) -> Result:
    """`run_ladder` of a batch of paths (`Inputs` with a leading path axis), with the same numbers
    per path: the search for the shortfall's sure prefix (`_split`) runs only in the rounds
    where some path of the batch needs it."""
    per_path = lambda f: jax.vmap(lambda a, *rest: f(*_start(a, params, static.rounds), *rest))
    begin = per_path(lambda st, c: c)(args)
    head = per_path(lambda st, _, c: _head(st, c))
    split = per_path(lambda st, _, c, h: _split(st, c, h))
    tail = per_path(lambda st, _, c, h, short, over: _tail(st, c, h, short, over))

    def more(carry):
        i, c = carry
        return (i < static.rounds) & jnp.any(c.busy == i)

    def body(carry):
        i, c = carry
        h = head(args, c)
        short, over = jax.lax.cond(jnp.any(h.wide), lambda: split(args, c, h), lambda: (h.short, h.over))
        new = tail(args, c, h, short, over)
        # a path whose last round had no hits is done (as `until_quiet` under vmap)
        return i + 1, jax.tree_util.tree_map(lambda n, o: jnp.where(_rows(c.busy == i, n), n, o), new, c)

    end = jax.lax.while_loop(more, body, (jnp.zeros((), jnp.int32), begin))[1]
    return jax.vmap(lambda a, c: _finish(_step(a, params), a, c))(args, end)


@partial(jax.jit, static_argnums=1)
def init_state(params: Params, static: Static) -> SimState:
    """State at t0 of one path: the dense kernel's, with the book as ladder levels (nothing
    liquidated) instead of per-cohort arrays. `params` must be `prepare`d."""
    state = stages.init_state(params, static)
    tab = params.ladder.accounts
    return state._replace(
        quantity=None,
        bankrupt=None,
        liquidated_units=None,
        accounts=None,
        level=params.ladder.start,
        fallback=jnp.asarray(FALLBACK_NEVER, jnp.int32),
        alive=None if tab is None else account_book.opened(tab),
        held=jnp.ones((static.n_assets, 2), state.x_mark.dtype) if static.derisk else None,
        adl=ladder_adl.none(params.ladder),
    )


def _close(
    state: SimState, m: stages.Move, flow0, lo, hi, open_, params: Params, static: Static
) -> tuple[SimState, jnp.ndarray, derisk.Closing | None]:
    """`engine.model.skeleton.BookForm.close` of the ladder: the step's voluntary closing
    (`engine.model.derisk.shrink`) on the open cohorts, the positions from each group's level to
    its end, where `Static.derisk`. Returns the state with the share `[assets, 2]` each side holds
    after it (`SimState.held`), the flow `[assets]` (USD) with its orders, and its `Closing`
    (the state, flow0 and None without). lo, hi: `[assets]` the breaker's limits."""
    if not static.derisk:
        return state, flow0, None
    lad = params.ladder
    t0_units = L.between(L.cum_at(lad, lad.end), L.cum_at(lad, state.level))[..., 0]
    t0_units = t0_units - state.adl.units  # every cohort closed by ADL is still beyond the level
    units = state.held * _by_side(t0_units, lad.side)
    x_open = derisk.open_mark(m, lo, hi)
    held, closing = derisk.shrink(state.held, units, state.x_mark, x_open, m.sigma, open_, params.market)
    return state._replace(held=held), flow0 + closing.flow, closing


def _inputs(state: SimState, m: stages.Move, br: skeleton.Breaker, params: Params, static: Static) -> Inputs:
    """`engine.model.skeleton.BookForm.inputs` of the ladder: the levels, the rates in force on
    the rung groups, the accounts still open and the sides' held shares (after the closing)."""
    pol, mp = params.policy, params.market
    mmr = policies.maintenance_rate(params.ladder.mmr, m.sigma, mp.sigma0, pol)
    market = stages.cascade_inputs(state, m, br.flow0, br.lo, br.hi, br.open_)._replace(mmr=mmr)
    held = _per_group(params.ladder, state.held)
    return Inputs(market, state.level, state.alive, m.gap, held, state.adl)


def _flag(new: SimState, b: skeleton.Before, r: Result, f: Fund, t, params: Params) -> SimState:
    """`engine.model.skeleton.BookForm.finish` of the ladder: the new levels and open accounts;
    flags the path at the first step its cascade could not be computed exactly (`Result.flag`)
    or it has an account leg's rate at the cap. (ADL flags its own: `adl_step`.)"""
    inp = b.inputs
    needs_dense = r.flag
    if r.alive is not None:
        marks = account_book.marks(params, inp.market.sigma, inp.gap, inp.market.active)
        needs_dense = needs_dense | account_book.capped(params.ladder.accounts, marks)
    return new._replace(
        level=r.level,
        alive=r.alive,
        adl=new.adl._replace(first=r.first, units=r.units),
        fallback=jnp.where(needs_dense, jnp.minimum(new.fallback, t), new.fallback),
    )


def _reaches(inp: Inputs, params: Params) -> jnp.ndarray:
    """Whether the step's first price reaches the next cohort of some group, or some account's
    maintenance, `[]` bool (else the cascade does nothing: `_quiet`)."""
    st = _step(inp, params)
    lad, level, mmr = st.lad, inp.level, inp.market.mmr
    s = lad.side
    price = st.price(inp.market.flow0)
    hit = s * (price[:, None] - (-s * L.take(lad.u, level)) / (1.0 - s * mmr)) <= 0
    reach = _any(hit & (level < lad.end) & inp.market.active[:, None])
    if st.live is None:
        return reach
    under = account_book.excess(lad.accounts, params, st.marks, price, st.cut) <= 0
    return reach | jnp.any(st.live & under)


def _quiet(args: Inputs, params: Params) -> Result:
    """`run_ladder`'s result `[paths, ...]` for paths whose first price reaches no cohort."""
    flow0, backstop_left = args.market.flow0, args.market.backstop_left
    z = jnp.zeros_like(backstop_left)
    tally = None
    # the same structure as the cascade's
    if args.alive is not None or args.held is not None or params.ladder.stop is not None:
        zero = T.zero(flow0.shape[1], flow0.dtype)
        tally = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, z.shape + x.shape), zero)
    c = Cascade(
        None, None, flow0, jnp.zeros(flow0.shape + (2,), flow0.dtype), jnp.zeros(flow0.shape + (2,), flow0.dtype),
        z, z, z, backstop_left, jnp.zeros_like(flow0), z, jnp.zeros(z.shape, jnp.int32), z, tally,
    )  # fmt: skip
    no = jnp.zeros(z.shape, bool)
    return Result(c, args.level, args.alive, no, no, args.adl.first, args.adl.units)


# Paths per batch of the cascade, as a share of the paths of a step (at least 8).
BATCH_SHARE = 64
# Paths per batch of the ladder's ADL (`adl_batch`).
ADL_BATCH = 2


def _for_some(mask, run, args, others, size: int | None = None):
    """`run(args)` (batched) for the paths of `mask` `[paths]`, `others` (same structure) for the
    rest: the masked paths are gathered into batches of `size` paths (default 1/`BATCH_SHARE` of
    the paths, at least 8), as many as they fill, so a step pays for the paths that need the
    work (and one batch is compiled)."""
    n = mask.shape[0]
    size = min(n, max(8, n // BATCH_SHARE) if size is None else size)
    # the masked paths' indices first, then n (no path) as padding for the last batch
    order = jnp.nonzero(mask, size=n + size, fill_value=n)[0]

    def batch(carry):
        i, out = carry
        idx = jax.lax.dynamic_slice_in_dim(order, i, size)
        done = run(jax.tree_util.tree_map(lambda x: x[jnp.minimum(idx, n - 1)], args))
        return i + size, jax.tree_util.tree_map(lambda o, d: o.at[idx].set(d, mode="drop"), out, done)

    count = jnp.sum(mask)
    return jax.lax.while_loop(lambda c: c[0] < count, batch, (jnp.zeros((), count.dtype), others))[1]


def _past_closed(inp: Inputs, params: Params, static: Static) -> Result:
    """`run_ladder` of one path whose cascade reached a cohort ADL closed (`Result.reached`),
    without voluntary closing: the step again on the path's open book, a ladder whose closed
    cohorts hold no units (`engine.model.ladder.without`; its rows and prefix sums for this path
    only, from the closed set the record gives, O(cohorts x ADL events)), and the record's closed
    cohorts beyond the new levels (`engine.model.ladder_adl.beyond_level`). Paths need it rarely
    (14 path-steps of 4,096 x 288 in `oct10_2025_collateral`), so they run in batches of
    `ADL_BATCH`."""
    lad = params.ladder
    shut = ladder_adl.closed_in_ladder_order(params, inp.adl)
    on_open = params._replace(ladder=L.without(lad, shut))
    r = run_ladder(inp._replace(adl=ladder_adl.nothing_closed(inp.adl)), on_open, static)
    first, units = ladder_adl.beyond_level(lad, shut, r.level)
    return r._replace(first=first, units=units)


def _rows(mask, x):
    """mask `[paths]` broadcast against x `[paths, ...]`."""
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def market_batch(states: SimState, draws, t, shock, flow, params: Params, static: Static) -> SimState:
    """`LADDER.market_step` of a batch of paths (leading axis). The cascade (`run_batch`) runs
    only for the paths whose price reaches a cohort this step (W1: 3-7% of path-steps), and again
    on the path's open book for those whose cascade reached a cohort ADL closed (`_past_closed`).
    A path's numbers do not depend on which batch computed them."""
    per_path = (0, 0, None, None, None, None, None)
    b = jax.vmap(partial(skeleton.before, LADDER), per_path)(states, draws, t, shock, flow, params, static)

    def cascade_of(inputs: Inputs) -> Result:
        busy = jax.vmap(lambda a: _reaches(a, params))(inputs)
        return _for_some(busy, lambda a: run_batch(a, params, static), inputs, _quiet(inputs, params))

    cut = None if b.inputs.alive is None else b.inputs.adl.cut
    if cut is None:
        cascade = cascade_of(b.inputs)
    else:
        # until ADL closes some account leg in the batch, the accounts' sums skip the closed
        # legs' terms (all zero then: the same numbers either way, at a lower cost)
        uncut = b.inputs._replace(adl=b.inputs.adl._replace(cut=None))
        cascade = jax.lax.cond(jnp.any(cut != 0), lambda: cascade_of(b.inputs), lambda: cascade_of(uncut))
    if not static.derisk:  # (with voluntary closing such a path is flagged: `_finish`)
        past = jax.vmap(lambda a: _past_closed(a, params, static))
        cascade = _for_some(cascade.reached, past, b.inputs, cascade, ADL_BATCH)
    after = partial(skeleton.after, LADDER)
    return jax.vmap(after, (0, None, 0, 0, None, None))(draws, t, b, cascade, params, static)


def adl_step(state: SimState, t, params: Params) -> SimState:
    """Stage 6 after the fund of one path (`engine.model.ladder_adl.deleverage`); t: `[]` int."""
    return ladder_adl.deleverage(state, t, params)


def adl_batch(states: SimState, t, params: Params) -> SimState:
    """`adl_step` of a batch of paths (leading axis): only the paths with a deficit run it, in
    batches of `ADL_BATCH` (a step rarely has more, and the queue costs a pass over the book per
    path; a fixed size also keeps a path's sums independent of the chunk)."""
    needs = jnp.any(states.deficit > 0, axis=(1, 2))
    return _for_some(needs, jax.vmap(lambda s: adl_step(s, t, params)), states, states, ADL_BATCH)


def _tally(state: SimState, params: Params) -> SimState:
    """`engine.model.skeleton.BookForm.tally` of the ladder: without voluntary closing, the
    path's liquidations from its final levels (the ladder liquidates cohorts whole, each at most
    once and with its t0 units, so the liquidated cohorts say it all: `_tally_open`, or
    `_tally_past_closed` for a path with an ADL event); with it, the steps tallied their own
    (`_tally_step`)."""
    if state.held is not None:
        return state
    return jax.lax.cond(state.adl.events > 0, _tally_past_closed, _tally_open, state, params)


def _tally_open(state: SimState, params: Params) -> SimState:
    """`_tally` of a path no ADL event touched: the liquidated cohorts are each group's positions
    from its start to its level, so their tally is a difference of prefix sums
    (`engine.model.ladder.tallied`), O(groups) per path."""
    lad = params.ladder
    t = T.add(state.totals.tally, _tally_step(lad, None, lad.start, state.level))
    return state._replace(totals=state.totals._replace(tally=t))


def _tally_past_closed(state: SimState, params: Params) -> SimState:
    """`_tally` of a path with an ADL event: its levels may have passed cohorts ADL closed
    (`_past_closed`), which were not liquidated, so the liquidated cohorts are summed one by one
    (`engine.model.tally.whole`, the dense kernel's), O(cohorts x events) per path."""
    book, pol = params.book, params.policy
    q0, b0 = policies.cap_leverage(book, pol)
    # a level may have passed cohorts ADL closed (`_past_closed`): they were not liquidated
    shut = ladder_adl.closed(params, q0, b0, state.adl)
    dq = jnp.where(L.liquidated(params.ladder, state.level) & ~shut, q0, 0.0)
    t = T.whole(book, pol, state.totals.tally, dq, b0)
    return state._replace(totals=state.totals._replace(tally=t))


def _outputs(
    state: SimState, params: Params, static: Static, past_closed: bool = True
) -> dict[str, jnp.ndarray]:
    """`engine.model.skeleton.BookForm.outputs` of the ladder: per-path outputs of a tallied
    final state (`engine.model.outputs`), and `fallback_step` `[]` int32 (`FALLBACK_NEVER` if
    the ladder computed the path exactly). past_closed: False for a path no ADL event touched
    (the same numbers without the pass over the cohorts that finds the closed ones)."""
    lad, mp = params.ladder, params.market
    fair = mp.price0 * jnp.exp(state.x_fair + state.x_trans)
    sigma = jnp.sqrt(state.variance)
    mmr = policies.maintenance_rate(lad.mmr, sigma, mp.sigma0, params.policy)
    at, held = L.cum_at(lad, state.level), _per_group(lad, state.held)
    open_units = _held(held, L.between(L.cum_at(lad, lad.end), at)[..., 0] - state.adl.units)
    reach, unsure = L.crossed(lad, fair, mmr, state.level)
    beyond = L.between(L.cum_at(lad, reach), at)[..., 0]
    if state.held is None and past_closed:  # without the cohorts ADL closed among them (`_past_closed`)
        shut = ladder_adl.closed_in_ladder_order(params, state.adl)
        beyond = beyond - ladder_adl.closed_between(lad, shut, state.level, reach)
    deferred = _held(held, liquidating(lad, beyond))
    units, late = jnp.sum(open_units, -1), jnp.sum(fair * jnp.sum(deferred, -1))
    if state.alive is not None:  # the open accounts' legs, and those under water at the fair price
        tab = lad.accounts
        marks = account_book.marks(params, sigma, state.gap, jnp.ones_like(units, bool))
        cut = state.adl.cut
        units = units + jnp.sum(jnp.where(state.alive[:, None], account_book.held_legs(tab, cut), 0.0), 0)
        can = account_book.live(tab, state.alive, marks, cut)
        late = late + account_book.left(tab, params, marks, can, fair, cut)
    out = outputs.assemble(state, params, units, late)
    # a search that could not finish (`ladder.find`) hands the last step to the dense kernel
    # and so does a stop order beyond its liquidation price (`stop_dies`), and with voluntary
    # closing a cohort closed by ADL among the deferred (`engine.model.ladder_adl.reached`)
    dies = stop_dies(lad, stop_rates(params, sigma), fair, state.level, jnp.ones(fair.shape, bool))
    handed = jnp.any(unsure) | dies
    if state.held is not None:
        handed = handed | ladder_adl.reached(state.adl, reach)
    last = jnp.where(handed, static.steps - 1, FALLBACK_NEVER)
    return out | {"fallback_step": jnp.minimum(state.fallback, last)}


def _extract_batch(states: SimState, params: Params, static: Static, block: int) -> dict:
    """`engine.model.skeleton.BookForm.extract_batch` of the ladder: without voluntary closing,
    the paths no ADL event touched are extracted in O(groups) each (`_tally_open`, `_outputs`
    without the closed cohorts), in blocks of `block` paths, and only those with an event pass
    over the cohorts, in batches of `ADL_BATCH` (a path's numbers are its `extract`'s)."""
    one = lambda s: LADDER.extract(s, params, static)
    if states.held is not None:
        return jax.lax.map(one, states, batch_size=block)
    plain = jax.lax.map(
        lambda s: _outputs(_tally_open(s, params), params, static, False), states, batch_size=block
    )
    return _for_some(states.adl.events > 0, jax.vmap(one), states, plain, ADL_BATCH)


# The ladder book: levels per rung group, the sides' held shares, the open accounts, the ADL
# record; the cascade batched over the paths that liquidate.
LADDER = skeleton.BookForm(
    "ladder",
    init_state,
    _close,
    _inputs,
    run_ladder,
    finish=_flag,
    adl=adl_step,
    tally=_tally,
    outputs=_outputs,
    prepare=L.prepare,
    batch=market_batch,
    batch_adl=adl_batch,
    batch_extract=_extract_batch,
)
