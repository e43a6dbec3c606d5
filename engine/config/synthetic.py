"""Synthetic positions files (`liqstress make-book`): realistic books of any size for tests,
benchmarks and the docs, in the schema of `engine.config.positions`.

Per asset of the scenario, the positions hold its open interest (`open_interest_usd`) with its
long share; leverage is drawn from `book.leverage` with `book.leverage_weights`, the entry from
`price * exp(Normal(book.entry_log_mean, book.entry_log_std))`, and the notional from a
log-normal (median `MEDIAN_USD`, log-sd `SIZE_LOG_SD`: many small positions and a heavy tail
of large ones), scaled so that each side sums to its share of the open interest exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from engine.config.errors import ConfigError
from engine.config.schema import Config

MEDIAN_USD = 10_000.0
SIZE_LOG_SD = 1.8


def make_positions(cfg: Config, n: int, seed: int = 0) -> pa.Table:
    """n isolated-margin positions (a table in the positions schema) for `cfg`'s assets."""
    if n < 2 * len(cfg.market.assets):
        raise ConfigError(f"--positions {n}: allowed at least 2 per asset ({2 * len(cfg.market.assets)})")
    rng = np.random.default_rng(seed)
    book, assets = cfg.book, list(cfg.market.assets.values())
    names = np.array(list(cfg.market.assets))
    oi = np.array([a.open_interest_usd for a in assets])
    asset = np.sort(rng.choice(len(assets), n, p=oi / oi.sum()))
    asset[: 2 * len(assets)] = np.repeat(np.arange(len(assets)), 2)  # every asset and side present
    long_share = np.array([a.long_share for a in assets])[asset]
    side = np.where(rng.random(n) < long_share, 1.0, -1.0)
    side[: 2 * len(assets)] = np.tile([1.0, -1.0], len(assets))
    weights = np.asarray(book.leverage_weights, float)
    leverage = np.asarray(book.leverage, float)[rng.choice(len(weights), n, p=weights / weights.sum())]
    price = np.array([a.price for a in assets])[asset]
    entry = price * np.exp(rng.normal(book.entry_log_mean, book.entry_log_std, n))
    notional = rng.lognormal(np.log(MEDIAN_USD), SIZE_LOG_SD, n)
    for a, spec in enumerate(assets):
        for s, share in ((1.0, spec.long_share), (-1.0, 1.0 - spec.long_share)):
            m = (asset == a) & (side == s)
            notional[m] *= spec.open_interest_usd * share / notional[m].sum()
    return pa.table(
        {
            "asset": names[asset],
            "side": np.where(side > 0, "long", "short"),
            "notional_usd": notional,
            "entry_price": entry,
            "leverage": leverage,
            "margin_mode": np.full(n, "isolated"),
        }
    )


def write_positions(table: pa.Table, path: Path) -> None:
    """Write `table` as CSV or Parquet by the suffix of `path`, whole or not at all (a
    temporary file renamed into place)."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".csv", ".parquet"):
        raise ConfigError(f"{path}: the file type {kind or '(none)'} is not allowed; allowed: .csv, .parquet")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        (pcsv.write_csv if kind == ".csv" else pq.write_table)(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
