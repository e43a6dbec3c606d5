"""Stop orders on the ladder: what sets their rung groups apart from the liquidations'.

A stop order (`engine.config.stops`) is a rung of its own group, one per side, keyed by its
trigger price at rate 0 (`engine.model.ladder`), so the round's search finds the stops a price
reaches with the dense kernel's test, `s (p - stop) <= 0`. Their units join the round's orders
(and the backstop's share of them) like liquidations; unlike them they close with no margin and
no waterfall: their groups add nothing to the liquidated notional, the traders' loss, the fund
or the residual (`liquidating`), and their notional at fill is the tally's `stop_notional`
(`with_stop_notional`). The one case the ladder does not hold is a stop order carried past its
own liquidation price in a round (a short stop at twice its price, `stop_dies`): the dense
kernel liquidates it there, so the path is handed over (`engine.sim.fallback`).
"""

from __future__ import annotations

import jax.numpy as jnp

from engine.model import ladder as L
from engine.model import policies
from engine.model import tally as T
from engine.model.params import Params


def liquidating(lad: L.Ladder, x: jnp.ndarray) -> jnp.ndarray:
    """x `[assets, groups, ...]` in the groups that liquidate, 0 (False) in the stop orders'."""
    if lad.stop is None:
        return x
    return jnp.where(lad.stop.reshape(lad.stop.shape + (1,) * (x.ndim - 2)), jnp.zeros_like(x), x)


def stop_rates(params: Params, sigma) -> jnp.ndarray | None:
    """With stop orders, the maintenance rate in force on their cohorts `[assets, groups]` at
    volatility `sigma` `[assets]`; else None."""
    lad = params.ladder
    if lad.stop is None:
        return None
    return policies.maintenance_rate(lad.stop_rate, sigma, params.market.sigma0, params.policy)


def stop_dies(lad: L.Ladder, rates, price, level, active) -> jnp.ndarray:
    """`[]` bool: `price` `[assets]` (USD) reaches the liquidation price of a stop order still
    open (beyond `level` `[assets, groups]`; `rates` in force: `stop_rates`) in an asset trading
    (`active` `[assets]` bool). Only a short stop can be, at about twice its price, and the
    first of its group (`level`), whose price is the lowest, dies first; a long stop's
    bankruptcy price is 0. False without stop orders."""
    if lad.stop is None:
        return jnp.zeros((), bool)
    s, b = lad.side, L.take(lad.rows[..., 2], level)
    dies = s * (price[:, None] - b / (1.0 - s * rates)) <= 0
    return L.fold((dies & lad.stop & (level < lad.end) & active[:, None]).reshape(-1), jnp.logical_or, False)


def with_stop_notional(tally: T.Tally | None, stops: jnp.ndarray | None) -> T.Tally | None:
    """`tally` (None: nothing tallied) with the stop orders' notional `stops` `[assets, 2]` USD
    (long, short) added; `tally` itself without stop orders (`stops` None)."""
    if stops is None:
        return tally
    tally = T.zero(stops.shape[0], stops.dtype) if tally is None else tally
    return tally._replace(stop_notional=tally.stop_notional + stops)
