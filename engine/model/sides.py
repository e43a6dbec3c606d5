"""Sums of per-cohort values per side (long, short): the cascade's and the waterfall's."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def side_matrix(side: jnp.ndarray) -> jnp.ndarray:
    """Indicator `[cohorts, 2]` (long, short) of `side` `[assets, cohorts]`, for `by_side`.
    Every asset's book has the same cohort layout (`engine.config.book`), so the first row serves."""
    return jnp.stack([side[0] > 0, side[0] < 0], -1).astype(side.dtype)


def by_side(x: jnp.ndarray, matrix: jnp.ndarray) -> jnp.ndarray:
    """Sum `[..., cohorts]` into `[..., 2]` (long, short); matrix: `side_matrix(side)`.

    One matrix product over the cohort axis: under `vmap` a plain `[paths * assets, cohorts]`
    by `[cohorts, 2]` product with no transposes, on CPU several times cheaper than masked
    reductions (XLA materialises the masked array before reducing). Full float32 precision
    (GPUs would otherwise use TF32 products, about 10 mantissa bits).
    """
    return jnp.matmul(x, matrix, precision=jax.lax.Precision.HIGHEST)


def side_sums(matrix: jnp.ndarray, *parts: jnp.ndarray) -> list[jnp.ndarray]:
    """`by_side` of each of `parts` (`[assets, cohorts]` each), as one product: `[assets, 2]` each."""
    return jnp.unstack(by_side(jnp.stack(parts, -2), matrix), axis=-2)
