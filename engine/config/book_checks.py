"""Books that start beyond their liquidation price: what of a positions file the first step
liquidates before any market move.

At the assets' starting prices `p0` an isolated row is at or beyond its liquidation price when
`s (p0 - p_liq) <= 0`, with the book's `p_liq` and bankruptcy price `b = e (1 - s / l)`
(`engine.config.book_file`: the row's tier and maintenance amount, `engine.model.margin`); a
cross account when its equity `E = margin + sum s q (p0 - e)` is at or below its maintenance
`M = sum q (m p0 - a)` (`engine.config.accounts`), beyond bankruptcy when `E <= 0`. Such
positions are liquidated in the first step, and those beyond bankruptcy leave bad debt, whatever
the scenario: a few are a stale snapshot, many a unit error (a BTC entry of 1.0).

`underwater_warnings` counts them per asset (rows, positions, notional at `p0`, the first rows)
and refuses the book when their notional exceeds `book.max_underwater_share` of the book's.
`book_warnings` runs it with the other checks of a book against its scenario: a position larger
than its asset's whole open interest is refused, entries far from the price are named.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from engine.config import book_file
from engine.config.accounts import accounts_of
from engine.config.positions import BookFileError, Positions, codes
from engine.config.schema import Config, Tier
from engine.model.margin import liquidation_price

FIRST_ROWS = 3  # rows named per asset


class Beyond(NamedTuple):
    """Rows already at or beyond their liquidation price (`liquidated`) and their bankruptcy
    price (`bankrupt`), bool `[rows]`, and every row's notional at the starting prices
    (`notional`, USD `[rows]`)."""

    liquidated: np.ndarray
    bankrupt: np.ndarray
    notional: np.ndarray


def beyond(pos: Positions, prices: np.ndarray, tiers: tuple[Tier, ...], unit_value: np.ndarray) -> Beyond:
    """Which rows of `pos` start at or beyond their liquidation or bankruptcy price at the
    starting prices `prices` (`[assets]` USD). unit_value: `[collateral]` margin value of one
    unit at t0 (USD), as `engine.config.accounts.accounts_of` takes it."""
    p0 = prices[pos.asset]
    tier, amount = book_file.row_tiers(pos, tiers)
    bankrupt = pos.entry * (1.0 - pos.side / pos.leverage)
    mmr = np.array([t.mmr for t in tiers])[tier]
    p_liq = liquidation_price(pos.side, bankrupt, mmr, amount / pos.quantity)
    liquidated = ~pos.cross & (pos.side * (p0 - p_liq) <= 0)
    broke = ~pos.cross & (pos.side * (p0 - bankrupt) <= 0)
    if pos.cross.any():
        acc, _ = accounts_of(pos, prices, tiers, unit_value)
        equity = (
            acc.wallet
            + acc.collateral @ unit_value
            + np.sum(acc.side * acc.quantity * (prices - acc.entry), 1)
        )
        maintenance = np.sum(acc.quantity * (acc.mmr * prices - acc.maint_amount), 1)
        who = codes(pos.account[pos.cross])  # the order of `accounts_of`
        liquidated[pos.cross] = (equity <= maintenance)[who]
        broke[pos.cross] = (equity <= 0)[who]
    return Beyond(liquidated, broke, pos.quantity * p0)


def usd(x: float) -> str:
    """`x` USD in a short form: $81.5 B."""
    for scale, suffix in ((1e12, " T"), (1e9, " B"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= scale:
            return f"${x / scale:.3g}{suffix}"
    return f"${x:.3g}"


def per_asset(
    names: tuple[str, ...],
    asset: np.ndarray,
    hit: np.ndarray,
    notional: np.ndarray,
    positions: np.ndarray | None = None,
    bankrupt: np.ndarray | None = None,
) -> str:
    """Per asset of `names` (`asset` `[rows]` indices) with rows in `hit` (bool `[rows]`): how
    many, their notional (`notional` `[rows]` USD), the first rows (1 = the first data row) and,
    where given, the positions they stand for (`positions` `[rows]`, shown where a row stands
    for other than one) and the notional of those beyond bankruptcy (`bankrupt` bool `[rows]`)."""
    parts = []
    for a, name in enumerate(names):
        rows = hit & (asset == a)
        n = int(rows.sum())
        if not n:
            continue
        text = f"{name}: {n:,} row{'s' * (n > 1)}"
        if positions is not None and np.any(positions[rows] != 1):
            text += f" ({positions[rows].sum():,.0f} positions)"
        text += f", {usd(notional[rows].sum())}"
        if bankrupt is not None and np.any(bankrupt[rows]):
            text += f", of which {usd(notional[rows & bankrupt].sum())} beyond bankruptcy"
        first = ", ".join(str(r + 1) for r in np.flatnonzero(rows)[:FIRST_ROWS])
        parts.append(f"{text}, row{'s' * (n > 1)} {first}{', ...' * (n > FIRST_ROWS)}")
    return "; ".join(parts)


@functools.lru_cache(maxsize=4)
def _counted(src: book_file.Source, tiers: tuple[Tier, ...], unit_value: tuple[float, ...]) -> Beyond:
    """`beyond` of the (cached) positions of `src`; unit_value: as `beyond` takes it."""
    return beyond(
        book_file.read_positions(src), np.array(src.prices), tiers, np.array(unit_value).reshape(-1)
    )


def underwater_warnings(cfg: Config) -> list[str]:
    """One sentence when part of `cfg`'s positions file starts at or beyond its liquidation
    price but no more than `book.max_underwater_share` of its notional (at the starting prices);
    `BookFileError` with the per-asset counts above it; none otherwise (or without a file)."""
    if not cfg.book.positions:
        return []
    src = book_file.source_of(cfg)
    unit_value = tuple((1.0 - c.haircut) * c.price for c in cfg.collateral.values())
    b, pos = _counted(src, cfg.exchange.tiers, unit_value), book_file.read_positions(src)
    if not b.liquidated.any():
        return []
    total, hit = b.notional.sum(), b.notional[b.liquidated].sum()
    share, allowed = hit / total, cfg.book.max_underwater_share
    detail = per_asset(
        src.assets, pos.asset, b.liquidated, b.notional, positions=pos.count, bankrupt=b.bankrupt
    )
    percent = f"{min(share, 0.9999) if share < 1 else 1.0:.2%}"  # not "100.00%" unless all of it
    what = (
        f"{src.path}: {percent} of the book's notional at the starting prices ({usd(hit)} of "
        f"{usd(total)}) starts at or beyond its liquidation price and is liquidated in the first step "
        f"({detail})"
    )
    if share > allowed:
        raise BookFileError(
            f"{what}; allowed up to book.max_underwater_share = {allowed:g} of the notional: check those rows' "
            "entry_price (a price in the wrong unit does this) and leverage, or raise book.max_underwater_share"
        )
    return [f"{what}, within book.max_underwater_share = {allowed:g}"]


# An entry this many times above or below the asset's starting price is more likely a price in
# another unit (cents, thousands) than a trade: BTC has not moved 10x within a position's life.
ENTRY_FACTOR = 10.0


def oversized_rows(cfg: Config, pos: Positions, path: str) -> None:
    """`BookFileError` naming the first row whose notional (at entry) exceeds its asset's whole
    open interest (`market.assets.<A>.open_interest_usd`): one position cannot be larger than
    the market it trades in (a notional in cents, or an extra digit)."""
    oi = np.array([a.open_interest_usd for a in cfg.market.assets.values()])
    notional = pos.quantity * pos.entry / pos.count
    big = notional > oi[pos.asset]
    if big.any():
        row = int(np.argmax(big))
        name = list(cfg.market.assets)[pos.asset[row]]
        raise BookFileError(
            f"{path}: row {row + 1}, column notional_usd = {notional[row]:g}: above {name}'s whole open "
            f"interest ({usd(oi[pos.asset[row]])}, market.assets.{name}.open_interest_usd); allowed: at most "
            f"the open interest per position ({int(big.sum()):,} rows are above it)"
        )


def far_entries(cfg: Config, pos: Positions, path: str) -> list[str]:
    """One sentence naming the rows whose entry price lies more than `ENTRY_FACTOR` times above
    or below their asset's starting price, per asset; none if there are none."""
    p0 = np.array([a.price for a in cfg.market.assets.values()])[pos.asset]
    far = np.abs(np.log(pos.entry / p0)) > np.log(ENTRY_FACTOR)
    if not far.any():
        return []
    detail = per_asset(tuple(cfg.market.assets), pos.asset, far, pos.quantity * p0, positions=pos.count)
    return [
        (
            f"{path}: column entry_price: prices more than {ENTRY_FACTOR:g}x away from the asset's "
            f"starting price, in another unit? ({detail})"
        )
    ]


def book_warnings(cfg: Config) -> list[str]:
    """The checks of `cfg`'s positions file before a run: rows larger than their market and too
    much of the book under water are refused (`BookFileError`); some of it under water, entries
    far from the price are warnings. None without a positions file."""
    if not cfg.book.positions:
        return []
    src = book_file.source_of(cfg)
    pos = book_file.read_positions(src)
    oversized_rows(cfg, pos, src.path)
    return underwater_warnings(cfg) + far_entries(cfg, pos, src.path)
