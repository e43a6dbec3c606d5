"""Shared test helpers: the one tolerance rule, and the engine's random stream for the reference.

Tolerance rule (`assert_close`): elementwise |actual - expected| <= rtol * (|expected| + scale).
`scale` is the natural size of the quantity compared (USD amounts: the book's open interest;
log prices: 1), so an expected zero is met by anything below rtol * scale. The rtol in use:

- `PARITY_RTOL` (1e-9): JAX kernel vs NumPy reference in float64 on the same draws; the two
  differ only in the order of floating-point sums (about 1e-16 each, amplified over a path).
- `F32_RTOL` (1e-5): identities checked on float32 runs (accumulated rounding of ~1e3 terms).
- `EXACT_RTOL` (1e-12): float64 arithmetic against a value worked out by hand (a few roundings).
- `RELAXED_RTOL` (1e-6): the relaxed (differentiable) kernel at a vanishing temperature against
  the exact one; its smooth steps differ from the hard ones by far less.
- `FD_RTOL` (1e-3): a gradient against central finite differences (truncation error O(h²) and
  the rounding of the two evaluations divided by 2h); `scale` is then the gradient's floor.
- `SEARCH_RTOL` (1e-2): where a gradient search (Adam, a few hundred steps) ends against the
  known minimum of a smooth test function.
- Monte Carlo comparisons use their standard error instead (`3 * se`), stated in the test.

No test calls `np.testing.assert_allclose` with a tolerance of its own: it names one of these.
"""

from __future__ import annotations

import jax
import numpy as np

from engine.config.schema import Config
from engine.model.kernel import path_keys, step_draws
from engine.model.params import Params, Static

PARITY_RTOL = 1e-9
F32_RTOL = 1e-5
EXACT_RTOL = 1e-12
RELAXED_RTOL = 1e-6
FD_RTOL = 1e-3
SEARCH_RTOL = 1e-2


def assert_close(actual, expected, rtol: float, scale: float = 1.0, what: str = "") -> None:
    """Assert |actual - expected| <= rtol * (|expected| + scale), elementwise."""
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        np.asarray(expected, np.float64),
        rtol=rtol,
        atol=rtol * scale,
        err_msg=what,
    )


def usd_scale(cfg: Config) -> float:
    """Natural size of USD amounts of a configuration: its total open interest."""
    return float(sum(a.open_interest_usd for a in cfg.market.assets.values()))


def engine_draws(params: Params, static: Static, seed: int, n_paths: int):
    """`t -> Draws` with a leading path axis: exactly the numbers `engine.sim.rollout.rollout`
    draws for global paths 0 .. n_paths - 1 of `seed` (NumPy float64)."""
    keys = path_keys(seed, 0, n_paths)
    at = jax.jit(lambda t: step_draws(keys, t, params, static))
    return lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), at(t))
