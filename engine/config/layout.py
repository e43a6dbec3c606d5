"""Cohorts from per-asset, per-side groups: the common layout of every book read from data.

`lay_out` takes, per asset, the long and the short cohorts as dicts of `Cohorts` fields
(`[cohorts]` each; `side` not needed, `stop` optional) and pads each side with empty cohorts to
the largest side of any asset, so that every asset holds its longs first, then as many shorts
(`engine.config.book.check_layout`).
"""

from __future__ import annotations

import numpy as np

from engine.config.book import Cohorts, check_layout
from engine.config.schema import Config

# The stop price of a cohort without a stop order: never crossed (`engine.model.params.BookParams`).
NO_STOP = {1.0: 0.0, -1.0: np.inf}


def cohorts_per_side(groups: list[tuple[dict, dict]]) -> int:
    """The largest side of any asset: each side of each asset is padded to it."""
    return max(max(len(longs["entry"]), len(shorts["entry"])) for longs, shorts in groups)


def lay_out(cfg: Config, groups: list[tuple[dict, dict]]) -> Cohorts:
    """`Cohorts` `[assets, 2 * cohorts_per_side(groups)]` of `groups` (one (longs, shorts) per
    asset of `cfg`, in its order). `stop` is kept where any group has it (cohorts without one
    get `NO_STOP`), else None."""
    k = cohorts_per_side(groups)
    stops = any("stop" in g for sides in groups for g in sides)
    fields = [f for f in Cohorts._fields if f != "stop" or stops]
    rows = {f: [] for f in fields}
    for asset, sides in zip(cfg.market.assets.values(), groups):
        for s, g in zip((1.0, -1.0), sides):
            n = len(g["entry"])
            # an empty cohort: no quantity, 1x leverage at the starting price (never liquidated)
            fill = {
                "leverage": 1.0,
                "entry": asset.price,
                "quantity": 0.0,
                "bankrupt": asset.price * (1.0 - s),
                "mmr": cfg.exchange.tiers[0].mmr,
                "maint_amount": 0.0,
                "positions": 0.0,
                "stop": NO_STOP[s],
            }
            for f in fields:
                if f == "side":
                    rows[f].append(np.full(k, s))
                    continue
                have = np.asarray(g[f], float) if f in g else np.full(n, fill[f])
                rows[f].append(np.concatenate([have, np.full(k - n, fill[f])]))
    cohorts = Cohorts(
        **{
            f: np.stack([np.concatenate(v[2 * a : 2 * a + 2]) for a in range(len(groups))])
            for f, v in rows.items()
        }
    )
    check_layout(cohorts.side)
    return cohorts
