"""The exchange's loss waterfall after each step's cascade: insurance fund, ADL, bad debt.

1. Leftover margin and fees of the step go into the fund, then the fund pays the step's
   shortfalls as far as it can (one fund shared by all assets).
2. What the fund cannot pay (the deficit, per asset and side) is taken from profitable
   positions on the opposite side of the same asset by auto-deleveraging (ADL):
   - `queue`: positions ranked by profit% x effective leverage are closed whole, best first,
     until their profit covers the deficit (the production rule: it closes far more
     notional than needed);
   - `pro_rata`: every profitable opposite position gives up the same share of its profit,
     closing that share of its size (the least notional that covers the deficit).
3. Whatever ADL cannot cover (or everything, with ADL off) is bad debt.

The legs of cross-margin accounts (`engine.model.accounts`) stand in the same queue and share
as isolated positions: a leg's profit is its own, its score uses its account's margin and
effective leverage (notional over equity), as venues rank cross positions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model.params import BookParams, PolicyParams
from engine.model.sides import by_side, side_matrix

# Bisection of the ADL queue threshold: log scores in [-30, 30], halved 26 times (to 1e-6).
ADL_LOG_RANGE = 30.0
ADL_BISECTIONS = 26


class Fund(NamedTuple):
    """fund: `[]` USD after the step; draw: `[]` USD paid out; deficit: `[assets, 2]` USD left."""

    fund: jnp.ndarray
    draw: jnp.ndarray
    deficit: jnp.ndarray


class Adl(NamedTuple):
    """quantity: `[assets, cohorts]` after ADL; absorbed: `[]` USD of profit given up by
    ADL'd positions; notional: `[]` USD closed by ADL; bad_debt: `[]` USD; threshold: `[assets,
    2]` the queue's least log score closed, per asset and side of the positions giving up profit
    (`queue_closed`; +inf with the other rules); accounts: leg units `[accounts, assets]` after
    ADL, or None."""

    quantity: jnp.ndarray
    absorbed: jnp.ndarray
    notional: jnp.ndarray
    bad_debt: jnp.ndarray
    threshold: jnp.ndarray
    accounts: jnp.ndarray | None = None


class Opposite(NamedTuple):
    """Positions ADL may take profit from, `[assets, n]` each: profit (USD), score, side
    (+1/-1), units held, and `sums`, a function summing `[assets, n]` into `[assets, 2]`
    (long, short)."""

    profit: jnp.ndarray
    score: jnp.ndarray
    side: jnp.ndarray
    units: jnp.ndarray
    sums: object


def _pick(t, side):
    """Per position, the long (column 0) or short (column 1) entry of `t` `[assets, 2]`."""
    return jnp.where(side > 0, t[:, :1], t[:, 1:])


def pay_from_fund(fund, inflow, shortfall, minimum=jnp.minimum) -> Fund:
    """Add the step's inflow (USD) to the fund, then pay shortfalls `[assets, 2]` (USD).

    minimum: of two amounts; the relaxed kernel passes its soft one
    (`engine.model.relaxed.soft_minimum`).
    """
    fund = fund + inflow
    total = jnp.sum(shortfall)
    draw = minimum(fund, total)
    unpaid = jnp.where(total > 0, 1.0 - draw / jnp.where(total > 0, total, 1.0), 0.0)
    return Fund(fund=fund - draw, draw=draw, deficit=shortfall * unpaid)


def _log_score(p: Opposite) -> jnp.ndarray:
    """The queue's log score of each position of `p` (profitless positions far below any
    threshold)."""
    return jnp.log(jnp.where(p.profit > 0, p.score, 1e-30))


def queue_closed(p: Opposite, threshold) -> jnp.ndarray:
    """Whether the queue closes each position of `p` (bool, `p`'s shape) at `threshold`
    `[assets, 2]` (`Adl.threshold`): profitable, with a log score at or above its side's."""
    return (_log_score(p) >= _pick(threshold, p.side)) & (p.profit > 0)


def _adl_queue(parts: list[Opposite], need) -> tuple[list[tuple], jnp.ndarray]:
    """Whole-position closure in descending score order, over all `parts`, until profit covers
    `need` `[assets, 2]` (USD to be covered by the longs, column 0, and the shorts, column 1).
    Returns (per part (absorbed USD, closed 0/1) per position, the threshold `[assets, 2]`).

    Instead of sorting (slow on CPU), bisection in log score finds, per asset and side, the
    highest threshold whose positions at or above it hold enough profit. Positions strictly
    above the final bracket give up all their profit; those inside it (ties, to 1e-6 in log
    score) share the rest in proportion to profit. Every position in the bracket is closed.
    """
    logs = [_log_score(p) for p in parts]

    def held(t):
        return sum(p.sums(jnp.where(ls >= _pick(t, p.side), p.profit, 0.0)) for p, ls in zip(parts, logs))

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        enough = held(mid) >= need
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    start = (jnp.full_like(need, -ADL_LOG_RANGE), jnp.full_like(need, ADL_LOG_RANGE))
    lo, hi = jax.lax.fori_loop(0, ADL_BISECTIONS, halve, start)
    held_hi, held_lo = held(hi), held(lo)
    gap = held_lo - held_hi
    share = jnp.clip((need - held_hi) / jnp.where(gap > 0, gap, 1.0), 0.0, 1.0)
    out = []
    for p, ls in zip(parts, logs):
        above = ls >= _pick(hi, p.side)
        # every closed position is profitable, so the closed set is `queue_closed`'s at lo
        inside = (ls >= _pick(lo, p.side)) & ~above & (p.profit > 0)
        absorbed = jnp.where(above, p.profit, jnp.where(inside, _pick(share, p.side) * p.profit, 0.0))
        out.append((absorbed, (above | inside).astype(p.profit.dtype)))
    return out, lo


def _adl_pro_rata(parts: list[Opposite], need) -> list[tuple]:
    """Equal share of profit taken from every profitable opposite position (as `_adl_queue`)."""
    total = sum(p.sums(p.profit) for p in parts)
    share = jnp.where(total > 0, jnp.minimum(need / jnp.where(total > 0, total, 1.0), 1.0), 0.0)
    return [(_pick(share, p.side) * p.profit, _pick(share, p.side) * (p.profit > 0)) for p in parts]


def isolated(quantity, bankrupt, p, book: BookParams) -> Opposite:
    """The isolated cohorts as ADL sees them (`p`: marks `[assets, 1]` USD)."""
    s, e = book.side, book.entry
    profit = jnp.maximum(s * quantity * (p - e), 0.0)
    margin = s * quantity * (e - bankrupt)
    equity = s * quantity * (p - bankrupt)
    safe = lambda x: jnp.where(x > 0, x, 1.0)
    # profit % of margin x effective leverage (notional / equity), the production ranking
    score = jnp.where(profit > 0, profit / safe(margin) * quantity * p / safe(equity), 0.0)
    sides = side_matrix(s)
    return Opposite(profit, score, s, quantity, lambda x: by_side(x, sides))


def auto_deleverage(
    quantity,
    bankrupt,
    price,
    deficit,
    book: BookParams,
    pol: PolicyParams,
    minimum=jnp.minimum,
    legs: Opposite | None = None,
) -> Adl:
    """Cover `deficit` `[assets, 2]` (USD; long, short) from opposite profitable positions.

    quantity, bankrupt: `[assets, cohorts]`; price: mark `[assets]` (USD). minimum: of the
    amount needed and the profit available, as in `pay_from_fund`; which positions close does
    not depend on it. legs: the accounts' legs `[assets, accounts]`
    (`engine.model.accounts.adl_legs`), or None.
    """
    p = price[:, None]
    parts = [isolated(quantity, bankrupt, p, book)] + ([] if legs is None else [legs])
    # longs (column 0) cover deficits of short liquidations and vice versa
    need = deficit[:, ::-1]

    rule = pol.adl_rule

    # only the point's rule runs (the rule is the same for every path of a point, so under
    # vmap this stays a branch, not a select of all three)
    def queue():
        out, lo = _adl_queue(parts, need)
        return [closed for _, closed in out], lo

    none = jnp.full_like(need, jnp.inf)
    shares, threshold = jax.lax.switch(
        rule,
        [
            lambda: ([jnp.zeros_like(x.profit) for x in parts], none),
            queue,
            lambda: ([closed for _, closed in _adl_pro_rata(parts, need)], none),
        ],
    )
    # per asset and side both rules cover min(need, available profit); summing that instead of
    # the per-position shares keeps bad debt exactly zero when ADL covers the deficit
    available = sum(x.sums(x.profit) for x in parts)
    covered = jnp.where(rule > 0, minimum(need, available), 0.0)
    closed = shares[0] * quantity
    notional = jnp.sum(closed * p)
    return Adl(
        quantity=quantity - closed,
        absorbed=jnp.sum(covered),
        notional=notional + (0.0 if legs is None else jnp.sum(shares[1] * legs.units * p)),
        bad_debt=jnp.sum(need - covered),
        threshold=threshold,
        accounts=None if legs is None else ((1.0 - shares[1]) * legs.units).T,
    )
