"""The book of a positions file (`book.positions`, `engine.config.positions`) as cohorts.

Each position's kernel fields follow from its row: quantity `notional / entry` (units),
bankruptcy price `entry (1 - s / leverage)` (isolated margin), the tier of one position of
`notional / positions` (or the row's `tier`) and its maintenance rate, and its maintenance
amount (USD, the tier's). Positions of one asset, side, leverage and tier are summed into one
cohort per entry bucket: buckets `book.entry_bin` wide in log entry price (0: one per distinct
entry and maintenance amount per unit, i.e. exact groups). A cohort holds the summed quantity,
the quantity-weighted mean entry, and the summed maintenance amount per unit held, so its
notional, margin, bankruptcy value and maintenance margin are the sums of its positions'; only
its positions' liquidation prices are merged into one (an error within the bucket width,
measured in tests/config/test_book_file.py). Each asset gets its longs, then its shorts, each
side padded with empty cohorts to the largest side of any asset
(`engine.config.book.check_layout`).

Unlike the parametric book, nothing is dropped or rescaled: a position already beyond its
liquidation price at the scenario's starting price is liquidated in the first step, and the
assets' `open_interest_usd` and `long_share` are not used. Cross-margin rows are refused until
accounts are simulated.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from engine.config.book import Cohorts, maintenance_amounts, tier_index
from engine.config.layout import cohorts_per_side, lay_out
from engine.config.positions import BookFileError, Positions, load_positions
from engine.config.schema import Config


def read_positions(path: str, assets: tuple[str, ...], n_tiers: int) -> Positions:
    """The validated positions of a positions file (isolated margin only, for now)."""
    pos = load_positions(path, assets, n_tiers)
    if np.any(pos.cross):
        row = int(np.argmax(pos.cross))
        raise BookFileError(
            f"{path}: row {row + 1}, column margin_mode = 'cross': cross-margin accounts are not "
            "simulated yet; allowed: isolated"
        )
    return pos


def _per_asset(cfg: Config) -> list[tuple[dict, dict]]:
    """`_grouped` of `cfg`'s positions file, computed once while the file is unchanged (a run
    builds the book several times: its size, then each point's parameters)."""
    path = cfg.book.positions
    try:
        st = os.stat(path)
    except OSError:
        raise BookFileError(f"book.positions = {path!r}: no such file") from None
    stamp = (st.st_mtime_ns, st.st_size)
    return _grouped(path, stamp, tuple(cfg.market.assets), cfg.exchange.tiers, cfg.book.entry_bin)


@functools.lru_cache(maxsize=4)
def _grouped(path: str, stamp: tuple[int, int], assets: tuple[str, ...], tiers, width: float) -> list:
    """Per asset, (longs, shorts): the summed cohorts of the positions file at version `stamp`
    (modification time, size), each a dict of `Cohorts` fields `[cohorts]`, in a fixed order."""
    pos = read_positions(path, assets, len(tiers))
    notional = pos.quantity * pos.entry
    tier = np.where(pos.tier >= 0, pos.tier, tier_index(tiers, notional / pos.count))
    amount = maintenance_amounts(tiers)[tier] * pos.count  # USD, all positions of the row
    if width > 0:
        bucket = np.floor(np.log(pos.entry) / width)
    else:  # exact: one group per entry and maintenance amount per unit
        bucket = np.unique(np.stack([pos.entry, amount / pos.quantity], -1), axis=0, return_inverse=True)[1]
    keys = np.stack([pos.asset, -pos.side, pos.leverage, tier, bucket.reshape(-1)], -1)
    unique, index = np.unique(keys, axis=0, return_inverse=True)
    total = lambda x: np.bincount(index.reshape(-1), weights=x, minlength=len(unique))
    quantity = total(pos.quantity)
    side, leverage = -unique[:, 1], unique[:, 2]
    entry = total(notional) / quantity
    if width == 0:  # keep the positions' own entry, not a rounded mean
        entry = pos.entry[np.unique(index.reshape(-1), return_index=True)[1]]
    bankrupt = entry * (1.0 - side / leverage)
    mmr = np.array([t.mmr for t in tiers])[unique[:, 3].astype(int)]
    maint = total(amount) / quantity
    count = total(pos.count)
    out = []
    for a in range(len(assets)):
        sides = []
        for s in (1.0, -1.0):
            m = (unique[:, 0] == a) & (side == s)
            sides.append(
                {
                    "leverage": leverage[m],
                    "entry": entry[m],
                    "quantity": quantity[m],
                    "bankrupt": bankrupt[m],
                    "mmr": mmr[m],
                    "maint_amount": maint[m],
                    "positions": count[m],
                }
            )
        out.append(tuple(sides))
    return out


def cohorts_per_asset(cfg: Config) -> int:
    """Cohorts per asset of the file's book: twice the largest side of any asset."""
    return 2 * cohorts_per_side(_per_asset(cfg))


def cohorts_from_file(cfg: Config) -> Cohorts:
    """The book of `cfg.book.positions` as `Cohorts` `[assets, cohorts_per_asset(cfg)]`."""
    return lay_out(cfg, _per_asset(cfg))
