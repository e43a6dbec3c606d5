"""Liquidation ladders: the book sorted once per point, so that a step never touches every cohort.

With whole liquidation a cohort's liquidation price is `k / (1 - s m)` (`engine.model.margin`),
with `k = b - s a` fixed per cohort and the maintenance rate in force `m` common to every cohort
of one base rate (the dynamic-margin multiplier is per asset). Within one *rung group* (asset,
side, base rate) the order in which cohorts liquidate is therefore fixed: sort by `u = -s k`
ascending (a long with a higher `k`, a short with a lower one, dies first). On every path:

- the cohorts liquidated so far are a prefix of each group's order, so a path's book is one
  level per group (`[assets, groups]` ints) instead of a quantity per cohort;
- a cascade round finds how far the round's price reaches into each group by searching the
  sorted keys (`first_false`, evaluating `k / (1 - s m)` exactly as the dense kernel does, so the two
  agree on who is hit at the same price), and the round's units, notional, the traders' loss
  and the counterparties' gain are differences of prefix sums of `q`, `q b` and `q e`;
- the one nonlinear term, the split of each liquidation's equity `s q (fill - b)` between the
  fund (>= 0) and the shortfall (< 0), uses `s b = a - u`: within a group the cohorts with
  `u < a_lo - s fill` are surely under water (a prefix, found by one more search), those with
  `u >= a_hi - s fill` surely not (a_lo, a_hi: the group's least and largest maintenance amount
  per unit), and the band between is summed cohort by cohort in a window of `WINDOW` positions.
  A band wider than the window is flagged (the path is handed to the dense kernel,
  `engine.sim.fallback`).

The tables are built inside the compiled call from the point's traced parameters (the leverage
cap moves bankruptcy prices), once per call, and shared by every path: per-path memory does not
grow with the book. Prefix sums are compensated (a high and a low part, summed with TwoSum), so
that a range's sum keeps the precision of the range rather than of the whole book.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from engine.model.params import BookParams, Params, PolicyParams, Static
from engine.model.policies import cap_leverage

# Cohorts of the uncertain band of the equity split summed one by one per group and round.
WINDOW = 8


class Ladder(NamedTuple):
    """The book of one point in ladder order, `[assets, cohorts]` unless stated.

    Groups are `[longs by base rate..., shorts by base rate...]`, `2 * Static.ladder` of them.
    u: `-s k` (USD), ascending within each group. fences: `[assets, groups, fences]` u at every
    `Static.ladder_block`-th position of each group from its start (+inf past its end). quantity: units after the leverage cap.
    bankrupt: USD. rows: `[assets, cohorts, 4]` (u, q, b, e) together, for windows. cum, cum_lo: `[assets, cohorts + 1, 3]` prefix sums of (q, q b, q e), high
    and low parts (units, USD). start, end: `[assets, groups]` int32 first and one-past-last
    position of each group. side: `[assets, groups]` +1/-1. mmr: `[assets, groups]` base rate.
    a_lo, a_hi: `[assets, groups]` least and largest maintenance amount per unit (USD).
    """

    u: jnp.ndarray
    fences: jnp.ndarray
    quantity: jnp.ndarray
    bankrupt: jnp.ndarray
    rows: jnp.ndarray
    cum: jnp.ndarray
    cum_lo: jnp.ndarray
    start: jnp.ndarray
    end: jnp.ndarray
    side: jnp.ndarray
    mmr: jnp.ndarray
    a_lo: jnp.ndarray
    a_hi: jnp.ndarray


def layout(side: np.ndarray, mmr: np.ndarray) -> tuple[int, int, int]:
    """(base rates, block, fences) of a book on the host: the number of distinct maintenance
    rates (groups per side), and the search's block length (a power of two near the square root
    of the largest group) and number of fences per group (`first_false`).

    side, mmr: `[assets, cohorts]` (NumPy)."""
    rates = max(len(np.unique(row)) for row in mmr)
    largest = 1
    for s_row, m_row in zip(side, mmr):
        for s in (1.0, -1.0):
            _, counts = np.unique(m_row[s_row == s], return_counts=True)
            largest = max([largest, *counts.tolist()])
    block = 2 ** math.ceil(math.log2(math.sqrt(largest)))
    return rates, block, -(-largest // block)


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


def _one_asset(side, mmr, maint, entry, q, b, static: Static):
    """The ladder arrays of one asset's cohorts `[cohorts]` (see `Ladder`)."""
    n_rates = static.ladder
    n_groups = 2 * n_rates
    rates = jnp.unique(mmr, size=n_rates)
    # cohorts without quantity (dropped by the book as liquidated at the start) never liquidate:
    # a trailing bucket beyond every group keeps them out of the searches and windows
    group = jnp.where(q > 0, jnp.where(side > 0, 0, n_rates) + jnp.searchsorted(rates, mmr), n_groups)
    u = -side * (b - side * maint)
    order = jnp.lexsort((u, group))
    g_sorted = group[order]
    ids = jnp.arange(n_groups)
    start = jnp.searchsorted(g_sorted, ids, side="left").astype(jnp.int32)
    end = jnp.searchsorted(g_sorted, ids, side="right").astype(jnp.int32)
    q_s, b_s, e_s = q[order], b[order], entry[order]
    hi, lo = _compensated_cumsum(jnp.stack([q_s, q_s * b_s, q_s * e_s], -1))
    zero = jnp.zeros((1, 3), hi.dtype)
    empty = end <= start
    a_lo = jax.ops.segment_min(maint, group, num_segments=n_groups + 1)[:n_groups]
    a_hi = jax.ops.segment_max(maint, group, num_segments=n_groups + 1)[:n_groups]
    at = start[:, None] + static.ladder_block * jnp.arange(static.ladder_fences)
    u_s = u[order]
    return Ladder(
        u=u_s,
        fences=jnp.where(at < end[:, None], u_s[jnp.clip(at, 0, u.shape[0] - 1)], jnp.inf),
        quantity=q_s,
        bankrupt=b_s,
        rows=jnp.stack([u_s, q_s, b_s, e_s], -1),
        cum=jnp.concatenate([zero, hi]),
        cum_lo=jnp.concatenate([zero, lo]),
        start=start,
        end=end,
        side=jnp.where(ids < n_rates, 1.0, -1.0).astype(u.dtype),
        mmr=jnp.concatenate([rates, rates]),
        a_lo=jnp.where(empty, 0.0, a_lo),
        a_hi=jnp.where(empty, 0.0, a_hi),
    )


def build_ladder(book: BookParams, pol: PolicyParams, static: Static) -> Ladder:
    """The ladder of one point: the book after the leverage cap, sorted into rung groups."""
    q, b = cap_leverage(book, pol)
    one = lambda s, m, a, e, q, b: _one_asset(s, m, a, e, q, b, static)
    return jax.vmap(one)(book.side, book.mmr, book.maint_amount, book.entry, q, b)


def prepare(params: Params, static: Static) -> Params:
    """`params` with its ladder built (once per compiled call, outside the scan over steps)."""
    return params._replace(ladder=build_ladder(params.book, params.policy, static))


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


def first_false(lad: Ladder, pred, static: Static) -> jnp.ndarray:
    """Per group `[assets, groups]` the first position in [start, end) where `pred(u)` is false
    (end if none): `pred` must hold on a prefix of each group (u: any shape `[assets, groups,
    ...]`) and be false for u = +inf.

    Two comparisons of everything, no dependent steps: the fences (every `ladder_block`-th
    position) tell the block where the prefix ends, the block's keys the position in it. Per
    group that is `ladder_fences + ladder_block` evaluations of `pred` and one gather, against
    a binary search's chain of `log2(cohorts)` gathers, each waiting for the last.
    """
    n = fold(pred(lad.fences).astype(jnp.int32))
    base = lad.start + jnp.maximum(n - 1, 0) * static.ladder_block
    pos = base[..., None] + jnp.arange(static.ladder_block)
    inside = pos < lad.end[..., None]
    count = fold((inside & pred(take(lad.u, pos))).astype(jnp.int32))
    return jnp.where(n == 0, lad.start, base + count)


def crossed(lad: Ladder, price: jnp.ndarray, mmr: jnp.ndarray, static: Static) -> jnp.ndarray:
    """Per group the end of the cohorts at or beyond their liquidation price at `price` `[assets]`
    (USD), at maintenance rates `mmr` `[assets, groups]`: the hit test of the dense kernel,
    `s (p - p_liq) <= 0` with `p_liq = k / (1 - s m)`, on the group's sorted keys."""
    s = lad.side[..., None]
    den = (1.0 - lad.side * mmr)[..., None]
    p = price[:, None, None]
    return first_false(lad, lambda u: s * (p - (-s * u) / den) <= 0, static)


def cum_at(lad: Ladder, idx: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Prefix sums (q, q b, q e) before positions idx `[assets, groups]`: (high, low) parts,
    `[assets, groups, 3]` each."""
    at = lambda c: jnp.take_along_axis(c, idx[..., None], axis=1)
    return at(lad.cum), at(lad.cum_lo)


def between(upper: tuple, lower: tuple) -> jnp.ndarray:
    """Sums (q, q b, q e) `[..., 3]` over the positions between two `cum_at` results."""
    return (upper[0] - lower[0]) + (upper[1] - lower[1])


def shortfall(lad: Ladder, i0, i1, at0: tuple, fill, static: Static) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Sum of `max(-s q (fill - b), 0)` over positions [i0, i1) of each group, and whether the
    uncertain band outran the window (then the sum is not exact).

    i0, i1: `[assets, groups]` int; at0: `cum_at(lad, i0)`; fill: `[assets, groups]` USD.
    Returns (USD `[assets, groups]`, bool `[assets, groups]`).
    """
    s = lad.side
    j1 = first_false(lad, lambda u: u < (lad.a_lo - s * fill)[..., None], static)
    c1 = jnp.clip(j1, i0, i1)
    sure = between(cum_at(lad, c1), at0)
    surely_under = s * (sure[..., 1] - fill * sure[..., 0])
    pos = c1[..., None] + jnp.arange(WINDOW)
    inside = pos < i1[..., None]
    q, b = take(lad.quantity, pos), take(lad.bankrupt, pos)
    equity = s[..., None] * q * (fill[..., None] - b)
    band = fold(jnp.where(inside, jnp.maximum(-equity, 0.0), 0.0))
    beyond = c1 + WINDOW
    over = (beyond < i1) & (take(lad.u, beyond) < lad.a_hi - s * fill)
    return surely_under + band, over
