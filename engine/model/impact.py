"""Price impact of forced flow, with depth that withdraws as volatility rises.

Net flow `Q` in USD (positive = net selling, e.g. long liquidations) moves the log mark by

    square-root law:  dx = -sign(Q) * Y * sigma_daily * sqrt(|Q| / V)
    linear law:       dx = -Q / D

with liquidity scaled by volatility, `V = V0 * w`, `D = D0 * w`, `w = (sigma0 / sigma)**kappa`:
when volatility doubles at kappa = 1, the same flow meets half the depth. The square-root law
(exponent about 1/2 across asset classes, crypto included) is the default.
"""

from __future__ import annotations

import jax.numpy as jnp

from engine.model.params import MarketParams


def impact(flow: jnp.ndarray, sigma: jnp.ndarray, mp: MarketParams) -> jnp.ndarray:
    """Log-price move `[assets]` caused by cumulative net flow `flow` `[assets]` (USD).

    sigma: current per-step volatility `[assets]` (log units).
    """
    withdraw = (mp.sigma0 / sigma) ** mp.depth_kappa
    linear = -flow / (mp.depth * withdraw)
    sigma_daily = sigma * jnp.sqrt(mp.steps_per_day)
    size = jnp.abs(flow) / (mp.volume * withdraw)
    # sqrt has an infinite slope at zero flow: keep its gradient finite (zero) there
    root_size = jnp.where(size > 0, jnp.sqrt(jnp.where(size > 0, size, 1.0)), 0.0)
    root = -jnp.sign(flow) * mp.impact_y * sigma_daily * root_size
    return jnp.where(mp.impact_law == 1, root, linear)
