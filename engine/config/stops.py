"""Resting stop orders of the config (`book.stops`) as cohorts beside any book.

A stop order of traders outside the book (spot holders, other venues) is a cohort of its asset
and side that the kernel closes, as a market order, when the mark crosses its `price`: a long
stop sells when the mark falls to it, a short stop buys when it rises to it. It holds
`notional_usd / price` units entered at `price` with 1x leverage (bankruptcy price
`price (1 - s)`: a long is never liquidated, a short only at twice its price), tier 0's rate
and no maintenance amount, and stands for one position. A stop at or beyond the asset's
starting price would trigger at once and is refused.

`with_stops` appends them to each asset's longs or shorts of a book and lays the book out again
(`engine.config.layout`): every side grows by the most stop orders of any asset and side.
"""

from __future__ import annotations

import numpy as np

from engine.config.book import Cohorts
from engine.config.errors import ConfigError
from engine.config.layout import NO_STOP, lay_out
from engine.config.schema import Config

SIDES = {"long": 1.0, "short": -1.0}


def stop_groups(cfg: Config) -> list[tuple[dict, dict]]:
    """Per asset of `cfg`, (longs, shorts): its stop orders as dicts of `Cohorts` fields
    `[orders]` (with `stop`), in the order of `book.stops`; ConfigError for a stop that would
    trigger at once."""
    names = list(cfg.market.assets)
    orders: list[tuple[list, list]] = [([], []) for _ in names]
    for i, o in enumerate(cfg.book.stops):
        s, start = SIDES[o.side], cfg.market.assets[o.asset].price
        if s * (o.price - start) >= 0:
            where = "below" if s > 0 else "above"
            raise ConfigError(
                f"book.stops.{i}.price = {o.price:g}: a {o.side} stop on the wrong side of the starting "
                f"price of {o.asset} ({start:g}) triggers at once; allowed: {where} {start:g}"
            )
        orders[names.index(o.asset)][int(s < 0)].append(o)
    mmr = cfg.exchange.tiers[0].mmr
    return [
        tuple(
            {
                "leverage": np.ones(len(side)),
                "entry": np.array([o.price for o in side]),
                "quantity": np.array([o.notional_usd / o.price for o in side]),
                "bankrupt": np.array([o.price * (1.0 - s) for o in side]),
                "mmr": np.full(len(side), mmr),
                "maint_amount": np.zeros(len(side)),
                "positions": np.ones(len(side)),
                "stop": np.array([o.price for o in side]),
            }
            for s, side in zip((1.0, -1.0), by_side)
        )
        for by_side in orders
    ]


def per_side(cfg: Config) -> int:
    """The most stop orders of any asset and side: the cohorts `with_stops` adds to each side
    (ConfigError for a stop that would trigger at once, as `stop_groups`)."""
    return max(len(g["entry"]) for sides in stop_groups(cfg) for g in sides)


def with_stops(cfg: Config, book: Cohorts) -> Cohorts:
    """`book` `[assets, 2 k]` with `cfg`'s stop orders appended to its sides:
    `[assets, 2 (k + per_side(cfg))]`; `book` itself without any."""
    if not cfg.book.stops:
        return book
    k = book.side.shape[1] // 2
    fields = [f for f in Cohorts._fields if f not in ("side", "stop")]
    groups = []
    for a, extra in enumerate(stop_groups(cfg)):
        sides = []
        for j, (s, more) in enumerate(zip((1.0, -1.0), extra)):
            half = slice(j * k, (j + 1) * k)
            own = {f: getattr(book, f)[a, half] for f in fields}
            own["stop"] = np.full(k, NO_STOP[s]) if book.stop is None else book.stop[a, half]
            sides.append({f: np.concatenate([own[f], more[f]]) for f in own})
        groups.append(tuple(sides))
    return lay_out(cfg, groups)
