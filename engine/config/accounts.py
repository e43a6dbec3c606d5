"""Cross-margin accounts of a positions file (its `cross` rows, `engine.config.positions`) as
account cohorts (`engine.model.params.AccountParams`, NumPy arrays; the kernel's arithmetic is
`engine.model.accounts`).

One account per `account_id`, with a leg per asset it trades (one side per asset: hedge mode
is refused when the file is read):

- leg: units = the rows' summed quantity, entry = their quantity-weighted mean entry (USD),
  positions = their summed `positions`; its tier is that of the account's leg notional at
  entry (`engine.config.book.tier_index`), or the highest `tier` its rows give, and sets its
  maintenance rate and amount (USD per unit: the tier's amount over the leg's units).
- margin: each row posts `notional / leverage` USD in its `collateral`: the wallet (USD) sums
  the rows in USD; collateral asset c holds `margin / ((1 - haircut_c) price_c)` units, so that
  its margin value at t0 is the rows' margin.
- leverage = notional at entry / margin at t0 (wallet + haircut collateral value).

A leg the account does not hold has no units, side +1, the asset's starting price as entry,
tier 0's rate, no maintenance amount and no positions.

Accounts alike are summed into one cohort: the same legs (assets and sides), the same tier of
each leg, the same collateral assets held, and the same bucket `floor(log(leverage) /
book.account_bin)` (`account_bin = 0`: one cohort per account). A cohort sums units, wallets,
collateral units and positions; its entry is the units-weighted mean per leg, its maintenance
amount per unit the summed amount over the summed units, its weight the number of accounts and
its leverage the summed notional over the summed margin. So its notional, margin, maintenance
margin and profit and loss at any prices are the sums of its accounts'; what binning merges is
when they go under water: the cohort is liquidated whole when the sum of its accounts' equity
reaches the sum of their maintenance, where each account would have gone at its own prices.
Within a bucket the accounts' leverage differs by less than a factor `exp(account_bin)` (5% by
default), which bounds how far apart the price moves that liquidate accounts of the same legs
lie (their entries and the mix of their legs still differ). On a
synthetic book of 1,997 accounts, all alive at the start (1,178 cohorts at the default bin), the
notional under water after uniform price moves of -30% to +30% differs from the exact accounts'
by at most 1.8% of the cross notional (tests/config/test_accounts.py).
"""

from __future__ import annotations

import functools

import numpy as np

from engine.config import book_file
from engine.config.book import maintenance_amounts, tier_index
from engine.config.positions import Positions, codes
from engine.config.schema import Config, Tier
from engine.model.params import AccountParams


def accounts_of(
    pos: Positions, prices: np.ndarray, tiers: tuple[Tier, ...], unit_value: np.ndarray
) -> tuple[AccountParams, np.ndarray]:
    """Each account of the cross rows of `pos` (in order of first appearance) as an
    `AccountParams` of weight 1 `[accounts, assets]`, and each leg's tier `[accounts, assets]`
    (-1 where the account holds no leg). prices: `[assets]` starting prices (USD); unit_value:
    `[collateral]` margin value of one unit at t0, `(1 - haircut) * price` (USD)."""
    m = pos.cross
    who = codes(pos.account[m])
    n, n_assets = int(who.max()) + 1, len(prices)
    leg = who * n_assets + pos.asset[m]
    legs = lambda x: np.bincount(leg, weights=x, minlength=n * n_assets).reshape(n, n_assets)
    accounts = lambda x: np.bincount(who, weights=x, minlength=n)
    quantity, notional = pos.quantity[m], pos.quantity[m] * pos.entry[m]
    margin = notional / pos.leverage[m]
    units, value = legs(quantity), legs(notional)
    held = units > 0
    side = np.ones(n * n_assets)
    side[leg] = pos.side[m]  # one side per leg, checked when the file was read
    given = np.full(n * n_assets, -1)
    np.maximum.at(given, leg, pos.tier[m])
    tier = np.where(given.reshape(n, n_assets) >= 0, given.reshape(n, n_assets), tier_index(tiers, value))
    tier = np.where(held, tier, -1)
    per_unit = np.where(held, units, 1.0)
    coll = pos.collateral[m]
    in_coll = [accounts(np.where(coll == c, margin, 0.0)) / v for c, v in enumerate(unit_value)]
    acc = AccountParams(
        side=side.reshape(n, n_assets),
        entry=np.where(held, value / per_unit, prices[None, :]),
        quantity=units,
        mmr=np.array([t.mmr for t in tiers])[np.maximum(tier, 0)],
        maint_amount=np.where(held, maintenance_amounts(tiers)[np.maximum(tier, 0)] / per_unit, 0.0),
        positions=legs(pos.count[m]),
        wallet=accounts(np.where(coll < 0, margin, 0.0)),
        collateral=np.stack(in_coll, -1) if in_coll else np.zeros((n, 0)),
        weight=np.ones(n),
        leverage=value.sum(1) / accounts(margin),
    )
    return acc, tier


def aggregate(acc: AccountParams, tier: np.ndarray, width: float) -> AccountParams:
    """Accounts alike (`accounts_of`) summed into cohorts (see the module docstring), ordered
    by their key; `width`: the log-leverage bucket, 0 for one cohort per account."""
    n = len(acc.weight)
    bucket = np.floor(np.log(acc.leverage) / width) if width > 0 else np.arange(n)
    key = np.concatenate(
        [acc.side * (acc.quantity > 0), tier, acc.collateral > 0, bucket[:, None]], axis=1, dtype=float
    )
    _, first, index = np.unique(key, axis=0, return_index=True, return_inverse=True)
    index = index.reshape(-1)
    k = len(first)

    def total(x: np.ndarray) -> np.ndarray:
        """`x` `[accounts, ...]` summed per cohort: `[cohorts, ...]`."""
        flat = x.reshape(n, -1)
        out = np.zeros((k, flat.shape[1]))
        for j in range(flat.shape[1]):
            out[:, j] = np.bincount(index, weights=flat[:, j], minlength=k)
        return out.reshape((k,) + x.shape[1:])

    units = total(acc.quantity)
    held = units > 0
    per_unit = np.where(held, units, 1.0)
    notional = np.sum(acc.quantity * acc.entry, 1)
    return AccountParams(
        side=acc.side[first],
        entry=np.where(held, total(acc.quantity * acc.entry) / per_unit, acc.entry[first]),
        quantity=units,
        mmr=acc.mmr[first],
        maint_amount=total(acc.quantity * acc.maint_amount) / per_unit,
        positions=total(acc.positions),
        wallet=total(acc.wallet),
        collateral=total(acc.collateral),
        weight=total(acc.weight),
        leverage=total(notional) / total(notional / acc.leverage),
    )


def account_cohorts(cfg: Config) -> AccountParams | None:
    """The account cohorts `[accounts, ...]` of `cfg`'s positions file (NumPy; do not modify:
    cached while the file is unchanged), or None without cross rows."""
    if not cfg.book.positions:
        return None
    spec = tuple((c.price, c.haircut) for c in cfg.collateral.values())
    return _cohorts(book_file.source_of(cfg), cfg.exchange.tiers, spec, cfg.book.account_bin)


@functools.lru_cache(maxsize=4)
def _cohorts(src: book_file.Source, tiers, collateral: tuple, width: float) -> AccountParams | None:
    """`account_cohorts` of the file of `src`; collateral: (price, haircut) of each asset."""
    pos = book_file.read_positions(src)
    if not pos.cross.any():
        return None
    unit_value = np.array([(1.0 - h) * p for p, h in collateral]).reshape(-1)
    acc, tier = accounts_of(pos, np.array(src.prices), tiers, unit_value)
    return aggregate(acc, tier, width)
