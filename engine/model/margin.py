"""Margin of an isolated position: where equity meets maintenance.

A cohort's state is two numbers, the quantity held `q` (asset units) and the bankruptcy price
`b` (USD), because the equity of an isolated position is linear in the mark price `p`:

    equity = s * q * (p - b)          s = +1 long, -1 short
    maintenance = mmr * q * p - q * a (a = maintenance amount per unit, USD)

It is liquidated when equity <= maintenance, i.e. at the liquidation price

    p_liq = (b - s * a) / (1 - s * mmr).

At entry price `e` with leverage `l`, `b = e * (1 - s / l)`.
"""

from __future__ import annotations


def liquidation_price(side, bankrupt, mmr, maint_amount):
    """Price (USD) at which equity meets maintenance margin; works on NumPy or JAX arrays of one
    shape (or broadcastable): side +1/-1, bankrupt USD, mmr fraction, maint_amount USD per unit."""
    return (bankrupt - side * maint_amount) / (1.0 - side * mmr)
