"""The NumPy reference (`engine.sim.reference`) of the book's detail: the tally, collateral and
cross-margin account cohorts, written apart from the JAX kernel.

The equations are those of the docstrings of `engine.model.tally`, `engine.model.collateral`
and `engine.model.accounts`. As in `engine.sim.reference`, every state array has a leading
path axis `[paths, ...]`, parameters have none, and all arithmetic is float64. Account legs
are `[paths, accounts, assets]`; ADL sees them transposed, `[paths, assets, accounts]`, beside
the isolated cohorts.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine.model.params import LEVERAGE_BUCKETS, LEVERAGE_EDGES, AccountParams, CollateralParams, Params
from engine.model.policies import MAX_MMR
from engine.model.tally import Tally

ISOLATED, CROSS = 0, 1  # column of the margin-mode axis


def safe(x: np.ndarray) -> np.ndarray:
    """`x` where positive, else 1 (a divisor whose quotient is then masked out)."""
    return np.where(x > 0, x, 1.0)


def per_side(x: np.ndarray, side: np.ndarray) -> np.ndarray:
    """`[paths, assets, n]` summed into `[paths, assets, 2]` (long, short); side `[assets, n]`."""
    return np.stack([np.sum(x * (side > 0), -1), np.sum(x * (side < 0), -1)], -1)


def maintenance_rate(mmr: np.ndarray, excess: np.ndarray, pol) -> np.ndarray:
    """Rate in force: mmr (1 + dynamic_margin * excess), at most `MAX_MMR`; excess: sigma /
    sigma0 - 1 floored at 0, broadcast to the shape of `mmr` by the caller."""
    return np.minimum(mmr * (1.0 + pol.dynamic_margin * excess), MAX_MMR)


# ---- the tally ----


def zero_tally(n_paths: int, n_assets: int) -> Tally:
    """Nothing tallied yet, for `n_paths` paths."""
    z = np.zeros(n_paths)
    return Tally(
        stop_notional=np.zeros((n_paths, n_assets, 2)),
        positions=np.zeros((n_paths, n_assets)),
        accounts=z.copy(),
        account_assets=np.zeros((n_paths, n_assets)),
        by_leverage=np.zeros((n_paths, 2, len(LEVERAGE_BUCKETS))),
        by_mode=np.zeros((n_paths, 2, 2)),
        largest_loss=z.copy(),
        collateral_caused=z.copy(),
        markdown=z.copy(),
    )


def add_tally(a: Tally, b: Tally) -> Tally:
    """`a` and `b` together: every field summed but `largest_loss`, the larger of the two."""
    total = Tally(*(x + y for x, y in zip(a, b)))
    return total._replace(largest_loss=np.maximum(a.largest_loss, b.largest_loss))


def bucket_weights(leverage: np.ndarray) -> np.ndarray:
    """One-hot leverage bucket `[..., buckets]`: bucket i holds leverage in [edge_{i-1}, edge_i)."""
    index = np.zeros(np.shape(leverage), np.int64)
    for edge in LEVERAGE_EDGES:
        index += np.asarray(leverage) >= edge
    return (index[..., None] == np.arange(len(LEVERAGE_BUCKETS))).astype(np.float64)


def tally_liquidations(t: Tally, entry_notional, loss, weights, positions, one_loss, mode: int) -> Tally:
    """`t` with liquidations of one margin mode added. entry_notional, loss, one_loss: `[paths,
    ...]` USD per cohort or account (one_loss: of one account or isolated position, 0 where none
    liquidated); weights: `[..., buckets]` their leverage buckets; positions: `[paths, assets]`."""
    n_p = loss.shape[0]
    w = weights.reshape(-1, weights.shape[-1])
    entry_notional, loss = entry_notional.reshape(n_p, -1), loss.reshape(n_p, -1)
    by_mode = t.by_mode.copy()
    by_mode[:, 0, mode] += entry_notional.sum(-1)
    by_mode[:, 1, mode] += loss.sum(-1)
    return t._replace(
        positions=t.positions + positions,
        by_leverage=t.by_leverage + np.stack([entry_notional @ w, loss @ w], 1),
        by_mode=by_mode,
        largest_loss=np.maximum(t.largest_loss, np.max(one_loss.reshape(n_p, -1), -1, initial=0.0)),
    )


def cohort_tally(t: Tally, params: Params, q0: np.ndarray, dq: np.ndarray, loss: np.ndarray) -> Tally:
    """`t` with isolated cohorts' liquidations added: `dq` units `[paths, assets, cohorts]` that
    lost `loss` (USD); q0: `[assets, cohorts]` units at t0 after the leverage cap."""
    bk, pol = params.book, params.policy
    positions = np.where(q0 > 0, bk.positions / safe(q0), 0.0) * dq
    one = np.where(positions > 0, loss / safe(positions), 0.0)
    buckets = bucket_weights(np.minimum(bk.leverage, pol.leverage_cap))
    return tally_liquidations(t, dq * bk.entry, loss, buckets, positions.sum(-1), one, ISOLATED)


# ---- collateral ----


def next_gap(gap: np.ndarray, u: np.ndarray, scheduled: np.ndarray, cp: CollateralParams) -> np.ndarray:
    """Depeg gap `[paths, collateral]` of this step: last step's `gap` decays by the recovery
    factor, a random depeg (uniform `u` below `depeg_prob`) opens it to at least `depeg_size`,
    and the scheduled least gap `[collateral]` holds it up."""
    g = gap * cp.recovery
    g = np.where(u < cp.depeg_prob, np.maximum(g, cp.depeg_size), g)
    return np.maximum(g, scheduled)


def collateral_prices(cp: CollateralParams, gap, mark, price0) -> np.ndarray:
    """Collateral prices `[paths, collateral]` (USD) at perp marks `mark` `[paths, assets]`."""
    follow = np.ones_like(gap)
    for c, k in enumerate(np.asarray(cp.track)):
        if k >= 0:
            follow[:, c] = mark[:, k] / price0[k]
    return cp.price0 * follow * (1.0 - gap)


# ---- account cohorts ----


class Accounts(NamedTuple):
    """What a step's cascade rounds and ADL read about the accounts (`accounts.AccountStep`).

    wallet, margin0: `[accounts]` USD after the leverage cap, and with the collateral at t0.
    mmr: `[paths, accounts, assets]` rates in force. weights: `[accounts, buckets]`. gap:
    `[paths, collateral]` or None. price0: `[assets]` USD.
    """

    acc: AccountParams
    cp: CollateralParams | None
    wallet: np.ndarray
    margin0: np.ndarray
    mmr: np.ndarray
    weights: np.ndarray
    gap: np.ndarray | None
    price0: np.ndarray
    q0: np.ndarray  # [accounts, assets] leg units at t0 after the cap


def capped_accounts(acc: AccountParams, pol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leg units `[accounts, assets]`, wallet `[accounts]` USD and leverage `[accounts]` after
    the cap: leverage l above the cap c is brought to c by dividing every leg by l / c (reduce
    size) or adding margin (l / c - 1) times the margin at t0, notional / l (add margin)."""
    lev = np.minimum(acc.leverage, pol.leverage_cap)
    ratio = np.where(lev > 0, acc.leverage / safe(lev), 1.0)  # no legs: nothing to cap
    if pol.cap_add_margin > 0.5:
        margin = np.sum(acc.quantity * acc.entry, -1) / safe(acc.leverage)
        return acc.quantity.copy(), acc.wallet + margin * (ratio - 1.0), lev
    return acc.quantity / ratio[:, None], acc.wallet.copy(), lev


def prepare(params: Params, gap, excess) -> Accounts:
    """The `Accounts` of a step; gap: `[paths, collateral]` or None; excess: `[paths, assets]`
    volatility over its long-run level less 1, floored at 0 (dynamic margin)."""
    acc, cp, mp = params.accounts, params.collateral, params.market
    q0, wallet, lev = capped_accounts(acc, params.policy)
    mmr = maintenance_rate(acc.mmr, excess[:, None, :], params.policy)
    c0 = 0.0 if cp is None else acc.collateral @ ((1.0 - cp.haircut) * cp.price0)
    return Accounts(acc, cp, wallet, wallet + c0, mmr, bucket_weights(lev), gap, mp.price0, q0)


def collateral_value(ac: Accounts, price, par: bool = False) -> np.ndarray:
    """Margin value `[paths, accounts]` (USD, after haircuts) of the accounts' collateral at
    marks `price` `[paths, assets]`; `par`: without the depeg gap."""
    if ac.cp is None:
        return np.zeros((price.shape[0], ac.wallet.shape[0]))
    gap = np.zeros_like(ac.gap) if par else ac.gap
    unit = (1.0 - ac.cp.haircut) * collateral_prices(ac.cp, gap, price, ac.price0)
    return unit @ ac.acc.collateral.T


def equity(ac: Accounts, q, price, par: bool = False) -> np.ndarray:
    """E = W + C(p) + sum_a s q (p_a - e_a), `[paths, accounts]` USD; q `[paths, accounts,
    assets]` units at marks `price` `[paths, assets]`."""
    pnl = np.sum(ac.acc.side * q * (price[:, None, :] - ac.acc.entry), -1)
    return ac.wallet + collateral_value(ac, price, par) + pnl


def under_water(ac: Accounts, q, price, active, par: bool = False) -> np.ndarray:
    """Accounts `[paths, accounts]` with a leg, every leg's market open (`active` `[paths,
    assets]`), and equity at or below maintenance M = sum_a (m_a q p_a - q a_a)."""
    maintenance = np.sum(q * (ac.mmr * price[:, None, :] - ac.acc.maint_amount), -1)
    holds = q > 0
    open_ = np.all(~holds | active[:, None, :], -1)
    return holds.any(-1) & open_ & (equity(ac, q, price, par) <= maintenance)


def hit(ac: Accounts, q, price, active) -> tuple[np.ndarray, np.ndarray]:
    """The accounts under water `[paths, accounts]` at the round's marks, and those of them
    that collateral at par would have kept above water (caused by the depeg)."""
    under = under_water(ac, q, price, active)
    if ac.cp is None:
        return under, np.zeros_like(under)
    return under, under & ~under_water(ac, q, price, active, par=True)


def fills(ac: Accounts, phi, price, price_next, discount) -> np.ndarray:
    """Fills `[paths, accounts, assets]` (USD) of the legs: the backstop's share `phi`
    `[paths]` at the round's marks `price` less its discount, the rest at `price_next`."""
    phi = phi[:, None, None]
    p, p_next = price[:, None, :], price_next[:, None, :]
    return phi * p * (1.0 - ac.acc.side * discount) + (1.0 - phi) * p_next


def settle(ac: Accounts, q, hits, caused, fill, price, t: Tally) -> tuple[np.ndarray, dict, Tally]:
    """Close the accounts `hits` `[paths, accounts]` whole at `fill` `[paths, accounts, assets]`,
    collateral valued at marks `price` `[paths, assets]`. Returns the units closed, the round's
    sums (liquidated, shortfall `[paths, assets, 2]`; trader_loss, counterparty, fund_inflow
    `[paths]`, USD) and the tally with the liquidations added.

    trader loss W + C0; counterparty sum s q (e - f); E_f = W + C(p) + sum s q (f - e), into
    the fund where positive, else the shortfall, booked per leg by its share of the notional
    at fill; markdown C0 - C(p).
    """
    acc = ac.acc
    s, e = acc.side, acc.entry
    dq = np.where(hits[..., None], q, 0.0)
    at_fill = dq * fill
    coll = collateral_value(ac, price)
    left = ac.wallet + coll + np.sum(s * dq * (fill - e), -1)
    short = np.where(hits, np.maximum(-left, 0.0), 0.0)
    size = at_fill.sum(-1)
    loss = np.where(hits, ac.margin0, 0.0)
    weight = np.where(hits, acc.weight, 0.0)
    # positions by the share of the leg's units at t0 still held (ADL may have cut the leg)
    positions = np.sum(np.where(ac.q0 > 0, acc.positions / safe(ac.q0), 0.0) * dq, 1)
    one = np.where(hits, loss / safe(weight), 0.0)
    t = tally_liquidations(t, np.sum(dq * e, -1), loss, ac.weights, positions, one, CROSS)
    t = t._replace(
        accounts=t.accounts + weight.sum(-1),
        account_assets=t.account_assets + np.sum(np.where(dq > 0, weight[..., None], 0.0), 1),
        collateral_caused=t.collateral_caused + np.where(caused, size, 0.0).sum(-1),
        markdown=t.markdown + np.where(hits, ac.margin0 - ac.wallet - coll, 0.0).sum(-1),
    )
    legs = lambda x: per_side(np.swapaxes(x, 1, 2), s.T)
    sums = {
        "liquidated": legs(at_fill),
        "shortfall": legs(short[..., None] * at_fill / safe(size)[..., None]),
        "trader_loss": loss.sum(-1),
        "counterparty": np.sum(s * dq * (e - fill), (1, 2)),
        "fund_inflow": np.where(hits, np.maximum(left, 0.0), 0.0).sum(-1),
    }
    return dq, sums, t


def adl_legs(ac: Accounts, q, price) -> tuple[np.ndarray, ...]:
    """The legs as ADL sees them, `[paths, assets, accounts]` each: profit (USD), score (profit
    over the account's margin at t0, times its notional over its equity), and units; and their
    side `[assets, accounts]`. q: `[paths, accounts, assets]`; price: `[paths, assets]` USD."""
    s = ac.acc.side
    profit = np.maximum(s * q * (price[:, None, :] - ac.acc.entry), 0.0)
    leverage = np.sum(q * price[:, None, :], -1) / safe(equity(ac, q, price))
    score = np.where(profit > 0, profit / safe(ac.margin0)[..., None] * leverage[..., None], 0.0)
    legs = lambda x: np.swapaxes(x, 1, 2)
    return legs(profit), legs(score), legs(q), s.T
