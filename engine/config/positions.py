"""Books from data: positions read from a CSV or Parquet file, validated row by row, and
turned into cohorts by `engine.config.book_file`.

One row per position, or per group of identical positions already summed:

| column | type | allowed | required |
|---|---|---|---|
| asset | text | an asset of the scenario's `market.assets` | yes |
| side | text | `long`, `short` | yes |
| notional_usd | number | > 0, finite (USD at entry) | one of notional_usd, quantity |
| quantity | number | > 0, finite (asset units) | one of notional_usd, quantity |
| entry_price | number | > 0, finite (USD) | yes |
| leverage | number | 1 to 1,000 | one of leverage, margin_usd |
| margin_usd | number | > 0, finite, at most the notional | one of leverage, margin_usd |
| margin_mode | text | `isolated`, `cross` (default `isolated`) | no |
| account_id | text | non-empty where margin_mode is `cross` | for cross rows |
| tier | integer | 0 to the number of tiers of `exchange.tiers` - 1 | no (by notional) |
| positions | number | > 0: positions the row stands for (default 1) | no |

A row of several positions (`positions` > 1, e.g. a modelled book's cohort) has the tier and
the maintenance amount of one position of `notional / positions`.

A bad file gives one `BookFileError` naming the file, the row (1 = the first data row), the
column, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from engine.config.errors import ConfigError

SIDES = ("long", "short")
MODES = ("isolated", "cross")
MAX_LEVERAGE = 1000.0


class BookFileError(ConfigError):
    """A positions file that cannot be read as a book: the message names the file, the row,
    the column and the allowed values."""


class Positions(NamedTuple):
    """Validated positions, `[positions]` each.

    asset: index into the scenario's assets. side: +1 long / -1 short. quantity: asset units.
    entry: USD. leverage: notional at entry over margin. cross: margin mode is cross.
    account: account id (empty for isolated). tier: bracket index, -1 to take it by notional.
    count: positions the row stands for.
    """

    asset: np.ndarray
    side: np.ndarray
    quantity: np.ndarray
    entry: np.ndarray
    leverage: np.ndarray
    cross: np.ndarray
    account: np.ndarray
    tier: np.ndarray
    count: np.ndarray


def read_table(path: Path) -> pa.Table:
    """The file as an Arrow table (`.csv` or `.parquet`), every column as read."""
    path = Path(path)
    if not path.is_file():
        raise BookFileError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".csv":
            return pcsv.read_csv(path)
        if path.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise BookFileError(f"{path}: not a readable {path.suffix[1:]} file ({e})") from None
    raise BookFileError(
        f"{path}: the file type {path.suffix or '(none)'} is not allowed; allowed: .csv, .parquet"
    )


def _fail(path, table: pa.Table, column: str, bad: np.ndarray, allowed: str):
    """Raise for the first row of `bad` (bool `[rows]`) if there is one."""
    if np.any(bad):
        row = int(np.argmax(bad))
        value = table.column(column)[row].as_py() if column in table.column_names else None
        raise BookFileError(f"{path}: row {row + 1}, column {column} = {value!r}: allowed {allowed}")


def _numbers(path, table: pa.Table, column: str) -> np.ndarray:
    """A column as float64 (NaN where empty); a non-numeric column fails on its first row."""
    col = table.column(column)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        as_num = pc.cast(col, pa.float64(), safe=False) if pa.types.is_string(col.type) else None
        if as_num is None:
            _fail(path, table, column, np.ones(len(table), bool), "numbers")
        return as_num.to_numpy(zero_copy_only=False)
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


def _text(table: pa.Table, column: str, default: str) -> np.ndarray:
    """A column as lower-case text (`default` where absent or empty)."""
    if column not in table.column_names:
        return np.full(len(table), default, object)
    values = pc.cast(table.column(column), pa.string()).to_numpy(zero_copy_only=False)
    return np.array([default if v is None or v == "" else str(v).strip() for v in values], object)


def validate(table: pa.Table, path, assets: tuple[str, ...], n_tiers: int) -> Positions:
    """The rows of `table` as `Positions`, or `BookFileError` at the first bad value."""
    names = set(table.column_names)
    for column in ("asset", "side", "entry_price"):
        if column not in names:
            raise BookFileError(f"{path}: column {column} is missing; required: asset, side, entry_price")
    for pair in (("notional_usd", "quantity"), ("leverage", "margin_usd")):
        if len(names & set(pair)) != 1:
            raise BookFileError(f"{path}: give exactly one of the columns {pair[0]} or {pair[1]}")
    if len(table) == 0:
        raise BookFileError(f"{path}: no positions")

    asset_names = _text(table, "asset", "")
    lookup = {a: i for i, a in enumerate(assets)}
    _fail(path, table, "asset", np.array([a not in lookup for a in asset_names]), ", ".join(assets))
    side_names = np.char.lower(_text(table, "side", "").astype(str))
    _fail(path, table, "side", ~np.isin(side_names, SIDES), "long, short")
    side = np.where(side_names == "long", 1.0, -1.0)

    entry = _numbers(path, table, "entry_price")
    _fail(path, table, "entry_price", ~(np.isfinite(entry) & (entry > 0)), "a finite price > 0 (USD)")
    size_col = "notional_usd" if "notional_usd" in names else "quantity"
    size = _numbers(path, table, size_col)
    _fail(path, table, size_col, ~(np.isfinite(size) & (size > 0)), "a finite number > 0")
    notional = size if size_col == "notional_usd" else size * entry

    if "leverage" in names:
        leverage = _numbers(path, table, "leverage")
        ok = np.isfinite(leverage) & (leverage >= 1.0) & (leverage <= MAX_LEVERAGE)
        _fail(path, table, "leverage", ~ok, f"1 to {MAX_LEVERAGE:g}")
    else:
        margin = _numbers(path, table, "margin_usd")
        ok = np.isfinite(margin) & (margin > 0) & (margin <= notional) & (notional / margin <= MAX_LEVERAGE)
        _fail(
            path, table, "margin_usd", ~ok, f"> 0 and at most the notional, leverage up to {MAX_LEVERAGE:g}"
        )
        leverage = notional / margin

    modes = np.char.lower(_text(table, "margin_mode", "isolated").astype(str))
    _fail(path, table, "margin_mode", ~np.isin(modes, MODES), "isolated, cross")
    cross = modes == "cross"
    account = _text(table, "account_id", "")
    _fail(path, table, "account_id", cross & (account == ""), "an account id on every cross-margin row")
    account = np.where(cross, account, "")

    tier = np.full(len(table), -1, np.int64)
    if "tier" in names:
        t = _numbers(path, table, "tier")
        given = np.isfinite(t)
        ok = ~given | ((t == np.round(t)) & (t >= 0) & (t < n_tiers))
        _fail(path, table, "tier", ~ok, f"an integer from 0 to {n_tiers - 1}, or empty")
        tier = np.where(given, t, -1).astype(np.int64)
    count = np.ones(len(table))
    if "positions" in names:
        count = _numbers(path, table, "positions")
        _fail(path, table, "positions", ~(np.isfinite(count) & (count > 0)), "a finite number > 0")

    return Positions(
        asset=np.array([lookup[a] for a in asset_names], np.int64),
        side=side,
        quantity=notional / entry,
        entry=entry,
        leverage=leverage,
        cross=cross,
        account=account,
        tier=tier,
        count=count,
    )


def load_positions(path, assets: tuple[str, ...], n_tiers: int) -> Positions:
    """Read and validate a positions file (see the module docstring)."""
    return validate(read_table(Path(path)), path, assets, n_tiers)
