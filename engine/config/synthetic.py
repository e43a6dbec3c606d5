"""Synthetic positions files (`liqstress make-book`): realistic books of any size for tests,
benchmarks and the docs, in the schema of `engine.config.positions`.

Per asset of the scenario, the positions hold its open interest (`open_interest_usd`) with its
long share; leverage is drawn from `book.leverage` with `book.leverage_weights` and capped at
the maximum of the position's bracket (`exchange.tiers`; a cross position's bracket is its
account leg's), the notional from a log-normal (median `MEDIAN_USD`, log-sd `SIZE_LOG_SD`: many
small positions and a heavy tail of large ones), scaled so that each side sums to its share of
the open interest exactly, and the entry from `price * exp(Normal(book.entry_log_mean,
book.entry_log_std))` among the entries that leave the position alive at the starting price
(`_surviving_entries`): a book holds what past prices did not liquidate.

Optionally a share of the positions are cross margin (`cross_share`), spread at random over
`accounts` accounts; an account holds one side per asset (drawn with the asset's long share),
and a `collateral_share` of the accounts post their margin in one of the config's `collateral`
assets (at random) instead of USD. A `stop_share` of the isolated positions carry a stop price
a few percent beyond entry toward liquidation (`STOP_DISTANCE`, at most half the way to the
bankruptcy price), measured from the entry or the starting price, whichever is nearer the
liquidation, so that it lies on the safe side of the starting price.

A request is checked before anything is allocated: its options (`check_request`), and the
memory it needs (`memory_needed`) against the memory available.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from engine.config.book import maintenance_amounts, tier_index
from engine.config.errors import ConfigError
from engine.config.schema import Config

MEDIAN_USD = 10_000.0
SIZE_LOG_SD = 1.8
# Range of a stop's distance beyond its reference price (fraction), before the half-way cap.
STOP_DISTANCE = (0.01, 0.05)
STOP_DIGITS = 4
COLLATERAL_SHARE = 0.5  # of the accounts, by default
# Draws of a position's entry before it enters at the starting price (`_surviving_entries`).
ENTRY_DRAWS = 20

# The peak memory of `make_positions` (bytes), a linear model of its arrays: per position the
# NumPy columns and the draws' temporaries alive at the peak (8 B a number), per text column a
# NumPy copy (4 B a character) and an Arrow one (a 4 B offset and 1 B a character), for cross
# margin a second NumPy margin-mode column; per account its sides and collateral with their
# draws. Against the peak resident memory of 2 and 4 million positions (the default scenario's
# four assets): isolated 167 B a position (the model: 172), cross margin 96 B more (127), stops
# 23 B more (32), 48 B an account (80), and about 50 MB besides (Arrow's pool, the allocator's
# arenas; the model: 64 MiB). tests/config/test_synthetic.py measures it again on 400,000.
NUMBERS_PER_POSITION = 10
CROSS_NUMBERS = 2  # account index, cross mask
STOP_NUMBERS = 4  # distance, reference, stop, rounding step
FIXED_BYTES = 64 * 2**20


def _text_bytes(chars: int) -> int:
    """Bytes a position's text column of `chars` characters takes, in NumPy and in Arrow."""
    return 4 * chars + 4 + chars


def memory_needed(cfg: Config, n: int, *, cross_share: float, accounts: int, stop_share: float) -> int:
    """Estimated peak memory (bytes) of `make_positions(cfg, n, ...)` (see `NUMBERS_PER_POSITION`)."""
    per = 8 * NUMBERS_PER_POSITION + sum(
        _text_bytes(c) for c in (max(map(len, cfg.market.assets)), len("short"), len("isolated"))
    )
    per_account = 0
    if cross_share > 0:
        id_chars = len("acct-") + len(str(max(accounts - 1, 0)))
        collateral_chars = max(map(len, ["USD", *cfg.collateral]))
        per += 8 * CROSS_NUMBERS + _text_bytes(id_chars) + _text_bytes(collateral_chars) + 4 * len("isolated")
        per_account = 8 * (2 * len(cfg.market.assets) + 2)
    if stop_share > 0:
        per += 8 * STOP_NUMBERS
    return FIXED_BYTES + n * per + accounts * per_account


def readable_bytes(b: float) -> str:
    """`b` bytes for people: "1.5 GiB"."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:,.1f} {unit}"
    return f"{b:.0f} B"


def check_request(
    cfg: Config, n: int, *, cross_share: float, accounts: int, collateral_share: float, stop_share: float
) -> None:
    """ConfigError naming the first option of a `make_positions` request that is out of its
    range, or the memory the request needs when it exceeds the memory available."""
    if n < 2 * len(cfg.market.assets):
        raise ConfigError(f"--positions {n}: allowed at least 2 per asset ({2 * len(cfg.market.assets)})")
    for option, share in (("--cross-share", cross_share), ("--collateral-share", collateral_share),
                          ("--stop-share", stop_share)):  # fmt: skip
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{option} {share:g}: allowed 0 to 1")
    if cross_share > 0:
        # an account holds at least one cross position: more accounts than those are empty
        most = math.ceil(cross_share * n)
        if not 1 <= accounts <= most:
            raise ConfigError(
                f"--accounts {accounts}: allowed 1 to {most:,}, the cross positions "
                f"(--cross-share {cross_share:g} of --positions {n:,})"
            )
    needed = memory_needed(cfg, n, cross_share=cross_share, accounts=accounts, stop_share=stop_share)
    available = psutil.virtual_memory().available
    if needed > available:
        fits = (available - FIXED_BYTES) * n // (needed - FIXED_BYTES)
        raise ConfigError(
            f"--positions {n:,}: needs about {readable_bytes(needed)} of memory, more than the "
            f"{readable_bytes(available)} available; allowed: about {max(fits, 0):,} positions here"
        )


def idle_options(
    cfg: Config, *, cross_share: float, accounts: int | None, collateral_share: float | None
) -> list[str]:
    """A warning for each option given (not None) that cannot change the book: cross-margin
    options without cross positions, a collateral share where the scenario has no
    `[collateral]`."""
    notes = [
        f"{option} changes nothing: no position is cross margin (--cross-share 0)"
        for option, value in (("--accounts", accounts), ("--collateral-share", collateral_share))
        if value is not None and cross_share == 0
    ]
    if collateral_share is not None and cross_share > 0 and not cfg.collateral:
        notes.append(
            f"--collateral-share changes nothing: the scenario {cfg.name} has no [collateral] "
            "assets, so every account posts USD"
        )
    return notes


def make_positions(
    cfg: Config,
    n: int,
    seed: int = 0,
    *,
    cross_share: float = 0.0,
    accounts: int = 0,
    collateral_share: float = COLLATERAL_SHARE,
    stop_share: float = 0.0,
) -> pa.Table:
    """n positions (a table in the positions schema) for `cfg`'s assets: isolated margin, a
    `cross_share` of them cross over `accounts` accounts, a `stop_share` of the isolated ones
    with a stop price (see the module docstring). A request out of range, or beyond the memory
    available, is a ConfigError before anything is allocated (`check_request`)."""
    check_request(
        cfg,
        n,
        cross_share=cross_share,
        accounts=accounts,
        collateral_share=collateral_share,
        stop_share=stop_share,
    )
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
    notional = rng.lognormal(np.log(MEDIAN_USD), SIZE_LOG_SD, n)
    extra, holder = {}, Holder(np.full(n, -1), np.zeros(n))
    if cross_share > 0:  # before the sides' sums: an account's side of an asset is its own
        extra, holder = _cross(rng, cfg, asset, side, cross_share, accounts, collateral_share)
    for a, spec in enumerate(assets):
        for s, share in ((1.0, spec.long_share), (-1.0, 1.0 - spec.long_share)):
            m = (asset == a) & (side == s)
            notional[m] *= spec.open_interest_usd * share / notional[m].sum()
    leg = np.where(holder.account >= 0, holder.account * len(assets) + asset, -1)
    tier = _tiers(cfg, notional, leg)
    leverage = np.minimum(leverage, np.array([t.max_leverage for t in cfg.exchange.tiers])[tier])
    entry = _surviving_entries(
        rng, cfg, Rows(asset, side, notional, leverage, price, holder.haircut, leg, tier)
    )
    if stop_share > 0:
        chosen = (holder.account < 0) & (rng.random(n) < stop_share)
        extra["stop_price"] = _stop_prices(rng, chosen, side, entry, price, leverage)
    return pa.table(
        {
            "position_id": np.arange(n),
            "asset": names[asset],
            "side": np.where(side > 0, "long", "short"),
            "notional_usd": notional,
            "entry_price": entry,
            "leverage": leverage,
            "margin_mode": np.full(n, "isolated"),
        }
        | extra
    )


class Holder(NamedTuple):
    """Who holds each position, `[positions]` each: the account index (-1: isolated) and the
    haircut of the collateral its margin is posted in (0 for USD)."""

    account: np.ndarray
    haircut: np.ndarray


class Rows(NamedTuple):
    """What decides whether a position starts alive, `[positions]` each: asset index, side
    (+1/-1), notional (USD at entry), leverage, the asset's starting price (USD), the haircut
    of its margin, its account leg (account * assets + asset; -1 isolated) and its bracket."""

    asset: np.ndarray
    side: np.ndarray
    notional: np.ndarray
    leverage: np.ndarray
    price: np.ndarray
    haircut: np.ndarray
    leg: np.ndarray
    tier: np.ndarray


def _tiers(cfg: Config, notional: np.ndarray, leg: np.ndarray) -> np.ndarray:
    """Each position's bracket: by its own notional, or by its account leg's summed notional
    (cross margin: the leg is one position to the exchange, `engine.config.accounts`)."""
    sized = notional.copy()
    cross = leg >= 0
    if cross.any():
        _, inverse = np.unique(leg[cross], return_inverse=True)
        sized[cross] = np.bincount(inverse, weights=notional[cross])[inverse]
    return tier_index(cfg.exchange.tiers, sized)


def _alive(cfg: Config, rows: Rows, entry: np.ndarray) -> np.ndarray:
    """Whether each position's margin (after its collateral's haircut) plus its profit at the
    starting price covers its maintenance margin there `[positions]`. A cross leg's
    maintenance amount is shared by its positions in proportion to their units, so positions
    alive on their own make accounts alive."""
    tiers = cfg.exchange.tiers
    units = rows.notional / entry
    amount = maintenance_amounts(tiers)[rows.tier]
    held = units.copy()
    cross = rows.leg >= 0
    if cross.any():
        _, inverse = np.unique(rows.leg[cross], return_inverse=True)
        held[cross] = np.bincount(inverse, weights=units[cross])[inverse]
    mmr = np.array([t.mmr for t in tiers])[rows.tier]
    equity = rows.notional / rows.leverage * (1.0 - rows.haircut) + rows.side * units * (rows.price - entry)
    return equity > units * (mmr * rows.price - amount / held)


def _surviving_entries(rng, cfg: Config, rows: Rows) -> np.ndarray:
    """Entry prices (USD) `[positions]` from `price * exp(Normal(book.entry_log_mean,
    book.entry_log_std))`, drawn again where the position would start at or beyond its
    liquidation price (`_alive`): a book holds the positions the past prices left alive, as the
    parametric book does by dropping the others. After `ENTRY_DRAWS` tries the few left enter
    at the starting price, where a position within its bracket's leverage is alive."""
    book = cfg.book
    draw = lambda k: rows.price[k] * np.exp(rng.normal(book.entry_log_mean, book.entry_log_std, k.sum()))
    entry = draw(np.ones(len(rows.side), bool))
    for _ in range(ENTRY_DRAWS):
        dead = ~_alive(cfg, rows, entry)
        if not dead.any():
            return entry
        entry[dead] = draw(dead)
    dead = ~_alive(cfg, rows, entry)
    entry[dead] = rows.price[dead]
    return entry


def _cross(
    rng, cfg: Config, asset, side, share: float, accounts: int, collateral_share: float
) -> tuple[dict, Holder]:
    """The columns of cross margin, `[positions]` each (`margin_mode`, `account_id`,
    `collateral`), and who holds each position, for a `share` of the positions (`asset`, `side` `[positions]`; the side of
    a cross position is set to its account's side of the asset, in place); the first two
    positions of each asset stay isolated."""
    n, n_assets = len(asset), len(cfg.market.assets)
    cross = rng.random(n) < share
    cross[: 2 * n_assets] = False
    owner = rng.integers(0, accounts, n)
    long_share = np.array([a.long_share for a in cfg.market.assets.values()])
    account_side = np.where(rng.random((accounts, n_assets)) < long_share, 1.0, -1.0)
    side[cross] = account_side[owner[cross], asset[cross]]
    names = np.array(["USD", *cfg.collateral])
    posted = np.zeros(accounts, np.int64)  # index into names: 0 is USD
    if len(names) > 1:
        posted = np.where(rng.random(accounts) < collateral_share, rng.integers(1, len(names), accounts), 0)
    ids = np.char.add("acct-", owner.astype(str))
    haircut = np.array([0.0, *(c.haircut for c in cfg.collateral.values())])[posted[owner]]
    columns = {
        "margin_mode": np.where(cross, "cross", "isolated"),
        "account_id": pa.array(ids, mask=~cross),
        "collateral": np.where(cross, names[posted[owner]], "USD"),
    }
    return columns, Holder(np.where(cross, owner, -1), np.where(cross, haircut, 0.0))


def _stop_prices(rng, chosen, side, entry, price, leverage) -> pa.Array:
    """Stop prices (USD; null where not `chosen`) of positions (`side`, `entry`, starting
    `price`, `leverage` `[positions]`): `STOP_DISTANCE` beyond the nearer of entry and the
    starting price toward liquidation, at most half the way to bankruptcy (`1 / leverage`),
    rounded away from the price to `STOP_DIGITS` significant digits as traders' stops are (so
    that positions share stops and cohorts)."""
    distance = np.minimum(rng.uniform(*STOP_DISTANCE, len(side)), 0.5 / leverage)
    from_ = np.where(side > 0, np.minimum(entry, price), np.maximum(entry, price))
    stop = from_ * (1.0 - side * distance)
    step = 10.0 ** (np.floor(np.log10(stop)) + 1 - STOP_DIGITS)
    return pa.array(np.where(side > 0, np.floor(stop / step), np.ceil(stop / step)) * step, mask=~chosen)


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
