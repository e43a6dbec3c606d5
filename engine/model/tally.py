"""What the book's detail adds to a step's and a path's totals: stops, counts, and losses by
leverage bucket and margin mode.

A `Tally` is summed over rounds and steps (`add`), but for `largest_loss`, a maximum. Notional
here is at *entry* price (the size of what was liquidated, independent of the fills, so every
kernel form can give it); the cascade's `liquidated` holds the notional at fill.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model.params import LEVERAGE_BUCKETS, LEVERAGE_EDGES, BookParams, PolicyParams
from engine.model.policies import cap_leverage

ISOLATED, CROSS = 0, 1  # column of the margin-mode axis


class Tally(NamedTuple):
    """stop_notional: `[assets, 2]` USD of stop orders triggered, at fill (long, short).
    positions: `[assets]` positions liquidated (a position liquidated in part counts by the
    share of its units). accounts: `[]` cross accounts liquidated; account_assets: `[assets]`
    those of them that held a leg in each asset. by_leverage: `[2, buckets]`
    (notional at entry, trader loss) USD by leverage bucket (`LEVERAGE_BUCKETS`). by_mode: `[2,
    2]` the same by margin mode (isolated, cross). largest_loss: `[]` USD, the most one account
    lost (an isolated position is its own account). collateral_caused: `[]` USD notional at
    fill of accounts that collateral at par would not have liquidated. markdown: `[]` USD the
    fall in margin value of the collateral of liquidated accounts since t0."""

    stop_notional: jnp.ndarray
    positions: jnp.ndarray
    accounts: jnp.ndarray
    account_assets: jnp.ndarray
    by_leverage: jnp.ndarray
    by_mode: jnp.ndarray
    largest_loss: jnp.ndarray
    collateral_caused: jnp.ndarray
    markdown: jnp.ndarray


def zero(n_assets: int, dtype) -> Tally:
    """Nothing tallied yet."""
    z = jnp.zeros((), dtype)
    return Tally(
        stop_notional=jnp.zeros((n_assets, 2), dtype),
        positions=jnp.zeros(n_assets, dtype),
        accounts=z,
        account_assets=jnp.zeros(n_assets, dtype),
        by_leverage=jnp.zeros((2, len(LEVERAGE_BUCKETS)), dtype),
        by_mode=jnp.zeros((2, 2), dtype),
        largest_loss=z,
        collateral_caused=z,
        markdown=z,
    )


def add(a: Tally, b: Tally) -> Tally:
    """`a` and `b` together: sums, and the larger `largest_loss`."""
    total = jax.tree_util.tree_map(jnp.add, a, b)
    return total._replace(largest_loss=jnp.maximum(a.largest_loss, b.largest_loss))


def bucket_weights(leverage: jnp.ndarray) -> jnp.ndarray:
    """One-hot leverage bucket `[..., buckets]` of `leverage` `[...]` (x): bucket i holds
    leverage in [edge_{i-1}, edge_i)."""
    edges = jnp.asarray(LEVERAGE_EDGES, leverage.dtype)
    index = jnp.sum(leverage[..., None] >= edges, -1)
    return (index[..., None] == jnp.arange(len(LEVERAGE_BUCKETS))).astype(leverage.dtype)


def liquidations(t: Tally, entry_notional, loss, weights, positions, one_loss, mode: int) -> Tally:
    """`t` with liquidations of one margin mode added (stops and collateral aside).

    entry_notional, loss: `[...]` USD liquidated at entry and lost by the traders, per cohort
    or leg; weights: `[..., buckets]` their `bucket_weights`; positions: `[assets]` positions
    liquidated; one_loss: `[...]` the loss of one account (or isolated position) of each
    cohort that liquidated (0 elsewhere), USD; mode: `ISOLATED` or `CROSS`.
    """
    w = weights.reshape(-1, weights.shape[-1])
    by_lev = jnp.stack([entry_notional.reshape(-1) @ w, loss.reshape(-1) @ w])
    totals = jnp.stack([jnp.sum(entry_notional), jnp.sum(loss)])
    return t._replace(
        positions=t.positions + positions,
        by_leverage=t.by_leverage + by_lev,
        by_mode=t.by_mode.at[:, mode].add(totals),
        largest_loss=jnp.maximum(t.largest_loss, jnp.max(one_loss, initial=0.0)),
    )


def cohort_inputs(book: BookParams, pol: PolicyParams) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Leverage buckets `[assets, cohorts, buckets]` (leverage after the cap) and positions
    per unit held at t0 `[assets, cohorts]` of isolated cohorts, for `cohorts`."""
    q0 = cap_leverage(book, pol)[0]
    per_unit = jnp.where(q0 > 0, book.positions / jnp.where(q0 > 0, q0, 1.0), 0.0)
    return bucket_weights(jnp.minimum(book.leverage, pol.leverage_cap)), per_unit


def cohorts(entry, buckets, per_unit, t: Tally, dq, loss) -> Tally:
    """`t` with the liquidations of isolated cohorts added: `dq` units `[assets, cohorts]`
    that lost `loss` (USD); entry `[assets, cohorts]` USD; buckets, per_unit: `cohort_inputs`."""
    positions = per_unit * dq
    one = jnp.where(positions > 0, loss / jnp.where(positions > 0, positions, 1.0), 0.0)
    return liquidations(t, dq * entry, loss, buckets, jnp.sum(positions, -1), one, ISOLATED)


def whole(book: BookParams, pol: PolicyParams, t: Tally, dq, bankrupt) -> Tally:
    """`t` with whole liquidations of isolated cohorts added, a path's at its end: `dq` units
    `[assets, cohorts]` liquidated, each losing its margin `s dq (e - b)` at the bankruptcy
    price `bankrupt` `[assets, cohorts]` (USD) of its cohort, which whole liquidation never
    moves."""
    margin = book.side * dq * (book.entry - bankrupt)
    return cohorts(book.entry, *cohort_inputs(book, pol), t, dq, margin)
