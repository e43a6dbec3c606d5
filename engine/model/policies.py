"""Policy levers as small pure functions of traced parameters.

Each lever is a function of the state it acts on and the `PolicyParams` of the point being
simulated, so a sweep over policy values reuses one compiled kernel. A lever that is off is
the same function with a value that does not bind (a cap of 1000x, a limit of `NO_LIMIT`).

- leverage cap: `cap_leverage` (t0)
- circuit breaker: `mark_limits` (per step), `halt_triggered`
- dynamic margin: `maintenance_rate`
- partial liquidation, backstop vault, insurance fund, ADL rule: in `engine.model.cascade`
  and `engine.model.waterfall`, where they act.
"""

from __future__ import annotations

import jax.numpy as jnp

from engine.model.params import BookParams, PolicyParams

# Maintenance rates are capped below 1 so that the liquidation price stays finite.
MAX_MMR = 0.9


def cap_leverage(book: BookParams, pol: PolicyParams) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Quantity and bankruptcy price `[assets, cohorts]` after bringing leverage to the cap.

    reduce_size keeps the margin and shrinks the position (q * cap / l); add_margin keeps the
    position and tops up margin. Either way the bankruptcy price becomes e * (1 - s / cap).
    """
    lev = jnp.minimum(book.leverage, pol.leverage_cap)
    shrink = jnp.where(pol.cap_add_margin > 0.5, 1.0, lev / book.leverage)
    return book.quantity * shrink, book.entry * (1.0 - book.side / lev)


def mark_limits(x_prev, x_ref, halted, pol: PolicyParams):
    """Lowest and highest log mark `[assets]` allowed this step.

    band: within `band` of the previous mark; halt: within `halt_threshold` of the mark
    `halt_window` steps ago (the breaker fires at the limit); a halted asset is frozen.
    """
    lo = jnp.maximum(x_prev - pol.band, x_ref - pol.halt_threshold)
    hi = jnp.minimum(x_prev + pol.band, x_ref + pol.halt_threshold)
    return jnp.where(halted, x_prev, lo), jnp.where(halted, x_prev, hi)


def halt_triggered(x_target, x_ref, halted, pol: PolicyParams) -> jnp.ndarray:
    """Assets `[assets]` whose unconstrained mark moved beyond the halt threshold."""
    return (~halted) & (jnp.abs(x_target - x_ref) > pol.halt_threshold)


def maintenance_rate(mmr, sigma, sigma0, pol: PolicyParams) -> jnp.ndarray:
    """Effective maintenance rate `[assets, cohorts]`, rising with excess volatility.

    mmr * (1 + dynamic_margin * max(0, sigma / sigma0 - 1)); sigma, sigma0: `[assets]`.
    """
    return jnp.minimum(mmr * margin_multiplier(sigma, sigma0, pol)[:, None], MAX_MMR)


def margin_multiplier(sigma, sigma0, pol: PolicyParams) -> jnp.ndarray:
    """Dynamic-margin multiplier `[assets]`: 1 + dynamic_margin * max(0, sigma / sigma0 - 1)."""
    return 1.0 + pol.dynamic_margin * jnp.maximum(sigma / sigma0 - 1.0, 0.0)
