"""ADL on the ladder: the queue's closures kept as their thresholds, not as cohorts.

The queue rule (`engine.model.waterfall`) closes whole positions, best ranked first, ranked by
profit and leverage rather than by liquidation price: a closed cohort sits in the middle of its
rung group and is not a change of level, and one event may close hundreds of cohorts (W4: ties
over sizes and tiers). What an event closes is a threshold, though: the open, profitable
cohorts whose log score at the event's mark reaches the queue's bracket
(`waterfall.queue_closed`). A ladder path therefore keeps, per ADL event and at most
`EVENTS` of them, the mark `[assets]`, the threshold `[assets, 2]`, the sides' held shares
`[assets, 2]` and the levels `[assets, groups]` (which set the units the score was computed on
and the cohorts open then), and per rung group the first closed position and the closed t0
units beyond the level (`Record`). Nothing per cohort. Cross-margin accounts'
legs stand in the same queue; an account's closed legs are a bit set per account cohort
(`Record.cut`, as `SimState.alive` is a bool), and the account table drops their terms
(`engine.model.account_book`).

- at a step with a deficit, the queue runs on the path's open book, rebuilt in the book's order
  from its levels and record (`open_quantity`: a cohort is closed if some past event's
  threshold closes it, recomputed from the same numbers), with the dense kernel's own
  function (`engine.model.waterfall.auto_deleverage`): the same cohorts close and the same sums
  result;
- the stages that sum open units (the voluntary closing's orders, the outputs' open interest)
  subtract the closed units beyond each group's level (`Record.units`);
- a cascade that reaches a closed cohort (its level passes `Record.first`: `reached`, the
  round's prefix sums would count it) runs that step again on the path's open book, a ladder
  without the closed cohorts (`engine.model.ladder.without`, from `closed`: each event
  recomputed on the cohorts open then, beyond the levels it recorded); `beyond_level` then
  gives the record's closed cohorts beyond the new levels, and the path's tally at its end leaves
  out the closed cohorts its levels passed (`engine.model.ladder_kernel`). With voluntary
  closing such a path is flagged instead, and so is a path with more than `EVENTS` events, or
  with pro-rata ADL (a share of every position). A flagged path's numbers come from the dense
  kernel (`engine.sim.fallback`).

The cost is that of the dense queue, `[assets, cohorts]` per bisection, paid only by the paths
with a deficit and only at those steps (`engine.model.ladder_kernel.adl_batch`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model import account_book, accounts, policies
from engine.model import ladder as L
from engine.model.params import ADL_RULES, Params
from engine.model.waterfall import auto_deleverage, isolated, queue_closed

# ADL events one ladder path records before it goes to the dense kernel.
EVENTS = 16


class Record(NamedTuple):
    """The ADL a ladder path has seen. mark: `[EVENTS, assets]` USD at each event; threshold:
    `[EVENTS, assets, 2]` the queue's (`engine.model.waterfall.Adl.threshold`; +inf unused);
    held: `[EVENTS, assets, 2]` the sides' held shares then (1 without voluntary closing);
    events: `[]` int32 recorded; first: `[assets, groups]` int32 the first closed ladder
    position beyond each group's level (the cohort count if none); units: `[assets, groups]`
    the t0 units of the closed cohorts beyond the level; level: `[EVENTS, assets, groups]` int32
    the path's levels at each event (which cohorts were open then); cut: `[accounts]` with accounts, the bit sets of the legs closed
    (`engine.model.account_book.is_cut`), else None."""

    mark: jnp.ndarray
    threshold: jnp.ndarray
    held: jnp.ndarray
    events: jnp.ndarray
    first: jnp.ndarray
    units: jnp.ndarray
    level: jnp.ndarray
    cut: jnp.ndarray | None = None


def none(lad: L.Ladder) -> Record:
    """The record of a path at t0: no event."""
    n_assets, n_cohorts = lad.u.shape
    dtype = lad.u.dtype
    return Record(
        mark=jnp.ones((EVENTS, n_assets), dtype),
        threshold=jnp.full((EVENTS, n_assets, 2), jnp.inf, dtype),
        held=jnp.ones((EVENTS, n_assets, 2), dtype),
        events=jnp.zeros((), jnp.int32),
        first=jnp.full(lad.start.shape, n_cohorts, jnp.int32),
        units=jnp.zeros(lad.start.shape, dtype),
        level=jnp.broadcast_to(lad.end, (EVENTS,) + lad.end.shape),
        cut=None if lad.accounts is None else account_book.no_cuts(lad.accounts),
    )


def reached(rec: Record, upper) -> jnp.ndarray:
    """`[]` bool: a group's level `upper` `[assets, groups]` passes one of its closed cohorts."""
    return L.fold((upper > rec.first).reshape(-1), jnp.logical_or, False)


def _per_cohort(held, side) -> jnp.ndarray:
    """The held share `held` `[assets, 2]` of each cohort's side, side `[assets, cohorts]`."""
    return jnp.where(side > 0, held[:, :1], held[:, 1:])


def _beyond(lad: L.Ladder, level) -> jnp.ndarray:
    """`[assets, cohorts]` bool in the book's order: the cohorts beyond their group's level
    `level` `[assets, groups]` (not yet liquidated)."""
    pos = jnp.arange(lad.u.shape[1])[None, :, None]
    beyond = jnp.any((pos >= level[:, None, :]) & (pos < lad.end[:, None, :]), -1)
    return jax.vmap(lambda o, order: jnp.zeros_like(o).at[order].set(o))(beyond, lad.order)


def closed(params: Params, q0, b0, rec: Record) -> jnp.ndarray:
    """`[assets, cohorts]` bool in the book's order: the cohorts a recorded event closed, each
    event recomputed on the cohorts open then (beyond its recorded levels) with the same
    numbers as when it closed them. q0, b0: units and bankruptcy prices `[assets, cohorts]`
    after the leverage cap (units, USD)."""
    lad, book = params.ladder, params.book

    def closed_by(j, shut):
        q = jnp.where(_beyond(lad, rec.level[j]), q0 * _per_cohort(rec.held[j], book.side), 0.0)
        opposite = isolated(q, b0, rec.mark[j][:, None], book)
        return shut | queue_closed(opposite, rec.threshold[j])

    return jax.lax.fori_loop(0, rec.events, closed_by, jnp.zeros(q0.shape, bool))


def open_quantity(params: Params, q0, b0, level, rec: Record, held) -> jnp.ndarray:
    """The path's units per cohort `[assets, cohorts]` in the book's order, as the dense kernel
    holds them: `q0` (after the leverage cap) times its side's held share `held` `[assets, 2]`
    (None: 1) where open (beyond its group's level `level`, not `closed`), else 0. b0: the
    bankruptcy prices `[assets, cohorts]` (USD)."""
    shut = closed(params, q0, b0, rec)
    q = jnp.where(_beyond(params.ladder, level) & ~shut, q0, 0.0)
    return q if held is None else q * _per_cohort(held, params.book.side)


def in_ladder_order(lad: L.Ladder, x) -> jnp.ndarray:
    """x `[assets, cohorts]` (book order) in ladder order."""
    return jnp.take_along_axis(x, lad.order, axis=1)


def closed_in_ladder_order(params: Params, rec: Record) -> jnp.ndarray:
    """`closed` of the record `rec` on the point's book after its leverage cap, `[assets,
    cohorts]` bool in ladder order."""
    q0, b0 = policies.cap_leverage(params.book, params.policy)
    return in_ladder_order(params.ladder, closed(params, q0, b0, rec))


def beyond_level(lad: L.Ladder, shut, level) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(first position, t0 units) `[assets, groups]` of the cohorts `shut` `[assets, cohorts]`
    (bool, ladder order) at or beyond each group's level `level` `[assets, groups]`, summed in a
    fixed order: `Record.first` and `Record.units` of closed cohorts."""
    pos = jnp.arange(lad.u.shape[1])
    member = (pos >= level[..., None]) & (pos < lad.end[..., None]) & shut[:, None, :]
    first = jnp.min(jnp.where(member, pos, lad.u.shape[1]), -1).astype(jnp.int32)
    units = L.fold(jnp.where(member, lad.rows[:, None, :, 1], 0.0))
    return first, units


def closed_between(lad: L.Ladder, shut, lower, upper) -> jnp.ndarray:
    """t0 units `[assets, groups]` of the closed cohorts `shut` (`closed` in ladder order) at
    positions [lower, upper) `[assets, groups]` of each group, in one pass over the positions."""
    pos = jnp.arange(lad.u.shape[1])

    def one(sh, rows, start, end, lo, hi):
        group = jnp.searchsorted(end, pos, side="right")  # beyond the last group: the trailing bucket
        g = jnp.minimum(group, end.shape[0] - 1)
        inside = (group < end.shape[0]) & (pos >= lo[g]) & (pos < hi[g]) & sh
        units = jnp.where(inside, rows[:, 1], 0.0)
        return jax.ops.segment_sum(units, group, num_segments=end.shape[0] + 1)[:-1]

    return jax.vmap(one)(shut, lad.rows, lad.start, lad.end, lower, upper)


def nothing_closed(rec: Record) -> Record:
    """`rec` as a ladder whose closed cohorts hold no units sees it: no closed cohort in the
    way of a cascade (`reached` is False)."""
    return rec._replace(first=jnp.full_like(rec.first, jnp.iinfo(jnp.int32).max))


def _legs(state, params: Params, price):
    """(the open accounts' legs `[accounts, assets]` (units) as the dense kernel holds them, and
    as ADL sees them at marks `price`: `engine.model.accounts.adl_legs`), or (None, None)."""
    tab = params.ladder.accounts
    if tab is None:
        return None, None
    q = jnp.where(state.alive[:, None], account_book.held_legs(tab, state.adl.cut), 0.0)
    st = accounts.prepare(params, state.gap, jnp.sqrt(state.variance))
    return q, accounts.adl_legs(st, q, price)


def _cut(rec: Record, q, after) -> jnp.ndarray | None:
    """`rec.cut` with the legs ADL closed (held `q`, `after` ADL `[accounts, assets]` units)."""
    if q is None:
        return None
    closed = ((q > 0) & (after == 0)).astype(rec.cut.dtype)
    return rec.cut | jnp.sum(closed << jnp.arange(q.shape[1], dtype=rec.cut.dtype), -1).astype(rec.cut.dtype)


def _queue(state, t, params: Params):
    """`deleverage` with the queue rule."""
    lad, pol, mp, book = params.ladder, params.policy, params.market, params.book
    rec = state.adl
    q0, b0 = policies.cap_leverage(book, pol)
    quantity = open_quantity(params, q0, b0, state.level, rec, state.held)
    price = mp.price0 * jnp.exp(state.x_mark)
    q_legs, legs = _legs(state, params, price)
    r = auto_deleverage(quantity, b0, price, state.deficit, book, pol, legs=legs)
    shut = in_ladder_order(lad, (quantity > 0) & (r.quantity == 0))
    first, units = beyond_level(lad, shut, lad.start)
    closes = jnp.any(shut)
    j = jnp.minimum(rec.events, EVENTS - 1)
    held = jnp.ones_like(r.threshold) if state.held is None else state.held
    put = lambda a, v: jnp.where(closes, a.at[j].set(v), a)
    new = Record(
        mark=put(rec.mark, price),
        threshold=put(rec.threshold, r.threshold),
        held=put(rec.held, held),
        events=rec.events + closes.astype(jnp.int32),
        first=jnp.minimum(rec.first, first),
        units=rec.units + units,
        level=put(rec.level, state.level),
        cut=_cut(rec, q_legs, r.accounts),
    )
    tot = state.totals
    return state._replace(
        adl=new,
        deficit=jnp.zeros_like(state.deficit),
        fallback=jnp.where(new.events <= EVENTS, state.fallback, jnp.minimum(state.fallback, t)),
        totals=tot._replace(
            adl_absorbed=tot.adl_absorbed + r.absorbed,
            adl_notional=tot.adl_notional + r.notional,
            bad_debt=tot.bad_debt + r.bad_debt,
        ),
    )


def _off_or_flag(state, t, params: Params):
    """`deleverage` with ADL off (the deficit is bad debt) or a rule the ladder does not hold
    (the path is flagged at step t if it has a deficit)."""
    tot = state.totals
    off = params.policy.adl_rule == ADL_RULES["off"]
    needs = ~off & jnp.any(state.deficit > 0)
    return state._replace(
        deficit=jnp.zeros_like(state.deficit),
        fallback=jnp.where(needs, jnp.minimum(state.fallback, t), state.fallback),
        totals=tot._replace(bad_debt=tot.bad_debt + jnp.where(off, jnp.sum(state.deficit), 0.0)),
    )


def deleverage(state, t, params: Params):
    """Stage 6 after the fund of one ladder path (`engine.model.stages.SimState`): with the
    queue rule, ADL on its open book (`open_quantity`, and the accounts' legs), the event
    recorded in `SimState.adl`, the rest bad debt; with ADL off, the deficit is bad debt. Where
    the ladder cannot hold the result (module docstring) the path is flagged at step t (`[]`
    int) and its numbers here do not matter."""
    if params.accounts is not None and params.accounts.side.shape[1] > 32:  # beyond a bit set
        return _off_or_flag(state, t, params)
    # the rule is the point's, the same for every path: a branch, not a select, under vmap
    queue = params.policy.adl_rule == ADL_RULES["queue"]
    return jax.lax.cond(queue, _queue, _off_or_flag, state, t, params)
