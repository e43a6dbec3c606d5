"""Cross-margin accounts on the ladder: what every path shares is stored once per point, and a
path carries only which account cohorts are still open.

An account's legs change only when it is liquidated, and then all at once
(`engine.model.accounts`), or when ADL's queue closes a profitable leg whole. A path's account
book is therefore one bool per account cohort (open) and one small integer whose bits say which
of its legs ADL closed (`cut`, `engine.model.ladder_adl`), and the equity over maintenance of
every account at marks `p` `[assets]` is linear in a short per-path vector `v`:

    E - M = level + sum_a q s p_a - sum_a q m g_a p_a + sum_c U_c w_c  =  level + K v
    v     = (p, g p, w)                                   [2 assets + collateral]

with `level = W + sum_a q (a - s e)` (USD; wallet and legs after the leverage cap), `g_a = 1 +
dynamic_margin * max(0, sigma_a / sigma0_a - 1)` the dynamic-margin multiplier of the step,
`U_c` the units of collateral c and `w_c = (1 - haircut_c) P_c` the margin value of one unit at
the path's marks and depeg gap (`engine.model.collateral`). The coefficients `K` `[accounts, 2
assets + collateral]` are built once per point (`table`), stored transposed, and the hit test
`E - M <= 0` of every account is `2 assets + collateral` multiply-adds per account, made in a
fixed order (`_combine`; sums over accounts are reductions, not matrix products) so that a
path's numbers do not depend on the batch it runs in. A leg ADL closed drops its own terms
(`leg_level`, and its columns of `K`) from its account's sum (`_cut_terms`). Per-path memory is
`[accounts]` bools and bit sets, not `[accounts, assets]` units. The sums are ordered differently from the dense kernel's, so the
two agree to rounding (an account exactly at its threshold can tip either way).

The dense kernel caps a rate in force at `engine.model.policies.MAX_MMR`; a path whose
multiplier would take some leg's rate to the cap is flagged (`capped`) for the dense kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model import accounts, collateral, policies, tally
from engine.model.params import Params


class AccountTable(NamedTuple):
    """The account cohorts of one point, shared by every path (after the leverage cap).

    legs: `[accounts, assets]` units; side: `[accounts, assets]` +1/-1; holds: `[assets,
    accounts]` 1.0 where a leg is held, else 0.0; level: `[accounts]` USD; leg_level: `[assets,
    accounts]` each leg's part of it, `q (a - s e)` (USD); coef: `[2 assets +
    collateral, accounts]` the matrix `K` of the module docstring, transposed; units:
    `[collateral, accounts]` collateral units held; top_mmr: `[assets]` the largest base rate of
    a held leg (0 where none); by_side: `[accounts, 2 assets]` the units of long legs, then of
    short legs; settled: the accounts as `engine.model.accounts.settle` reads them (wallet and
    margin at t0, leverage buckets, positions per unit).
    """

    legs: jnp.ndarray
    side: jnp.ndarray
    holds: jnp.ndarray
    level: jnp.ndarray
    leg_level: jnp.ndarray
    coef: jnp.ndarray
    units: jnp.ndarray
    top_mmr: jnp.ndarray
    by_side: jnp.ndarray
    settled: accounts.AccountStep


def table(params: Params) -> AccountTable:
    """The `AccountTable` of `params` (which hold accounts), built once per compiled call."""
    acc, pol, mp = params.accounts, params.policy, params.market
    legs, wallet, _ = accounts.capped(acc, pol)
    held = legs > 0
    units = acc.collateral if params.collateral is not None else jnp.zeros((legs.shape[0], 0), legs.dtype)
    gap = None if params.collateral is None else jnp.zeros(params.collateral.price0.shape, legs.dtype)
    long_legs = jnp.where(acc.side > 0, legs, 0.0)
    leg_level = legs * (acc.maint_amount - acc.side * acc.entry)
    return AccountTable(
        legs=legs,
        side=acc.side,
        holds=held.T.astype(legs.dtype),
        level=wallet + jnp.sum(leg_level, -1),
        leg_level=leg_level.T,
        coef=jnp.concatenate([legs * acc.side, -legs * acc.mmr, units], -1).T,
        units=units.T,
        top_mmr=jnp.max(jnp.where(held, acc.mmr, 0.0), 0),
        by_side=jnp.concatenate([long_legs, legs - long_legs], -1),
        # what settling reads does not depend on the step's volatility or gap
        settled=accounts.prepare(params, gap, mp.sigma0),
    )


def opened(tab: AccountTable) -> jnp.ndarray:
    """Account cohorts open at t0 `[accounts]` bool: those holding a leg."""
    return jnp.any(tab.holds > 0, 0)


def unit_values(params: Params, gap, price, par: bool = False) -> jnp.ndarray:
    """Margin value of one unit of each collateral asset `[collateral]` (USD) at marks `price`
    `[assets]` and depeg gap `gap` `[collateral]` (`par`: no gap); `[0]` without collateral."""
    cp = params.collateral
    if cp is None:
        return jnp.zeros(0, price.dtype)
    g = jnp.zeros_like(gap) if par else gap
    return (1.0 - cp.haircut) * collateral.prices(cp, g, price, params.market.price0)


class Marks(NamedTuple):
    """What prices the accounts' equity on one path in one step: mult `[assets]` the dynamic
    margin multiplier; gap `[collateral]` the depeg gap (None without collateral); open_ `[assets]`
    bool, markets trading."""

    mult: jnp.ndarray
    gap: jnp.ndarray | None
    open_: jnp.ndarray


def marks(params: Params, sigma, gap, open_) -> Marks:
    """The step's `Marks` of one path: sigma `[assets]` per-step volatility."""
    return Marks(policies.margin_multiplier(sigma, params.market.sigma0, params.policy), gap, open_)


def no_cuts(tab: AccountTable) -> jnp.ndarray:
    """`[accounts]` unsigned integers, bit `a` set where ADL closed the leg of asset `a`: none."""
    return jnp.zeros(tab.legs.shape[0], cut_dtype(tab.legs.shape[1]))


def cut_dtype(n_assets: int):
    """The unsigned integer type of a bit set over `n_assets` legs (at most 32)."""
    return jnp.uint8 if n_assets <= 8 else jnp.uint16 if n_assets <= 16 else jnp.uint32


def is_cut(cut, n_assets: int) -> jnp.ndarray:
    """`cut.shape + [assets]` bool: the legs of the bit sets `cut` that ADL closed."""
    bits = jnp.arange(n_assets, dtype=cut.dtype)
    return ((cut[..., None] >> bits) & 1) > 0


def _kept(legs, cut) -> jnp.ndarray:
    """legs `[n, assets]` (units) with those ADL closed (`cut` `[n]`) set to 0."""
    return jnp.where(is_cut(cut, legs.shape[1]), 0.0, legs)


def held_legs(tab: AccountTable, cut) -> jnp.ndarray:
    """The legs `[accounts, assets]` (units) each account still holds: the table's less those ADL
    closed (`cut` `[accounts]`; None: none)."""
    return tab.legs if cut is None else _kept(tab.legs, cut)


def _cut_terms(leg_level, coef, v, cut) -> jnp.ndarray:
    """The terms `[n]` of the legs ADL closed in `level + K v` (`_combine`'s arguments for `n`
    accounts, leg_level `[assets, n]`, cut `[n]`), summed in a fixed order."""
    n_assets = leg_level.shape[0]
    gone = is_cut(cut, n_assets)
    out = jnp.zeros_like(leg_level[0])
    for a in range(n_assets):
        term = leg_level[a] + coef[a] * v[a] + coef[n_assets + a] * v[n_assets + a]
        out = out + jnp.where(gone[..., a], term, 0.0)
    return out


def capped(tab: AccountTable, m: Marks) -> jnp.ndarray:
    """`[]` bool: the multiplier takes some held leg's rate beyond `policies.MAX_MMR`, where the
    dense kernel caps it and `excess` would not (the path goes to the dense kernel)."""
    return jnp.any(tab.top_mmr * m.mult > policies.MAX_MMR)


def excess(tab: AccountTable, params: Params, m: Marks, price, cut=None) -> jnp.ndarray:
    """Equity minus maintenance `[accounts]` (USD) of every account cohort at marks `price`
    `[assets]` (USD), with the legs it held at t0 less those ADL closed (`cut` `[accounts]`;
    None: none)."""
    v = jnp.concatenate([price, m.mult * price, unit_values(params, m.gap, price)])
    out = _combine(tab.level, tab.coef, v)
    return out if cut is None else out - _cut_terms(tab.leg_level, tab.coef, v, cut)


def _combine(level, coef, v) -> jnp.ndarray:
    """`level + K v`: level `[n]`, coef `[2 assets + collateral, n]`, v `[2 assets + collateral]`
    or `[2 assets + collateral, n]`. The terms are added in a fixed order, elementwise, so an
    account's sum is the same in any batch of paths (a matrix product's association can change
    with the batch's size, and a tipping account with it)."""
    out = level
    for j in range(coef.shape[0]):
        out = out + coef[j] * v[j]
    return out


def live(tab: AccountTable, alive, m: Marks, cut=None) -> jnp.ndarray:
    """Accounts `[accounts]` bool that can be liquidated this step: open (`alive`) with every
    leg it holds (less those ADL closed, `cut`) in a trading market."""
    halted = (~m.open_).astype(tab.holds.dtype)
    holds = tab.holds if cut is None else jnp.where(is_cut(cut, tab.legs.shape[1]).T, 0.0, tab.holds)
    return alive & (jnp.matmul(halted, holds, precision=jax.lax.Precision.HIGHEST) == 0)


class Hits(NamedTuple):
    """The accounts a step's rounds liquidated so far, of one path: hit `[accounts]` bool;
    round `[accounts]` int32, the round that hit; fills `[rounds, assets, 2]` USD, each round's
    fill of long and short legs; prices `[rounds, assets]` USD, each round's marks. What the
    dense kernel records per round and account (collateral value, caused by the depeg) is
    found at `settle`, for the accounts hit only, from the marks of their round."""

    hit: jnp.ndarray
    round: jnp.ndarray
    fills: jnp.ndarray
    prices: jnp.ndarray


def no_hits(tab: AccountTable, rounds: int) -> Hits:
    """No account hit yet; rounds: the most rounds of a step."""
    n, assets = tab.legs.shape
    dtype = tab.legs.dtype
    return Hits(
        jnp.zeros(n, bool),
        jnp.zeros(n, jnp.int32),
        jnp.zeros((rounds, assets, 2), dtype),
        jnp.zeros((rounds, assets), dtype),
    )


def hits(
    tab: AccountTable, params: Params, m: Marks, can, price, cut=None
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A round's new hits at marks `price` `[assets]` (USD) among the accounts `can` `[accounts]`
    bool (live, not hit yet): (new `[accounts]` bool, their units per asset and side `[assets,
    2]`), as `engine.model.accounts.hits`. cut: as `excess`."""
    new = can & (excess(tab, params, m, price, cut) <= 0)
    return new, _sides(tab, new, cut)


def record(h: Hits, index, new, fill, price) -> Hits:
    """`h` with round `index`'s new hits `new` `[accounts]`, filled at `fill` `[assets, 2]`
    (USD, long legs then short legs per asset) at marks `price` `[assets]`."""
    return Hits(
        hit=h.hit | new,
        round=jnp.where(new, index, h.round),
        fills=h.fills.at[index].set(fill),
        prices=h.prices.at[index].set(price),
    )


def _sides(tab: AccountTable, mask, cut=None) -> jnp.ndarray:
    """Units `[assets, 2]` (long, short) of the legs of the accounts `mask` `[accounts]` bool
    (less those ADL closed, `cut`)."""
    by_side = tab.by_side
    if cut is not None:
        by_side = jnp.where(jnp.tile(is_cut(cut, tab.legs.shape[1]), 2), 0.0, by_side)
    return jnp.sum(jnp.where(mask[:, None], by_side, 0.0), 0).reshape(2, -1).T


def left(tab: AccountTable, params: Params, m: Marks, can, price, cut=None) -> jnp.ndarray:
    """Notional `[]` (USD) at marks `price` of the accounts `can` still under water there (the
    cascade's residual). cut: as `excess`."""
    under = can & (excess(tab, params, m, price, cut) <= 0)
    return jnp.sum(jnp.sum(jnp.where(under[:, None], held_legs(tab, cut), 0.0), 0) * price)


# Accounts settled at a time (`settle`): a step's cost grows with the accounts it liquidated,
# in steps of this many, not with the book.
SETTLE_CHUNK = 512


def _pending(tab: AccountTable, params: Params, m: Marks, h: Hits, idx, cut) -> accounts.Pending:
    """`engine.model.accounts.Pending` of the accounts `idx` `[chunk]` (`n` for none): their
    collateral value at the marks of the round that hit them, and whether the depeg caused it
    (not under water with the collateral at par at those marks). cut: as `excess` (or None)."""
    n = h.hit.shape[0]
    valid = idx < n
    k = jnp.minimum(idx, n - 1)
    rnd = h.round[k]
    price = h.prices[rnd]  # [chunk, assets]
    values = jax.vmap(lambda p: unit_values(params, m.gap, p))(price)  # [chunk, collateral]
    coll = jnp.sum(tab.units[:, k].T * values, -1)
    caused = jnp.zeros_like(valid)
    if params.collateral is not None:
        v = jnp.concatenate([price, m.mult * price, values], -1)  # [chunk, 2 assets + collateral]
        ex = _combine(tab.level[k], tab.coef[:, k], v.T)
        if cut is not None:
            ex = ex - _cut_terms(tab.leg_level[:, k], tab.coef[:, k], v.T, cut[k])
        par = jax.vmap(lambda p: unit_values(params, m.gap, p, par=True))(price)
        caused = valid & (ex - coll + jnp.sum(tab.units[:, k].T * par, -1) > 0)
    return accounts.Pending(valid, caused, rnd, coll, h.fills)


def settle(
    tab: AccountTable, params: Params, m: Marks, h: Hits, t: tally.Tally, cut=None
) -> accounts.Settled:
    """`engine.model.accounts.settle` of the accounts `h.hit` of one path, `SETTLE_CHUNK` of them
    at a time (their rows gathered from the table, less the legs ADL closed, `cut`); `quantity`
    is None (the legs of the accounts still open are the table's)."""
    n = h.hit.shape[0]
    size = min(n, SETTLE_CHUNK)
    order = jnp.nonzero(h.hit, size=n + size, fill_value=n)[0]
    rows = lambda x, idx: x[jnp.minimum(idx, n - 1)]
    st = tab.settled

    def chunk(carry):
        i, done = carry
        idx = jax.lax.dynamic_slice_in_dim(order, i, size)
        sub = st._replace(
            acc=jax.tree_util.tree_map(lambda x: rows(x, idx), st.acc),
            wallet=rows(st.wallet, idx),
            margin0=rows(st.margin0, idx),
            weights=rows(st.weights, idx),
            per_unit=rows(st.per_unit, idx),
        )
        legs = rows(tab.legs, idx) if cut is None else _kept(rows(tab.legs, idx), rows(cut, idx))
        r = accounts.settle(sub, legs, _pending(tab, params, m, h, idx, cut), done.tally)
        return i + size, accounts.Settled(
            None,
            done.liquidated + r.liquidated,
            done.shortfall + r.shortfall,
            done.trader_loss + r.trader_loss,
            done.counterparty + r.counterparty,
            done.fund_inflow + r.fund_inflow,
            r.tally,
        )

    z = jnp.zeros((), tab.legs.dtype)
    side2 = jnp.zeros((tab.legs.shape[1], 2), tab.legs.dtype)
    start = accounts.Settled(None, side2, side2, z, z, z, t)
    count = jnp.sum(h.hit)
    return jax.lax.while_loop(lambda c: c[0] < count, chunk, (jnp.zeros((), count.dtype), start))[1]
