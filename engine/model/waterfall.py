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
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model.cascade import by_side, side_matrix
from engine.model.params import BookParams, PolicyParams

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
    ADL'd positions; notional: `[]` USD closed by ADL; bad_debt: `[]` USD."""

    quantity: jnp.ndarray
    absorbed: jnp.ndarray
    notional: jnp.ndarray
    bad_debt: jnp.ndarray


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


def _adl_queue(profit, score, need, side):
    """Whole-position closure in descending `score` order until profit covers `need`.

    profit, score, side: `[assets, cohorts]`; need: `[assets, 2]` USD to be covered by the
    longs (column 0) and the shorts (column 1). Returns (absorbed USD, closed 0/1) per cohort.

    Instead of sorting (slow on CPU), bisection in log score finds, per asset and side, the
    highest threshold whose cohorts at or above it hold enough profit. Cohorts strictly above
    the final bracket give up all their profit; cohorts inside it (ties, to 1e-6 in log
    score) share the rest in proportion to profit. Every cohort in the bracket is closed.
    """
    pick = lambda t: jnp.where(side > 0, t[:, :1], t[:, 1:])
    log_score = jnp.log(jnp.where(profit > 0, score, 1e-30))
    sides = side_matrix(side)
    held = lambda t: by_side(jnp.where(log_score >= pick(t), profit, 0.0), sides)

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        enough = held(mid) >= need
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    start = (jnp.full_like(need, -ADL_LOG_RANGE), jnp.full_like(need, ADL_LOG_RANGE))
    lo, hi = jax.lax.fori_loop(0, ADL_BISECTIONS, halve, start)
    above = log_score >= pick(hi)
    inside = (log_score >= pick(lo)) & ~above & (profit > 0)
    held_hi, held_lo = held(hi), held(lo)
    gap = held_lo - held_hi
    share = jnp.clip((need - held_hi) / jnp.where(gap > 0, gap, 1.0), 0.0, 1.0)
    absorbed = jnp.where(above, profit, jnp.where(inside, pick(share) * profit, 0.0))
    return absorbed, (above | inside).astype(profit.dtype)


def _adl_pro_rata(profit, need, side):
    """Equal share of profit taken from every profitable opposite position (shapes as queue)."""
    total = by_side(profit, side_matrix(side))
    share = jnp.where(total > 0, jnp.minimum(need / jnp.where(total > 0, total, 1.0), 1.0), 0.0)
    share = jnp.where(side > 0, share[:, :1], share[:, 1:])
    return share * profit, share * (profit > 0)


def auto_deleverage(
    quantity, bankrupt, price, deficit, book: BookParams, pol: PolicyParams, minimum=jnp.minimum
) -> Adl:
    """Cover `deficit` `[assets, 2]` (USD; long, short) from opposite profitable positions.

    quantity, bankrupt: `[assets, cohorts]`; price: mark `[assets]` (USD). minimum: of the
    amount needed and the profit available, as in `pay_from_fund`; which positions close does
    not depend on it.
    """
    s, e = book.side, book.entry
    p = price[:, None]
    profit = jnp.maximum(s * quantity * (p - e), 0.0)
    margin = s * quantity * (e - bankrupt)
    equity = s * quantity * (p - bankrupt)
    safe = lambda x: jnp.where(x > 0, x, 1.0)
    # profit % of margin x effective leverage (notional / equity), the production ranking
    score = jnp.where(profit > 0, profit / safe(margin) * quantity * p / safe(equity), 0.0)
    # longs (column 0) cover deficits of short liquidations and vice versa
    need = deficit[:, ::-1]

    rule = pol.adl_rule
    # only the point's rule runs (the rule is the same for every path of a point, so under
    # vmap this stays a branch, not a select of all three)
    closed = (
        jax.lax.switch(
            rule,
            [
                lambda: jnp.zeros_like(profit),
                lambda: _adl_queue(profit, score, need, s)[1],
                lambda: _adl_pro_rata(profit, need, s)[1],
            ],
        )
        * quantity
    )
    # per asset and side both rules cover min(need, available profit); summing that instead of
    # the per-cohort shares keeps bad debt exactly zero when ADL covers the deficit
    covered = jnp.where(rule > 0, minimum(need, by_side(profit, side_matrix(s))), 0.0)
    return Adl(
        quantity=quantity - closed,
        absorbed=jnp.sum(covered),
        notional=jnp.sum(closed * p),
        bad_debt=jnp.sum(need - covered),
    )
