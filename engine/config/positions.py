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
| collateral | text | `USD` (default) or a name in the config's `collateral` (cross rows) | no |
| stop_price | number | > 0, finite (USD), on the safe side of the starting price, isolated rows | no |
| position_id | text | unique within the file | no |

A row of several positions (`positions` > 1, e.g. a modelled book's cohort) has the tier and
the maintenance amount of one position of `notional / positions`. A row's margin is
`notional / leverage` (or `margin_usd`), posted in its `collateral`; an isolated row's is USD.
A stop price (empty: none) triggers a stop-market order that closes the position when the mark
crosses it: a long's lies below the asset's starting price, a short's above it (else it would
trigger at once). An `account_id` is isolated on all its rows or cross on all of them, and
holds one side per asset (hedge mode is not simulated); cross rows make the accounts
(`engine.config.accounts`).

Every value must lie within the model's range: a row's notional at most
`MAX_NOTIONAL_USD` (10^12 USD, more than the open interest of all crypto perpetuals together,
so a larger row is a unit error) and prices from 10^-12 to 10^12 USD, so that no product of the
model's float32 arithmetic overflows. A column not in the table above is refused (naming the
closest known column: `marginmode` would otherwise turn cross rows isolated without a word), as
are cells pyarrow cannot hold as one number or one text: text that is not UTF-8 (a
spreadsheet's Latin-1 CSV), a list or other nested Parquet column, an integer beyond 2^53 (not
exact as a float).

A bad file gives one `BookFileError` naming the file, the row (1 = the first data row), the
column, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import os
import stat
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
COLUMNS = (
    "asset",
    "side",
    "notional_usd",
    "quantity",
    "entry_price",
    "leverage",
    "margin_usd",
    "margin_mode",
    "account_id",
    "tier",
    "positions",
    "collateral",
    "stop_price",
    "position_id",
)
# Bounds that keep the model's float32 products of two values (price x units, notional x rate)
# far below float32's 3.4e38: prices (USD), a row's notional (USD; 10^12 is more than the open
# interest of all crypto perpetuals together, so a larger row is a unit error) and positions.
PRICES = (1e-12, 1e12)
MAX_NOTIONAL_USD = 1e12
MAX_POSITIONS = 1e12
EXACT_INT = 2**53  # integers beyond it are not exact as float64


class BookFileError(ConfigError):
    """A positions file that cannot be read as a book: the message names the file, the row,
    the column and the allowed values."""


class Positions(NamedTuple):
    """Validated positions, `[positions]` each.

    asset: index into the scenario's assets. side: +1 long / -1 short. quantity: asset units.
    entry: USD. leverage: notional at entry over margin. cross: margin mode is cross.
    account: account id (empty for isolated). tier: bracket index, -1 to take it by notional.
    count: positions the row stands for. collateral: index into the config's `collateral` of
    the asset the margin is posted in, -1 for USD. stop: stop trigger price (USD), NaN for none.
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
    collateral: np.ndarray
    stop: np.ndarray


def file_stamp(field: str, path: str) -> tuple[int, int]:
    """The version of the book file `path` named by config `field` (modification time in ns,
    size in bytes), a cache key; `BookFileError` naming the field if it is not a readable file."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise BookFileError(f"{field} = {path!r}: {err.strerror.lower()}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BookFileError(f"{field} = {path!r}: not a file (allowed: a .csv or .parquet file)")
    return st.st_mtime_ns, st.st_size


def read_table(path: Path) -> pa.Table:
    """The file as an Arrow table (`.csv` or `.parquet`), every column as read (`plain` makes
    its columns text or numbers)."""
    path = Path(path)
    if not path.is_file():
        raise BookFileError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
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


def plain(path, table: pa.Table, known: tuple[str, ...], what: str) -> pa.Table:
    """`table` with every column text (string), numbers (integer, float) or empty (null), or
    `BookFileError` for a column not in `known` (naming the closest of them; `what`: the kind
    of file) or a cell that is not one number or one UTF-8 text."""
    try:
        names = table.column_names
    except UnicodeDecodeError as e:  # a header pyarrow could not decode
        raise BookFileError(
            f"{path}: the header row is not UTF-8 text ({e}); save the file as UTF-8"
        ) from None
    for i, name in enumerate(names):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise BookFileError(
                f"{path}: column {name!r} is not a column of a {what}; {hint}allowed: {', '.join(known)}"
            )
        if name in names[:i]:
            raise BookFileError(f"{path}: column {name} is given twice; allowed: once")
    return pa.Table.from_arrays([_plain_column(path, table, c) for c in names], names)


def _plain_column(path, table: pa.Table, column: str) -> pa.ChunkedArray:
    """The column `column` of `table` as text, numbers or nulls (see `plain`)."""
    col = table.column(column)
    kind = col.type
    if pa.types.is_dictionary(kind):  # a categorical column: its values
        col, kind = col.cast(kind.value_type), kind.value_type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):  # text pyarrow could not decode
        bad = np.array([v is not None and not _is_utf8(v) for v in col.to_pylist()], bool)
        why = "UTF-8 text (this cell is not: save the file as UTF-8, e.g. a spreadsheet's 'CSV UTF-8')"
        fail_first(path, table, column, bad, why)
        return col.cast(pa.string())
    if pa.types.is_large_string(kind) or pa.types.is_decimal(kind):
        return col.cast(pa.float64() if pa.types.is_decimal(kind) else pa.string())
    plain_kinds = (pa.types.is_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_null)
    if not any(is_kind(kind) for is_kind in plain_kinds):
        given = pc.invert(pc.is_null(col)).to_numpy(zero_copy_only=False)
        fail_first(path, table, column, given, f"one number or one text per cell (the column holds {kind})")
    return col


def _is_utf8(raw: bytes) -> bool:
    """Whether `raw` decodes as UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def fail_first(path, table: pa.Table, column: str, bad: np.ndarray, allowed: str):
    """Raise for the first row of `bad` (bool `[rows]`) if there is one."""
    if np.any(bad):
        row = int(np.argmax(bad))
        value = table.column(column)[row].as_py() if column in table.column_names else None
        raise BookFileError(f"{path}: row {row + 1}, column {column} = {value!r}: allowed {allowed}")


def fail_outside(path, table: pa.Table, column: str, values: np.ndarray, bounds: tuple, unit: str):
    """Raise for the first row of `values` (`[rows]`, NaN: not given) outside `bounds` (low,
    high) in `unit`, the range in which the model's float32 arithmetic cannot overflow."""
    low, high = bounds
    why = f"{low:g} to {high:g} {unit} (beyond it the model's float32 arithmetic overflows)"
    fail_first(path, table, column, (values < low) | (values > high), why)


def number_column(path, table: pa.Table, column: str) -> np.ndarray:
    """A column as float64 (NaN where empty); fails on the first row that is not a number or an
    integer beyond 2^53 (not exact as a float)."""
    col = table.column(column)
    if pa.types.is_string(col.type):  # text: numbers written as text, or a value that is not one
        values = [None if v is None or not v.strip() else v for v in col.to_pylist()]
        fail_first(path, table, column, np.array([not _is_number(v) for v in values]), "numbers")
        return np.array([np.nan if v is None else float(v) for v in values])
    if pa.types.is_integer(col.type) and col.type.bit_width == 64:  # narrower ones are exact
        big = pc.greater(col, pa.scalar(EXACT_INT, col.type))  # compared in the column's own type
        if pa.types.is_signed_integer(col.type):  # an unsigned column has no -2^53 to compare with
            big = pc.or_(big, pc.less(col, -EXACT_INT))
        why = f"integers up to 2^53 = {EXACT_INT} in size (beyond it they are not exact as floats)"
        fail_first(path, table, column, big.fill_null(False).to_numpy(zero_copy_only=False), why)
    elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)):
        fail_first(path, table, column, np.ones(len(table), bool), "numbers")
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


def _is_number(text: str | None) -> bool:
    """Whether a text cell reads as a number (an empty one, None, does: it is NaN)."""
    if text is None:
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def text_column(table: pa.Table, column: str, default: str) -> np.ndarray:
    """A column (text or numbers, `plain`) as text (`default` where absent or empty)."""
    if column not in table.column_names:
        return np.full(len(table), default, object)
    values = pc.cast(table.column(column), pa.string()).to_numpy(zero_copy_only=False)
    return np.array([default if v is None or v == "" else str(v).strip() for v in values], object)


def validate(
    table: pa.Table,
    path,
    assets: tuple[str, ...],
    n_tiers: int,
    *,
    prices: tuple[float, ...] | None = None,
    collateral: tuple[str, ...] = (),
) -> Positions:
    """The rows of `table` as `Positions`, or `BookFileError` at the first bad value.

    prices: the assets' starting prices (USD), which a stop price must not have crossed (None:
    stop prices are only checked to be positive). collateral: the names of the config's
    `collateral`, in its order (besides `USD`)."""
    table = plain(path, table, COLUMNS, "positions file")
    names = _check_columns(path, table)
    asset_names = text_column(table, "asset", "")
    lookup = {a: i for i, a in enumerate(assets)}
    fail_first(path, table, "asset", np.array([a not in lookup for a in asset_names]), ", ".join(assets))
    side_names = np.char.lower(text_column(table, "side", "").astype(str))
    fail_first(path, table, "side", ~np.isin(side_names, SIDES), "long, short")
    side = np.where(side_names == "long", 1.0, -1.0)
    entry, notional, leverage = _sizes(path, table, names)

    modes = np.char.lower(text_column(table, "margin_mode", "isolated").astype(str))
    fail_first(path, table, "margin_mode", ~np.isin(modes, MODES), "isolated, cross")
    cross = modes == "cross"
    account = text_column(table, "account_id", "")
    fail_first(path, table, "account_id", cross & (account == ""), "an account id on every cross-margin row")
    asset = np.array([lookup[a] for a in asset_names], np.int64)
    _check_accounts(path, table, account, asset, side, cross)
    account = np.where(cross, account, "")

    tier = np.full(len(table), -1, np.int64)
    if "tier" in names:
        t = number_column(path, table, "tier")
        given = np.isfinite(t)
        ok = ~given | ((t == np.round(t)) & (t >= 0) & (t < n_tiers))
        fail_first(path, table, "tier", ~ok, f"an integer from 0 to {n_tiers - 1}, or empty")
        tier = np.where(given, t, -1).astype(np.int64)
    count = np.ones(len(table))
    if "positions" in names:
        count = number_column(path, table, "positions")
        fail_first(path, table, "positions", ~(np.isfinite(count) & (count > 0)), "a finite number > 0")
        fail_outside(path, table, "positions", count, (0.0, MAX_POSITIONS), "positions")

    _check_ids(path, table)
    return Positions(
        asset=asset,
        side=side,
        quantity=notional / entry,
        entry=entry,
        leverage=leverage,
        cross=cross,
        account=account,
        tier=tier,
        count=count,
        collateral=_collateral(path, table, cross, collateral),
        stop=_stops(path, table, cross, asset, side, None if prices is None else dict(zip(assets, prices))),
    )


def _sizes(path, table: pa.Table, names: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's entry price (USD), notional at entry (USD) and leverage, `[rows]` each, from
    the columns `names` of `table` give (one of notional_usd and quantity, one of leverage and
    margin_usd)."""
    entry = number_column(path, table, "entry_price")
    fail_first(path, table, "entry_price", ~(np.isfinite(entry) & (entry > 0)), "a finite price > 0 (USD)")
    fail_outside(path, table, "entry_price", entry, PRICES, "USD")
    size_col = "notional_usd" if "notional_usd" in names else "quantity"
    size = number_column(path, table, size_col)
    fail_first(path, table, size_col, ~(np.isfinite(size) & (size > 0)), "a finite number > 0")
    notional = size if size_col == "notional_usd" else size * entry
    what = "a notional" if size_col == "notional_usd" else "a notional (quantity x entry_price)"
    why = f"{what} up to {MAX_NOTIONAL_USD:g} USD per row (more than all crypto perpetuals' open interest)"
    fail_first(path, table, size_col, notional > MAX_NOTIONAL_USD, why)

    if "leverage" in names:
        leverage = number_column(path, table, "leverage")
        ok = np.isfinite(leverage) & (leverage >= 1.0) & (leverage <= MAX_LEVERAGE)
        fail_first(path, table, "leverage", ~ok, f"1 to {MAX_LEVERAGE:g}")
    else:
        margin = number_column(path, table, "margin_usd")
        ok = np.isfinite(margin) & (margin > 0) & (margin <= notional) & (notional / margin <= MAX_LEVERAGE)
        fail_first(
            path, table, "margin_usd", ~ok, f"> 0 and at most the notional, leverage up to {MAX_LEVERAGE:g}"
        )
        leverage = notional / margin
    return entry, notional, leverage


def _check_columns(path, table: pa.Table) -> set[str]:
    """The column names of `table`, or `BookFileError` for a missing one or no rows."""
    names = set(table.column_names)
    for column in ("asset", "side", "entry_price"):
        if column not in names:
            raise BookFileError(f"{path}: column {column} is missing; required: asset, side, entry_price")
    for pair in (("notional_usd", "quantity"), ("leverage", "margin_usd")):
        if len(names & set(pair)) != 1:
            raise BookFileError(f"{path}: give exactly one of the columns {pair[0]} or {pair[1]}")
    if len(table) == 0:
        raise BookFileError(f"{path}: no positions")
    return names


def codes(values: np.ndarray) -> np.ndarray:
    """The code `[rows]` int64 of each of `values` (text or numbers): 0, 1, ... in the order of
    first appearance."""
    return pa.array(values).dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _refuse_unlike_first(path, table, column: str, labels, group, rows, why: str) -> None:
    """Refuse the first of `rows` (bool `[rows]`) whose label (`labels` `[rows]`, the value of
    `column` as read) differs from that of the first row of its `group` (`codes` `[rows]`),
    naming that row; `why`: the rule."""
    _, index, inverse = np.unique(group, return_index=True, return_inverse=True)
    first = index[inverse.reshape(-1)]
    bad = rows & (labels != labels[first])
    if np.any(bad):
        ref = first[int(np.argmax(bad))]
        fail_first(path, table, column, bad, f"{str(labels[ref])!r}, as on row {ref + 1} of {why}")


def _check_accounts(path, table: pa.Table, account, asset, side, cross) -> None:
    """Refuse an account (`account` ids `[rows]`, "" for none) whose rows mix margin modes
    (`cross` `[rows]` bool), or that holds both sides (`side` `[rows]` +1/-1) of an asset
    (`asset` `[rows]` indices)."""
    held = account != ""
    if not np.any(held):
        return
    who = codes(account)
    why = "the same account (an account with mixed margin modes is not simulated)"
    _refuse_unlike_first(path, table, "margin_mode", np.array(MODES)[cross.astype(int)], who, held, why)
    why = "the same account and asset (hedge mode is not simulated: one side per asset per account)"
    legs = who * (int(asset.max()) + 1) + asset
    _refuse_unlike_first(path, table, "side", np.array(SIDES)[(side < 0).astype(int)], legs, held, why)


def _check_ids(path, table: pa.Table) -> None:
    """Refuse a `position_id` given on an earlier row too (empty ids are not compared)."""
    if "position_id" not in table.column_names:
        return
    ids = text_column(table, "position_id", "")
    given = ids != ""
    group = codes(ids)
    first = np.unique(group, return_index=True)[1][group]
    bad = given & (first != np.arange(len(ids)))
    if np.any(bad):
        ref = first[int(np.argmax(bad))]
        fail_first(path, table, "position_id", bad, f"an id not used before (row {ref + 1} has it)")


def _collateral(path, table: pa.Table, cross: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Index `[rows]` of each row's collateral in `names`, -1 for USD."""
    held = text_column(table, "collateral", "USD")
    lookup = {"USD": -1} | {c: i for i, c in enumerate(names)}
    fail_first(path, table, "collateral", ~np.isin(held, list(lookup)), ", ".join(lookup))
    why = "USD on isolated rows (other collateral on cross rows)"
    fail_first(path, table, "collateral", ~cross & (held != "USD"), why)
    return np.array([lookup[c] for c in held], np.int64)


def _stops(path, table, cross, asset, side, prices: dict[str, float] | None) -> np.ndarray:
    """Stop prices `[rows]` (USD, NaN: none) of the rows (`cross`, `asset`, `side` `[rows]`);
    `prices`: the assets' starting prices by name, in their order, or None not to check."""
    if "stop_price" not in table.column_names:
        return np.full(len(table), np.nan)
    stop = number_column(path, table, "stop_price")
    given = ~np.isnan(stop)
    positive = np.isfinite(stop) & (stop > 0)
    fail_first(path, table, "stop_price", given & ~positive, "a finite price > 0 (USD), or empty")
    fail_outside(path, table, "stop_price", stop, PRICES, "USD")
    why = "empty on cross rows (stops on cross positions are not simulated; allowed on isolated rows)"
    fail_first(path, table, "stop_price", given & cross, why)
    if prices is not None:
        names, start = list(prices), np.array(list(prices.values()))[asset]
        bad = given & (side * (stop - start) >= 0)
        if np.any(bad):
            row = int(np.argmax(bad))
            where = "below" if side[row] > 0 else "above"
            name, side_name = names[asset[row]], SIDES[int(side[row] < 0)]
            allowed = (
                f"{where} {name}'s starting price {start[row]:g} for a {side_name} "
                "(a stop on the other side of it triggers at once)"
            )
            fail_first(path, table, "stop_price", bad, allowed)
    return stop


def load_positions(
    path,
    assets: tuple[str, ...],
    n_tiers: int,
    *,
    prices: tuple[float, ...] | None = None,
    collateral: tuple[str, ...] = (),
) -> Positions:
    """Read and validate a positions file (see the module docstring and `validate`)."""
    return validate(read_table(Path(path)), path, assets, n_tiers, prices=prices, collateral=collateral)
