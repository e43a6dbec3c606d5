"""Book of cohorts: open interest split by side, leverage, entry price and position size.

A cohort is a group of identical isolated-margin positions, held as a quantity and a
bankruptcy price (the margin arithmetic is `engine.model.margin`). The tier of a cohort (its
`mmr` and maintenance amount) is fixed by its representative position size at entry.

The book is built once per scenario on the host with NumPy; `engine.config.build` moves it to
the device. Arrays are `[assets, cohorts]`; every asset has the same cohort layout (longs first,
then shorts, each by leverage, entry quantile and size), checked by `check_layout`;
`engine.model.cascade.side_matrix` relies on the layout being the same for all assets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine.config.schema import Config, Tier
from engine.model.margin import liquidation_price


class Cohorts(NamedTuple):
    """Static description and initial state of every cohort, `[assets, cohorts]` each.

    side: +1 long / -1 short. leverage: initial leverage (x). entry: entry price (USD).
    quantity: asset units held. bankrupt: bankruptcy price (USD). mmr: maintenance margin
    rate (fraction). maint_amount: maintenance amount per unit held (USD). positions: the number
    of positions the cohort stands for (parametric book: notional over the representative
    size). stop: trigger price (USD) of the stop order closing the cohort (0 for a long,
    infinity for a short without one), or None when no cohort has one.
    """

    side: np.ndarray
    leverage: np.ndarray
    entry: np.ndarray
    quantity: np.ndarray
    bankrupt: np.ndarray
    mmr: np.ndarray
    maint_amount: np.ndarray
    positions: np.ndarray
    stop: np.ndarray | None = None


def maintenance_amounts(tiers: tuple[Tier, ...]) -> np.ndarray:
    """Maintenance amount (USD) of each bracket, making `notional * rate - amount` continuous.

    amount_i = amount_{i-1} + floor_i * (rate_i - rate_{i-1}), floor_i = the upper bound of the
    bracket below (docs/data.md).
    """
    amounts = np.zeros(len(tiers))
    for i in range(1, len(tiers)):
        floor = tiers[i - 1].max_notional_usd
        amounts[i] = amounts[i - 1] + floor * (tiers[i].mmr - tiers[i - 1].mmr)
    return amounts


def tier_index(tiers: tuple[Tier, ...], notional: np.ndarray) -> np.ndarray:
    """Bracket of each position notional (USD); sizes above the table use the last bracket."""
    caps = np.array([t.max_notional_usd for t in tiers])
    return np.minimum(np.searchsorted(caps, notional, side="left"), len(tiers) - 1)


def check_layout(side: np.ndarray) -> None:
    """Raise ValueError unless every asset's row of `side` `[assets, cohorts]` is the same,
    longs (+1) then as many shorts (-1): the layout `build_cohorts` makes. The per-side sums
    (`engine.model.cascade.side_matrix`) rely on the rows being the same."""
    n = side.shape[-1]
    expected = np.repeat([1.0, -1.0], n // 2)
    if n % 2 or not np.array_equal(side, np.broadcast_to(expected, side.shape)):
        raise ValueError("book: every asset must hold its longs first, then as many shorts")


def build_cohorts(cfg: Config) -> Cohorts:
    """Cohorts of every asset, `[assets, 2 * levels * entry_points * sizes]`.

    Weights: side share x leverage weight x entry quantile (equal) x size weight. A size whose
    bracket forbids the leverage gets no weight (its share moves to allowed sizes of that
    leverage); cohorts that would already be liquidated at the starting price are dropped
    and the side's open interest is spread over the rest, so the book matches the configured
    open interest and long share exactly.
    """
    book, tiers = cfg.book, cfg.exchange.tiers
    lev = np.asarray(book.leverage, float)
    w_lev = np.asarray(book.leverage_weights, float)
    sizes = np.asarray(book.position_sizes_usd, float)
    w_size = np.asarray(book.size_weights, float)
    n_e = book.entry_points
    probs = (np.arange(n_e) + 0.5) / n_e
    from scipy.special import ndtri  # the normal quantile; SciPy loads when a book is built, not read

    offsets = book.entry_log_mean + book.entry_log_std * ndtri(probs)

    tier = tier_index(tiers, sizes)
    mmr_of_size = np.array([tiers[j].mmr for j in tier])
    amount_of_size = maintenance_amounts(tiers)[tier]
    max_lev_of_size = np.array([tiers[j].max_leverage for j in tier])

    # [levels, sizes]: allowed combinations, size weights renormalised per leverage level.
    allowed = lev[:, None] <= max_lev_of_size[None, :] + 1e-9
    ws = w_size[None, :] * allowed
    row = ws.sum(axis=1, keepdims=True)
    ws = np.divide(ws, row, out=np.zeros_like(ws), where=row > 0)
    wl = w_lev * (row[:, 0] > 0)
    if wl.sum() <= 0:
        raise ValueError("book: no leverage level is allowed by any tier of the exchange table")
    wl = wl / wl.sum()

    shape = (2, len(lev), n_e, len(sizes))
    side = np.broadcast_to(np.array([1.0, -1.0])[:, None, None, None], shape)
    L = np.broadcast_to(lev[None, :, None, None], shape)
    off = np.broadcast_to(offsets[None, None, :, None], shape)
    w = wl[None, :, None, None] * ws[None, :, None, :] / n_e * np.ones(shape)
    mmr = np.broadcast_to(mmr_of_size[None, None, None, :], shape)
    amt_pos = np.broadcast_to(amount_of_size[None, None, None, :], shape)
    size_pos = np.broadcast_to(sizes[None, None, None, :], shape)

    out = {k: [] for k in Cohorts._fields if k != "stop"}
    for asset in cfg.market.assets.values():
        entry = asset.price * np.exp(off)
        bankrupt = entry * (1.0 - side / L)
        a_unit = amt_pos * entry / size_pos  # maintenance amount per unit held
        p_liq = liquidation_price(side, bankrupt, mmr, a_unit)
        distance = np.where(side * (asset.price - p_liq) > 0, np.abs(np.log(asset.price / p_liq)), 0.0)
        alive = (
            np.minimum(distance / book.barrier_ramp, 1.0) if book.barrier_ramp > 0 else (distance > 0) * 1.0
        )
        notional = np.zeros(shape)
        for i, share in enumerate([asset.long_share, 1.0 - asset.long_share]):
            wi = w[i] * alive[i]
            total = wi.sum()
            if total > 0:
                notional[i] = asset.open_interest_usd * share * wi / total
        for name, arr in [
            ("side", side),
            ("leverage", L),
            ("entry", entry),
            ("quantity", notional / entry),
            ("bankrupt", bankrupt),
            ("mmr", mmr),
            ("maint_amount", a_unit),
            ("positions", notional / size_pos),
        ]:
            out[name].append(np.asarray(arr, float).reshape(-1))
    cohorts = Cohorts(**{k: np.stack(v) for k, v in out.items()})
    check_layout(cohorts.side)
    return cohorts
