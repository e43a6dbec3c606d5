"""Liquidation ladders: the book sorted once per point, so that a step never touches every cohort.

With whole liquidation a cohort's liquidation price is `k / (1 - s m)` (`engine.model.margin`),
with `k = b - s a` fixed per cohort and the maintenance rate in force `m` common to every cohort
of one base rate (the dynamic-margin multiplier is per asset). Within one *rung group* (asset,
side, base rate) the order in which cohorts liquidate is therefore fixed: sort by `u = -s k`
ascending (a long with a higher `k`, a short with a lower one, dies first). On every path:

- the cohorts liquidated so far are a prefix of each group's order, so a path's book is one
  level per group (`[assets, groups]` ints) instead of a quantity per cohort;
- a cascade round finds how far the round's price reaches into each group by searching the
  sorted keys (`find`, evaluating `k / (1 - s m)` exactly as the dense kernel does, so the two
  agree on who is hit at the same price), and the round's units, notional, the traders' loss
  and the counterparties' gain are differences of prefix sums of `q`, `q b` and `q e`;
- the search costs the same for any book: a uniform grid over each group's keys
  (`GRID_PER_RUNG` cells per position of the largest group) gives, from the key where the
  test flips, the few positions where it can flip, and the test is evaluated on those
  `WINDOW` positions only. A group crowded beyond that near the key (more than `WINDOW`
  positions in three cells, e.g. many exact ties) is flagged like a wide band;
- the one nonlinear term, the split of each liquidation's equity `s q (fill - b)` between the
  fund (>= 0) and the shortfall (< 0), uses `s b = a - u`: within a group the cohorts with
  `u < a_lo - s fill` are surely under water (a prefix, found by one more search), those with
  `u >= a_hi - s fill` surely not (a_lo, a_hi: the group's least and largest maintenance amount
  per unit), and the band between is summed cohort by cohort in a window of `WINDOW` positions.
  A band wider than the window is flagged (the path is handed to the dense kernel,
  `engine.sim.fallback`).
- a stop order (`engine.config.stops`) is a rung of its own group, one per side, ordered by its
  trigger price: its key is `u = -s stop` and its group's rate 0, so the same search finds the
  stops a price reaches (`s (p - stop) <= 0`, the dense kernel's test). Their units join the
  round's orders, with no margin and no waterfall (`engine.model.ladder_kernel`).

The tables are built inside the compiled call from the point's traced parameters (the leverage
cap moves bankruptcy prices), once per call, and shared by every path: per-path memory does not
grow with the book. Prefix sums are compensated (a high and a low part, summed with TwoSum), so
that a range's sum keeps the precision of the range rather than of the whole book.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from engine.model import account_book
from engine.model import tally as T
from engine.model.account_book import AccountTable
from engine.model.params import BookParams, Params, PolicyParams, Static
from engine.model.policies import cap_leverage

# Positions per group evaluated one by one: the uncertain band of the equity split, and the
# candidates of a search (`find`).
WINDOW = 8
# Search grid cells per position of the book's largest group (`layout`). The W1, W2 and W4 books
# (up to 16,384 cohorts per asset) have at most 6 positions in any three consecutive cells at 16
# cells per position and at most 10 at 4, so a search's candidates fit in `WINDOW`.
GRID_PER_RUNG = 8


class Ladder(NamedTuple):
    """The book of one point in ladder order, `[assets, cohorts]` unless stated.

    Groups are `[longs by base rate..., shorts by base rate...]`, `2 * Static.ladder` of them,
    then with stop orders (`Static.stops`) the long stops and the short stops (`n_groups`).
    u: `-s k` (USD), ascending within each group. grid: `[assets, groups * (cells + 2)]` int32,
    per group (`cells = Static.ladder_cells`) the first position with `u >= u_lo + j / per_usd`
    for j = 0..cells, then the group's end. u_lo: `[assets, groups]` the group's least u (USD).
    per_usd: `[assets, groups]` grid cells per USD of u. rows: `[assets, cohorts, 4]` (u,
    quantity after the leverage cap, bankruptcy price, entry; units and USD), for windows. cum:
    `[assets, cohorts + 1, 6]` prefix sums of (q, q b, q e), high then low parts (units, USD). start, end: `[assets, groups]` int32 first and one-past-last position of each group.
    side: `[assets, groups]` +1/-1. mmr: `[assets, groups]` base rate. a_lo, a_hi: `[assets,
    groups]` least and largest maintenance amount per unit (USD). order: `[assets, cohorts]`
    int32, the cohort at each ladder position.
    """

    u: jnp.ndarray
    grid: jnp.ndarray
    u_lo: jnp.ndarray
    per_usd: jnp.ndarray
    rows: jnp.ndarray
    cum: jnp.ndarray
    start: jnp.ndarray
    end: jnp.ndarray
    side: jnp.ndarray
    mmr: jnp.ndarray
    a_lo: jnp.ndarray
    a_hi: jnp.ndarray
    order: jnp.ndarray
    # the point's cross-margin account cohorts (`engine.model.account_book`), or None
    accounts: AccountTable | None = None
    # what the tally reads (`TallyTable`; built by `prepare`)
    tally: TallyTable | None = None
    # with stop orders (`Static.stops`): `[assets, groups]` bool, the groups that hold them, and
    # the base maintenance rate of their cohorts (0 elsewhere); else None
    stop: jnp.ndarray | None = None
    stop_rate: jnp.ndarray | None = None


class TallyTable(NamedTuple):
    """What the tally (`engine.model.tally`) of the cohorts liquidated between two levels reads,
    in ladder order: a path's liquidations from each group's start to its final level, or with
    voluntary closing a step's (a cohort is then liquidated with the share of its t0 units its
    side still holds, so the ladder kernel tallies each step).

    cum: `[assets, cohorts + 1, 2 (1 + 2 buckets)]` prefix sums of the t0 units' positions,
    notional at entry by leverage bucket (USD) and trader loss `s q (e - b)` by leverage bucket
    (USD), high then low parts (as `Ladder.cum`). worst: `[assets, cohorts]` the largest loss of
    one position, `s (e - b) q / positions` (USD; 0 for a cohort without positions), over the
    group's positions up to each: closing leaves it unchanged.
    """

    cum: jnp.ndarray
    worst: jnp.ndarray


def layout(side: np.ndarray, mmr: np.ndarray, stop: np.ndarray | None = None) -> tuple[int, int]:
    """(base rates, grid cells) of a book on the host: the number of distinct maintenance rates
    (groups per side), and the search grid's cells per group, the power of two at or above
    `GRID_PER_RUNG` times the largest group (the stop orders' groups included).

    side, mmr: `[assets, cohorts]`; stop: `[assets, cohorts]` trigger prices (`stop_orders`), or
    None (NumPy)."""
    rates = max(len(np.unique(row)) for row in mmr)
    is_stop = np.zeros(side.shape, bool) if stop is None else stop_orders(stop)
    largest = 1
    for s_row, m_row, o_row in zip(side, mmr, is_stop):
        for s in (1.0, -1.0):
            _, counts = np.unique(m_row[(s_row == s) & ~o_row], return_counts=True)
            largest = max([largest, *counts.tolist(), int(np.sum((s_row == s) & o_row))])
    return rates, 2 ** math.ceil(math.log2(GRID_PER_RUNG * largest))


def stop_orders(stop):
    """Which cohorts `[assets, cohorts]` are stop orders: a trigger price `stop` (USD) above 0 and
    finite (a cohort without one has 0 if long, +inf if short; NumPy or JAX arrays)."""
    return (stop > 0) & (stop < np.inf)


def n_groups(static: Static) -> int:
    """Rung groups per asset: two per base rate, and with stop orders two more."""
    return 2 * static.ladder + 2 * static.stops


def _two_sum(a, b):
    """a + b as (sum, rounding error), exactly (Knuth's TwoSum)."""
    s = a + b
    bv = s - a
    return s, (a - (s - bv)) + (b - bv)


def _compensated_cumsum(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Inclusive prefix sums of x along axis 0 as a high and a low part (hi + lo is the sum to
    about the precision of the square of the dtype's epsilon)."""

    def add(p, q):
        s, e = _two_sum(p[0], q[0])
        return s, e + (p[1] + q[1])

    return jax.lax.associative_scan(add, (x, jnp.zeros_like(x)), axis=0)


def _one_asset(side, mmr, maint, entry, q, b, stop, static: Static):
    """The ladder arrays of one asset's cohorts `[cohorts]` (see `Ladder`); stop: the cohorts'
    trigger prices (`stop_orders`), or None without stop orders."""
    n_rates = static.ladder
    n_groups = 2 * n_rates
    rates = jnp.unique(mmr, size=n_rates)
    # cohorts without quantity (dropped by the book as liquidated at the start) never liquidate:
    # a trailing bucket beyond every group keeps them out of the searches and windows
    group = jnp.where(side > 0, 0, n_rates) + jnp.searchsorted(rates, mmr)
    u = -side * (b - side * maint)
    ids = jnp.arange(n_groups)
    group_side = jnp.where(ids < n_rates, 1.0, -1.0).astype(u.dtype)
    group_mmr = jnp.concatenate([rates, rates])
    if stop is not None:
        # a stop's key is its trigger price, at rate 0: the hit test is `s (p - stop) <= 0`
        is_stop = stop_orders(stop)
        group = jnp.where(is_stop, n_groups + (side < 0), group)
        u = jnp.where(is_stop, -side * stop, u)
        n_groups += 2
        ids = jnp.arange(n_groups)
        group_side = jnp.concatenate([group_side, jnp.array([1.0, -1.0], u.dtype)])
        group_mmr = jnp.concatenate([group_mmr, jnp.zeros(2, u.dtype)])
    group = jnp.where(q > 0, group, n_groups)
    order = jnp.lexsort((u, group))
    g_sorted = group[order]
    start = jnp.searchsorted(g_sorted, ids, side="left").astype(jnp.int32)
    end = jnp.searchsorted(g_sorted, ids, side="right").astype(jnp.int32)
    q_s, b_s, e_s = q[order], b[order], entry[order]
    empty = end <= start
    a_lo = jax.ops.segment_min(maint, group, num_segments=n_groups + 1)[:n_groups]
    a_hi = jax.ops.segment_max(maint, group, num_segments=n_groups + 1)[:n_groups]
    u_s = u[order]
    grid, u_lo, per_usd = _grid(u_s, start, end, static.ladder_cells)
    lad = Ladder(
        u=u_s,
        grid=grid,
        u_lo=u_lo,
        per_usd=per_usd,
        rows=jnp.stack([u_s, q_s, b_s, e_s], -1),
        cum=_unit_sums(q_s, b_s, e_s),
        start=start,
        end=end,
        side=group_side,
        mmr=group_mmr,
        a_lo=jnp.where(empty, 0.0, a_lo),
        a_hi=jnp.where(empty, 0.0, a_hi),
        order=order.astype(jnp.int32),
    )
    if stop is None:
        return lad
    # the stops' own base rate (tier 0's), for the test that one is liquidated before it triggers
    stop_rate = jax.ops.segment_max(jnp.where(is_stop, mmr, 0.0), group, num_segments=n_groups + 1)[:n_groups]
    return lad._replace(stop=ids >= 2 * n_rates, stop_rate=jnp.where(empty, 0.0, stop_rate))


def _prefix_sums(x: jnp.ndarray) -> jnp.ndarray:
    """Prefix sums `[n + 1, 2 columns]` of x `[n, columns]` along axis 0 from 0, compensated:
    the high parts, then the low parts (`Ladder.cum`, `TallyTable.cum`)."""
    hi, lo = _compensated_cumsum(x)
    return jnp.concatenate([jnp.zeros((1, 2 * x.shape[-1]), hi.dtype), jnp.concatenate([hi, lo], -1)])


def _unit_sums(q, b, e) -> jnp.ndarray:
    """`Ladder.cum` of one asset from its rows in ladder order, q, b, e `[cohorts]`: the prefix
    sums of (q, q b, q e)."""
    return _prefix_sums(jnp.stack([q, q * b, q * e], -1))


def _grid(u, start, end, cells: int):
    """The search grid of sorted keys u `[cohorts]` in groups [start, end) `[groups]` (see
    `Ladder`): (grid `[groups * (cells + 2)]`, u_lo, per_usd `[groups]`).

    A cell is at least 64 units in the last place of the group's keys wide, so that the edges'
    rounding stays far below a cell (`find`)."""
    last = jnp.clip(end - 1, 0, u.shape[0] - 1)
    u_lo = jnp.where(end > start, u[jnp.clip(start, 0, u.shape[0] - 1)], 0.0)
    u_hi = jnp.where(end > start, u[last], 0.0)
    ulp = jnp.finfo(u.dtype).eps * jnp.maximum(jnp.abs(u_lo), jnp.abs(u_hi))
    width = jnp.maximum((u_hi - u_lo) / cells, 64 * ulp + jnp.finfo(u.dtype).tiny)
    edges = u_lo[:, None] + width[:, None] * jnp.arange(cells + 1, dtype=u.dtype)

    pos = jnp.arange(u.shape[0])

    def one(lo, hi, e):
        # -inf before the group, +inf after it: the count below an edge is lo + the group's own
        keyed = jnp.where(pos < lo, -jnp.inf, jnp.where(pos < hi, u, jnp.inf))
        return jnp.concatenate([jnp.searchsorted(keyed, e, side="left"), hi[None]]).astype(jnp.int32)

    grid = jax.vmap(one)(start, end, edges)
    return grid.reshape(-1), u_lo, 1.0 / width


def build_ladder(book: BookParams, pol: PolicyParams, static: Static) -> Ladder:
    """The ladder of one point: the book after the leverage cap, sorted into rung groups."""
    q, b = cap_leverage(book, pol)
    stop = book.stop if static.stops else None
    one = lambda s, m, a, e, q, b, o: _one_asset(s, m, a, e, q, b, o, static)
    return jax.vmap(one)(book.side, book.mmr, book.maint_amount, book.entry, q, b, stop)


def tally_table(book: BookParams, pol: PolicyParams, lad: Ladder) -> TallyTable:
    """The `TallyTable` of a point's ladder `lad` (the book after the leverage cap, as the dense
    kernel tallies it: `engine.model.tally.whole`)."""
    q, b = cap_leverage(book, pol)
    buckets, per_unit = T.cohort_inputs(book, pol)
    positions = per_unit * q
    loss = book.side * q * (book.entry - b)
    cols = jnp.concatenate(
        [positions[..., None], (q * book.entry)[..., None] * buckets, loss[..., None] * buckets], -1
    )
    one = jnp.where(positions > 0, loss / jnp.where(positions > 0, positions, 1.0), 0.0)
    if lad.stop is not None:  # a triggered stop order is not a liquidation
        liquidates = ~stop_orders(book.stop)
        cols, one = jnp.where(liquidates[..., None], cols, 0.0), jnp.where(liquidates, one, 0.0)
    return jax.vmap(_tally_one)(cols, one, lad.order, lad.end)


def _tally_one(cols, one, order, end) -> TallyTable:
    """The `TallyTable` of one asset: cols `[cohorts, columns]` and one `[cohorts]` per cohort in
    the book's order, order `[cohorts]` its ladder order, end `[groups]` the groups' ends."""
    # each position's group (positions beyond the last group: the trailing bucket)
    group = jnp.searchsorted(end, jnp.arange(order.shape[0]), side="right")

    def running_max(a, b):
        # groups are contiguous: a span ending in the same group as the one before it lies in it
        return jnp.where(b[1] == a[1], jnp.maximum(a[0], b[0]), b[0]), b[1]

    worst = jax.lax.associative_scan(running_max, (one[order], group))[0]
    return TallyTable(_prefix_sums(cols[order]), worst)


@partial(jax.jit, static_argnums=1)
def prepare(params: Params, static: Static) -> Params:
    """`params` with its ladder, its `TallyTable` and its account table built (once per compiled
    call, outside the scan over steps)."""
    lad = build_ladder(params.book, params.policy, static)
    if params.accounts is not None:
        lad = lad._replace(accounts=account_book.table(params))
    return params._replace(ladder=lad._replace(tally=tally_table(params.book, params.policy, lad)))


def without(lad: Ladder, gone: jnp.ndarray) -> Ladder:
    """`lad` with the cohorts `gone` `[assets, cohorts]` (bool, ladder order) holding no units:
    their rows' quantity 0 and the prefix sums rebuilt as `build_ladder` builds them. Their keys
    stay, so a search still passes them, and what it sums of them is 0 (a path's open book once
    ADL closed some of its cohorts: `engine.model.ladder_kernel`)."""
    rows = lad.rows.at[..., 1].set(jnp.where(gone, 0.0, lad.rows[..., 1]))
    return lad._replace(rows=rows, cum=jax.vmap(_unit_sums)(rows[..., 1], rows[..., 2], rows[..., 3]))


def fold(x: jnp.ndarray, op=jnp.add, identity=0) -> jnp.ndarray:
    """Reduce the last axis of x by halving it (`op` of its two halves, padded with `identity`
    to a power of two): elementwise operations only. XLA's CPU backend runs a reduction over a
    short axis as a library call that costs far more than the few additions it makes, and a
    fixed pairing keeps a path's sums the same in any batch."""
    while x.shape[-1] > 1:
        n = x.shape[-1]
        if n % 2:
            x = jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), identity, x.dtype)], -1)
            n += 1
        x = op(x[..., : n // 2], x[..., n // 2 :])
    return x[..., 0]


def take(x: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
    """x `[assets, n]` at positions idx `[assets, ...]` (clamped into range)."""
    flat = jnp.clip(idx, 0, x.shape[1] - 1).reshape(idx.shape[0], -1)
    return jnp.take_along_axis(x, flat, axis=1).reshape(idx.shape)


def window(lad: Ladder, level: jnp.ndarray, width: int) -> tuple[jnp.ndarray, ...]:
    """The `width` positions of each group from `level` `[assets, groups]` on: (inside
    `[assets, groups, width]` bool, then u, q, b, e `[assets, groups, width]` each)."""
    pos = level[..., None] + jnp.arange(width)
    flat = jnp.clip(pos, 0, lad.u.shape[1] - 1).reshape(pos.shape[0], -1, 1)
    rows = jnp.take_along_axis(lad.rows, flat, axis=1).reshape(pos.shape + (4,))
    return (pos < lad.end[..., None], *jnp.unstack(rows, axis=-1))


def find(lad: Ladder, pred, x, floor, ceiling) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per group `[assets, groups]` the first position where `pred(u)` is false (the group's end
    if none), clipped to [floor, ceiling], and whether that is unsure (then it is not exact).

    pred: holds on a prefix of each group (u: `[assets, groups, WINDOW]`); x: `[assets, groups]`
    the key where it flips, up to rounding (USD); floor, ceiling: `[assets, groups]` int.

    The grid's cells from one below `x - margin` to two above `x + margin` hold the positions
    where `pred` can flip: before them it holds, after them it fails. `pred` is evaluated on the
    first `WINDOW` of them, so the cost does not depend on the book; the answer is unsure when
    there are more and they reach into [floor, ceiling].
    """
    cells = lad.grid.shape[1] // lad.u_lo.shape[1] - 2
    margin = 16 * jnp.finfo(x.dtype).eps * (jnp.abs(x) + jnp.abs(lad.u_lo))
    offset = jnp.arange(lad.u_lo.shape[1], dtype=jnp.int32) * (cells + 2)

    def edge(v, shift):
        c = jnp.floor((v - lad.u_lo) * lad.per_usd) + shift
        return take(lad.grid, offset + jnp.clip(c, 0, cells + 1).astype(jnp.int32))

    lo, hi = edge(x - margin, -1), edge(x + margin, 2)
    pos = lo[..., None] + jnp.arange(WINDOW)
    count = fold(((pos < hi[..., None]) & pred(take(lad.u, pos))).astype(jnp.int32))
    unsure = (hi - lo > WINDOW) & (hi > floor) & (lo < ceiling)
    return jnp.clip(lo + count, floor, ceiling), unsure


def crossed(lad: Ladder, price, mmr, level) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per group `[assets, groups]` the end of the cohorts at or beyond their liquidation price
    at `price` `[assets]` (USD) and maintenance rates `mmr` `[assets, groups]`, at least `level`,
    and whether that is unsure (`find`): the hit test of the dense kernel, `s (p - p_liq) <= 0`
    with `p_liq = k / (1 - s m)`, on the group's sorted keys. It flips at `u = -s p (1 - s m)`."""
    s = lad.side[..., None]
    den = 1.0 - lad.side * mmr
    p = price[:, None, None]
    hit = lambda u: s * (p - (-s * u) / den[..., None]) <= 0
    return find(lad, hit, -lad.side * price[:, None] * den, level, lad.end)


def _prefix(cum: jnp.ndarray, idx: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Compensated prefix sums `cum` `[assets, cohorts + 1, 2 columns]` before positions idx
    `[assets, groups]`: (high, low) parts, `[assets, groups, columns]` each."""
    both = jnp.take_along_axis(cum, idx[..., None], axis=1)
    n = cum.shape[-1] // 2
    return both[..., :n], both[..., n:]


def cum_at(lad: Ladder, idx: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Prefix sums (q, q b, q e) before positions idx `[assets, groups]`: (high, low) parts,
    `[assets, groups, 3]` each."""
    return _prefix(lad.cum, idx)


def between(upper: tuple, lower: tuple) -> jnp.ndarray:
    """Sums `[..., columns]` over the positions between two `cum_at` (or `_prefix`) results."""
    return (upper[0] - lower[0]) + (upper[1] - lower[1])


def tallied(lad: Ladder, lower, upper) -> tuple[jnp.ndarray, jnp.ndarray]:
    """What the tally reads of the positions [lower, upper) `[assets, groups]` of each group, at
    their t0 units (`TallyTable`): (sums `[assets, groups, 1 + 2 buckets]` of positions, notional
    at entry and trader loss by bucket; the largest loss of one position `[assets, groups]` USD
    of the group's positions before `upper`, 0 where there are none)."""
    tab = lad.tally
    sums = between(_prefix(tab.cum, upper), _prefix(tab.cum, lower))
    worst = jnp.where(upper > lad.start, take(tab.worst, upper - 1), 0.0)
    return sums, worst


def band(lad: Ladder, start, stop, fill) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Sum of `max(-s q (fill - b), 0)` over the first `WINDOW` positions of [start, stop) of
    each group, cohort by cohort, and whether a position of [start, stop) after them may be under
    water too (`u < a_hi - s fill`, see the module docstring; if not, the sum is `shortfall`'s
    without a search). All `[assets, groups]`."""
    s = lad.side
    inside, u, q, b, _ = window(lad, start, WINDOW + 1)
    inside = inside & (start[..., None] + jnp.arange(WINDOW + 1) < stop[..., None])
    under = jnp.maximum(-s[..., None] * q * (fill[..., None] - b), 0.0)
    more = inside[..., WINDOW] & (u[..., WINDOW] < lad.a_hi - s * fill)
    return fold(jnp.where(inside, under, 0.0)[..., :WINDOW]), more


def shortfall(lad: Ladder, i0, i1, at0: tuple, fill) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Sum of `max(-s q (fill - b), 0)` over positions [i0, i1) of each group, and whether the
    uncertain band or the search outran the window (then the sum is not exact).

    i0, i1: `[assets, groups]` int; at0: `cum_at(lad, i0)`; fill: `[assets, groups]` USD.
    Returns (USD `[assets, groups]`, bool `[assets, groups]`).
    """
    s = lad.side
    edge = lad.a_lo - s * fill
    c1, unsure = find(lad, lambda u: u < edge[..., None], edge, i0, i1)
    sure = between(cum_at(lad, c1), at0)
    rest, over = band(lad, c1, i1, fill)
    return s * (sure[..., 1] - fill * sure[..., 0]) + rest, over | unsure


def liquidated(lad: Ladder, level: jnp.ndarray) -> jnp.ndarray:
    """Cohorts liquidated at `level` `[assets, groups]`, in the book's order: `[assets,
    cohorts]` bool (each group's positions from its start up to its level; stop orders, which
    trigger rather than liquidate, are not)."""
    level = level if lad.stop is None else jnp.where(lad.stop, lad.start, level)
    pos = jnp.arange(lad.u.shape[-1])[None, :, None]
    done = jnp.any((pos >= lad.start[:, None, :]) & (pos < level[:, None, :]), -1)
    return jax.vmap(lambda d, o: jnp.zeros_like(d).at[o].set(d))(done, lad.order)
