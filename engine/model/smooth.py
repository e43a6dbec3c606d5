"""Smooth stand-in for the waterfall's minimums, used by the relaxed kernel only.

With `temperature=None` it is the exact min. With a temperature (dimensionless, the same one
that widens liquidation thresholds) the kink is rounded over a width proportional to the size
of the arguments and converges to the min as the temperature goes to zero. It never exceeds
the min, so a fund never pays more than it holds or than is owed, and ADL never covers more
than is needed or available.

(The split of a liquidation's equity into fund inflow and shortfall, max(E, 0), stays a kink:
a softplus there gave NaN gradients under XLA's compiled code in tests at low temperature.)
"""

from __future__ import annotations

import jax.numpy as jnp

# Smallest width (USD): negligible, and keeps a / width finite when both arguments are zero.
WIDTH_FLOOR = 1e-6


def smooth_min(a, b, temperature=None):
    """min(a, b), or -t * log(exp(-a/t) + exp(-b/t)) with t = temperature * (|a| + |b|) / 2."""
    if temperature is None:
        return jnp.minimum(a, b)
    width = temperature * 0.5 * (jnp.abs(a) + jnp.abs(b)) + WIDTH_FLOOR
    return -width * jnp.logaddexp(-a / width, -b / width)
