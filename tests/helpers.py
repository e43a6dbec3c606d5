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

from collections.abc import Callable

import jax
import numpy as np

from engine.config.schema import Config
from engine.model import kernel
from engine.model.kernel import path_keys, step_draws
from engine.model.params import Params, Static
from engine.sim import reference

PARITY_RTOL = 1e-9
F32_RTOL = 1e-5
EXACT_RTOL = 1e-12
RELAXED_RTOL = 1e-6
FD_RTOL = 1e-3
SEARCH_RTOL = 1e-2
# Per-path outputs that are counts or fractions, compared at scale 1 rather than the USD scale.
UNITLESS = (
    "max_drawdown",
    "open_interest_decline",
    "open_interest_decline_forced",
    "halted_steps",
    "cascade_rounds",
)


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


def assert_steps_match(
    params: Params, static: Static, seed: int, n_paths: int, scale: Callable, what: str
) -> None:
    """Every step of paths 0 and 1 of `n_paths`: the kernel's `step` (vmapped, jitted) and
    `reference.reference_step` from the same state agree field by field within `PARITY_RTOL`
    (float64); scale: state field name (`totals.liquidated`, ...) -> its natural size."""
    step = jax.jit(jax.vmap(kernel.step, in_axes=(0, 0, None, None, None, None, None)), static_argnums=6)
    p_np = reference.to_numpy(params)
    draws = engine_draws(params, static, seed, n_paths)
    one = kernel.init_state(params, static)
    state = jax.tree_util.tree_map(lambda x: jax.numpy.broadcast_to(x, (n_paths,) + x.shape), one)
    names = [jax.tree_util.keystr(k).lstrip(".") for k, _ in jax.tree_util.tree_flatten_with_path(one)[0]]
    for t in range(static.steps):
        d = draws(t)
        shock, flow = params.schedule.shock[t], params.schedule.flow[t]
        new = jax.device_get(step(state, d, t, shock, flow, params, static))
        for i in range(2):
            path = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)  # noqa: B023
            ref = reference.reference_step(
                path(state), path(d), t, np.asarray(shock), np.asarray(flow), p_np, static
            )
            for name, a, b in zip(
                names, jax.tree_util.tree_leaves(path(new)), jax.tree_util.tree_leaves(ref)
            ):
                assert_close(a, b, PARITY_RTOL, scale(name), f"{what} step {t} path {i} {name}")
        state = new
