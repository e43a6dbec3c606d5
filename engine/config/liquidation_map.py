"""Books from a liquidation-level map (`book.liquidation_map`): how much notional would be
liquidated at each price, as data vendors' liquidation heatmaps estimate it, as cohorts.

One row per level, CSV or Parquet (rows of the same asset, side and price are summed):

| column | type | allowed |
|---|---|---|
| asset | text | an asset of the scenario's `market.assets` |
| side | text | `long`, `short`: the side of the positions liquidated at the level |
| price | number | > 0, finite (USD); a long level below the asset's starting price, a short one above |
| notional_usd | number | > 0, finite (USD, notional liquidated at the level's price) |

Each level becomes one cohort whose liquidation price is the level (to float rounding): leverage
`l = book.map_leverage`, the maintenance rate `m` of tier 0 of `exchange.tiers` and tier 0's
maintenance amount 0. With `p_liq = b / (1 - s m)` and `b = e (1 - s / l)`
(`engine.model.margin`, amount 0) its entry is `e = p_liq (1 - s m) / (1 - s / l)`, its
quantity `notional / p_liq` (so that the notional liquidated at the level's price, before any
price impact, is the map's), its bankruptcy price `b`. A map counts no positions: each row stands for one (`positions`).
Each asset holds its long levels, then its short ones, by price (`engine.config.layout`).

Other columns are refused (naming the closest of these), as are text that is not UTF-8, nested
Parquet columns, integers beyond 2^53, prices outside 10^-12 to 10^12 USD and levels above
10^12 USD (`engine.config.positions`), and levels already crossed at the starting price (all
counted per asset in the message). A bad file gives one `BookFileError` naming the file, the
row (1 = the first data row), the column, the value and what is allowed; a `book.map_leverage` above tier 0's `max_leverage` (or
of 1, which puts a long's liquidation price at 0), a `ConfigError`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from engine.config.book import Cohorts
from engine.config.book_checks import per_asset
from engine.config.errors import ConfigError
from engine.config.layout import cohorts_per_side, lay_out
from engine.config.positions import (
    MAX_NOTIONAL_USD,
    PRICES,
    SIDES,
    BookFileError,
    fail_first,
    fail_outside,
    file_stamp,
    number_column,
    plain,
    read_table,
    text_column,
)
from engine.config.schema import Config, Tier

COLUMNS = ("asset", "side", "price", "notional_usd")


class Levels(NamedTuple):
    """Validated rows of a map, `[rows]` each. asset: index into the scenario's assets. side: +1
    long / -1 short. price: liquidation level (USD). notional: USD at entry."""

    asset: np.ndarray
    side: np.ndarray
    price: np.ndarray
    notional: np.ndarray


def validate_map(table: pa.Table, path, prices: dict[str, float]) -> Levels:
    """The rows of `table` as `Levels`, or `BookFileError` at the first bad value; `prices`: the
    starting price (USD) of each asset of the scenario, in its order."""
    table = plain(path, table, COLUMNS, "liquidation map")
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise BookFileError(f"{path}: column {missing[0]} is missing; required: {', '.join(COLUMNS)}")
    if len(table) == 0:
        raise BookFileError(f"{path}: no levels")
    names = list(prices)
    asset_names = text_column(table, "asset", "")
    fail_first(path, table, "asset", np.array([a not in prices for a in asset_names]), ", ".join(names))
    side_names = np.char.lower(text_column(table, "side", "").astype(str))
    fail_first(path, table, "side", ~np.isin(side_names, SIDES), "long, short")
    asset = np.array([names.index(a) for a in asset_names], np.int64)
    side = np.where(side_names == "long", 1.0, -1.0)

    price = number_column(path, table, "price")
    fail_first(path, table, "price", ~(np.isfinite(price) & (price > 0)), "a finite price > 0 (USD)")
    fail_outside(path, table, "price", price, PRICES, "USD")
    notional = number_column(path, table, "notional_usd")
    ok = np.isfinite(notional) & (notional > 0)
    fail_first(path, table, "notional_usd", ~ok, "a finite number > 0 (USD)")
    why = f"up to {MAX_NOTIONAL_USD:g} USD per level (more than all crypto perpetuals' open interest)"
    fail_first(path, table, "notional_usd", notional > MAX_NOTIONAL_USD, why)
    _refuse_crossed(path, table, names, asset, side, price, notional, np.array([prices[n] for n in names]))
    return Levels(asset=asset, side=side, price=price, notional=notional)


def _refuse_crossed(path, table, names: list[str], asset, side, price, notional, start) -> None:
    """Refuse levels (`asset`, `side`, `price` USD, `notional` USD `[rows]`) at or beyond their
    asset's starting price (`start` `[assets]` USD), naming the first and counting all per asset.
    A map is where liquidations lie ahead of the price: a level behind it is a stale snapshot or
    a price in another unit, not flow to liquidate at t0 (`book.max_underwater_share` is for
    positions files)."""
    p0 = start[asset]
    crossed = side * (price - p0) >= 0
    if np.any(crossed):
        row = int(np.argmax(crossed))
        name, first = names[asset[row]], f"{p0[row]:.10g}"
        allowed = f"0 < price < {first}" if side[row] > 0 else f"price > {first}"
        side_name = SIDES[int(side[row] < 0)]
        counted = per_asset(tuple(names), asset, crossed, notional)
        fail_first(
            path,
            table,
            "price",
            crossed,
            f"{allowed} for a {side_name} level of {name} (market.assets.{name}.price = {first}; a level "
            f"at or beyond the starting price is already crossed; crossed levels: {counted})",
        )


def read_map(path, prices: dict[str, float]) -> Levels:
    """Read and validate a liquidation map (see the module docstring)."""
    return validate_map(read_table(Path(path)), path, prices)


def map_tier(leverage: float, tiers: tuple[Tier, ...]) -> Tier:
    """Tier 0 of `tiers`, the tier of every map cohort, or a `ConfigError` if it does not allow
    `leverage` (book.map_leverage)."""
    top = tiers[0].max_leverage
    if not 1.0 < leverage <= top:
        raise ConfigError(
            f"book.map_leverage = {leverage:g}: allowed above 1 and up to {top:g}, the max_leverage "
            "of tier 0 of exchange.tiers (the tier of every cohort of a liquidation map)"
        )
    return tiers[0]


def _per_asset(cfg: Config) -> list[tuple[dict, dict]]:
    """`_grouped` of `cfg`'s map, computed once while the file is unchanged (a run builds the
    book several times: its size, then each point's parameters)."""
    path = cfg.book.liquidation_map
    stamp = file_stamp("book.liquidation_map", path)
    prices = tuple((name, a.price) for name, a in cfg.market.assets.items())
    leverage = cfg.book.map_leverage
    return _grouped(path, stamp, prices, map_tier(leverage, cfg.exchange.tiers), leverage)


@functools.lru_cache(maxsize=4)
def _grouped(path: str, stamp: tuple[int, int], prices: tuple, tier: Tier, leverage: float) -> list:
    """Per asset, (longs, shorts): one cohort per level of the map at version `stamp`
    (modification time, size), each a dict of `Cohorts` fields `[levels]`, by price."""
    lv = read_map(path, dict(prices))
    keys = np.stack([lv.asset, -lv.side, lv.price], -1)
    unique, index = np.unique(keys, axis=0, return_inverse=True)
    total = lambda x: np.bincount(index.reshape(-1), weights=x, minlength=len(unique))
    side, p_liq = -unique[:, 1], unique[:, 2]
    entry = p_liq * (1.0 - side * tier.mmr) / (1.0 - side / leverage)
    fields = {
        "leverage": np.full(len(unique), leverage),
        "entry": entry,
        "quantity": total(lv.notional) / p_liq,
        "bankrupt": entry * (1.0 - side / leverage),
        "mmr": np.full(len(unique), tier.mmr),
        "maint_amount": np.zeros(len(unique)),  # tier 0's (`engine.config.book.maintenance_amounts`)
        "positions": total(np.ones(len(index.reshape(-1)))),
    }
    return [
        tuple({f: v[(unique[:, 0] == a) & (side == s)] for f, v in fields.items()} for s in (1.0, -1.0))
        for a in range(len(prices))
    ]


def map_cohorts_per_asset(cfg: Config) -> int:
    """Cohorts per asset of the map's book: twice the most levels of any asset and side."""
    return 2 * cohorts_per_side(_per_asset(cfg))


def cohorts_from_map(cfg: Config) -> Cohorts:
    """The book of `cfg.book.liquidation_map` as `Cohorts` `[assets, map_cohorts_per_asset(cfg)]`."""
    return lay_out(cfg, _per_asset(cfg))
