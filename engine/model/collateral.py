"""Collateral assets of cross-margin accounts: their price paths and margin value.

Collateral asset c trades at

    P_c = price0_c * (mark_k / price0_k if it tracks perp k, else 1) * (1 - g_c)

where the depeg gap `g` (fraction below par) evolves once per step, before the cascade:

    g_t = max(g_{t-1} * recovery  (or depeg_size if a random depeg arrives and is larger),
              scheduled gap of step t)

A random depeg arrives with probability `depeg_prob` per step (one uniform draw per path, step
and collateral asset, `engine.model.market.Draws.u_depeg`); a scheduled depeg holds the gap at
least at its size for its steps (`Schedule.depeg`), after which it recovers with the half-life.
Margin counts `(1 - haircut) * P_c` per unit; the venue also realises collateral at that value
when it liquidates an account (the haircut stands for the cost of selling it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.model.params import CollateralParams


def next_gap(gap, u, scheduled, cp: CollateralParams) -> jnp.ndarray:
    """The depeg gap `[collateral]` of this step from the last one (`gap`), this step's
    uniforms `u` and scheduled least gap `scheduled` (all `[collateral]`, fractions)."""
    decayed = gap * cp.recovery
    jumped = jnp.where(u < cp.depeg_prob, jnp.maximum(decayed, cp.depeg_size), decayed)
    return jnp.maximum(jumped, scheduled)


def prices(cp: CollateralParams, gap, mark, price0) -> jnp.ndarray:
    """Collateral prices `[collateral]` (USD) at perp marks `mark` `[assets]` (USD; starting
    prices `price0`) and depeg gap `gap` `[collateral]`."""
    k = jnp.maximum(cp.track, 0)
    follow = jnp.where(cp.track >= 0, mark[k] / price0[k], 1.0)
    return cp.price0 * follow * (1.0 - gap)


def margin_value(units, cp: CollateralParams, gap, mark, price0) -> jnp.ndarray:
    """Margin value (USD, after haircuts) `[accounts]` of collateral `units` `[accounts,
    collateral]` at marks `mark` `[assets]` and gap `gap`."""
    per_unit = (1.0 - cp.haircut) * prices(cp, gap, mark, price0)
    return jnp.matmul(units, per_unit, precision=jax.lax.Precision.HIGHEST)
