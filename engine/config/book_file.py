"""The book of a positions file (`book.positions`, `engine.config.positions`) as cohorts.

Each position's kernel fields follow from its row: quantity `notional / entry` (units),
bankruptcy price `entry (1 - s / leverage)` (isolated margin), the tier of one position of
`notional / positions` (or the row's `tier`) and its maintenance rate, and its maintenance
amount (USD, the tier's). Positions of one asset, side, leverage, tier and stop price (rows
without `stop_price` share the no-stop value) are summed into one cohort per entry bucket: buckets `book.entry_bin` wide in log entry price (0: one per distinct
entry and maintenance amount per unit, i.e. exact groups). A cohort holds the summed quantity,
the quantity-weighted mean entry, and the summed maintenance amount per unit held, so its
notional, margin, bankruptcy value and maintenance margin are the sums of its positions'; only
its positions' liquidation prices are merged into one (an error within the bucket width,
measured in tests/config/test_book_file.py). Each asset gets its longs, then its shorts, each
side padded with empty cohorts to the largest side of any asset
(`engine.config.book.check_layout`).

Unlike the parametric book, nothing is dropped or rescaled: a position already beyond its
liquidation price at the scenario's starting price is liquidated in the first step, and the
assets' `open_interest_usd` and `long_share` are not used. Cross-margin rows are left to
`engine.config.accounts`; a file of cross rows only gets an isolated book of one empty cohort
per side and asset.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from engine.config.book import Cohorts, maintenance_amounts, tier_index
from engine.config.layout import NO_STOP, cohorts_per_side, lay_out
from engine.config.positions import Positions, file_stamp, load_positions
from engine.config.schema import Config


class Source(NamedTuple):
    """What the validated positions of a file depend on (a cache key): the file's path and
    version (modification time, size), and the config's assets, their starting prices (USD),
    the number of tiers and the collateral names."""

    path: str
    stamp: tuple[int, int]
    assets: tuple[str, ...]
    prices: tuple[float, ...]
    n_tiers: int
    collateral: tuple[str, ...]


def source_of(cfg: Config) -> Source:
    """The `Source` of `cfg.book.positions` as it is now."""
    path = cfg.book.positions
    return Source(
        path=path,
        stamp=file_stamp("book.positions", path),
        assets=tuple(cfg.market.assets),
        prices=tuple(a.price for a in cfg.market.assets.values()),
        n_tiers=len(cfg.exchange.tiers),
        collateral=tuple(cfg.collateral),
    )


@functools.lru_cache(maxsize=2)
def read_positions(src: Source) -> Positions:
    """The validated positions of the file of `src`, isolated and cross rows, read once per
    version (a run builds the book several times: its size, then each point's parameters)."""
    return load_positions(src.path, src.assets, src.n_tiers, prices=src.prices, collateral=src.collateral)


def row_tiers(pos: Positions, tiers) -> tuple[np.ndarray, np.ndarray]:
    """Each row's tier (its `tier`, or that of one position of `notional / positions`) and
    maintenance amount (USD, all positions of the row), `[rows]` each."""
    tier = np.where(pos.tier >= 0, pos.tier, tier_index(tiers, pos.quantity * pos.entry / pos.count))
    return tier, maintenance_amounts(tiers)[tier] * pos.count


def _per_asset(cfg: Config) -> list[tuple[dict, dict]]:
    """`_grouped` of `cfg`'s positions file."""
    return _grouped(source_of(cfg), cfg.exchange.tiers, cfg.book.entry_bin)


@functools.lru_cache(maxsize=4)
def _grouped(src: Source, tiers, width: float) -> list:
    """Per asset, (longs, shorts): the summed cohorts of the isolated rows of the positions file
    of `src`, each a dict of `Cohorts` fields `[cohorts]` in a fixed order, with `stop` where any
    row has a stop price. Cross rows only: one empty cohort per side (`lay_out` fills it)."""
    all_rows = read_positions(src)
    if all_rows.cross.all():
        return [({"entry": np.array([p])}, {"entry": np.array([p])}) for p in src.prices]
    pos = Positions(*(x[~all_rows.cross] for x in all_rows))
    stops = not np.isnan(pos.stop).all()
    stop = np.where(np.isnan(pos.stop), np.where(pos.side > 0, NO_STOP[1.0], NO_STOP[-1.0]), pos.stop)
    notional = pos.quantity * pos.entry
    tier, amount = row_tiers(pos, tiers)
    if width > 0:
        bucket = np.floor(np.log(pos.entry) / width)
    else:  # exact: one group per entry and maintenance amount per unit
        bucket = np.unique(np.stack([pos.entry, amount / pos.quantity], -1), axis=0, return_inverse=True)[1]
    keys = np.stack([pos.asset, -pos.side, pos.leverage, tier, bucket.reshape(-1), stop], -1)
    unique, index = np.unique(keys, axis=0, return_inverse=True)
    total = lambda x: np.bincount(index.reshape(-1), weights=x, minlength=len(unique))
    quantity = total(pos.quantity)
    side, leverage = -unique[:, 1], unique[:, 2]
    entry = total(notional) / quantity
    if width == 0:  # keep the positions' own entry, not a rounded mean
        entry = pos.entry[np.unique(index.reshape(-1), return_index=True)[1]]
    fields = {
        "leverage": leverage,
        "entry": entry,
        "quantity": quantity,
        "bankrupt": entry * (1.0 - side / leverage),
        "mmr": np.array([t.mmr for t in tiers])[unique[:, 3].astype(int)],
        "maint_amount": total(amount) / quantity,
        "positions": total(pos.count),
    } | ({"stop": unique[:, 5]} if stops else {})
    return [
        tuple({f: v[(unique[:, 0] == a) & (side == s)] for f, v in fields.items()} for s in (1.0, -1.0))
        for a in range(len(src.assets))
    ]


def has_stops(cfg: Config) -> bool:
    """Whether a cohort of the file's isolated book has a stop order."""
    return any("stop" in g for sides in _per_asset(cfg) for g in sides)


def cohorts_per_asset(cfg: Config) -> int:
    """Cohorts per asset of the file's book: twice the largest side of any asset."""
    return 2 * cohorts_per_side(_per_asset(cfg))


def cohorts_from_file(cfg: Config) -> Cohorts:
    """The book of `cfg.book.positions` as `Cohorts` `[assets, cohorts_per_asset(cfg)]`."""
    return lay_out(cfg, _per_asset(cfg))
