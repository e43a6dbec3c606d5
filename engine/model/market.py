"""Exogenous price dynamics: correlated heavy-tailed shocks, GARCH(1,1) variance, jumps.

Per asset `a` and step `t` (log units per step):

    r[a,t] = mu[a] + sigma[a,t] * eps[a,t] + J[a,t] + S[a,t]
    eps    = chol @ z * sqrt((nu - 2) / chi2_nu)       multivariate Student-t, unit variance
                                                       (nu = 0: Gaussian, eps = chol @ z)
    J[a,t] = n_t * jump_mean[a] + sqrt(n_t) * jump_std[a] * z_J[a],  n_t ~ Poisson(lambda dt)
    h[t+1] = omega + alpha * x[t]^2 + beta * h[t],  omega = sigma0^2 (1 - alpha - beta)

where `x[t]` is the realised mark return (so forced-flow impact feeds volatility, which
thins depth: the liquidity channel of the spiral) and `S` is the scheduled scenario shock.
Jump arrivals are market-wide (one count per step), sizes are per asset.

Random numbers are drawn by `draw` and passed to the step as `Draws`, so the NumPy reference
can be fed exactly the same numbers. The chi-square of the Student-t comes from JAX's gamma
sampler (any real dof; a rejection loop, the dearest draw by far) or, when the point's dof
is an integer, loop-free from its definition (`Static.dof_max`):

    chi2_nu = 2 * (E_1 + ... + E_m) + [nu odd] * Z^2,   m = floor(nu / 2), E_i ~ Exp(1)

(the sum of m Exp(1) is Gamma(m, 1), twice it is chi2 with 2m dof; Z^2 adds one dof).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model.params import MarketParams

# Variance is capped at this multiple of the long-run variance (keeps GARCH finite under
# extreme impact feedback).
MAX_VARIANCE_MULT = 400.0


class Draws(NamedTuple):
    """Random numbers of one path-step. z, z_jump: `[assets]` N(0,1); chi2: `[]` chi-square
    with `tail_dof` degrees of freedom (unused when Gaussian); u_jump: `[]` U(0,1); u_depeg:
    `[collateral]` U(0,1) for random depegs (`engine.model.collateral`), None without
    collateral."""

    z: jnp.ndarray
    chi2: jnp.ndarray
    u_jump: jnp.ndarray
    z_jump: jnp.ndarray
    u_depeg: jnp.ndarray | None = None


# The depeg uniforms come from their own stream of the step's key, so that a book with
# collateral draws the same market numbers as one without.
DEPEG_STREAM = 0x64657067  # "depg"


def depeg_draws(key: jax.Array, n_collateral: int, dtype=jnp.float32) -> jnp.ndarray:
    """U(0,1) `[n_collateral]` of one path-step for the collateral's random depegs."""
    return jax.random.uniform(jax.random.fold_in(key, DEPEG_STREAM), (n_collateral,), dtype)


def draw(key: jax.Array, n_assets: int, tail_dof: jnp.ndarray, dtype=jnp.float32, dof_max: int = 0) -> Draws:
    """Draw the random numbers of one path-step from its key.

    dof_max: 0, the chi-square by the gamma sampler; n >= 1, `tail_dof` is an integer at most
    n and the chi-square is built from floor(n / 2) exponentials and one squared normal, of
    which the first floor(dof / 2) (and the normal when dof is odd) count.
    """
    k_z, k_g, k_u = jax.random.split(key, 3)
    z = jax.random.normal(k_z, (2, n_assets), dtype)
    if dof_max:
        k_e, k_n = jax.random.split(k_g)
        terms = dof_max // 2
        exp = -jnp.log1p(-jax.random.uniform(k_e, (terms,), dtype))  # Exp(1); U < 1
        half = jnp.floor(0.5 * tail_dof)
        odd = (tail_dof - 2.0 * half) * jax.random.normal(k_n, (), dtype) ** 2
        chi2 = 2.0 * jnp.sum(jnp.where(jnp.arange(terms) < half, exp, 0.0)) + odd
    else:
        shape = jnp.where(tail_dof > 0, 0.5 * tail_dof, 1.0).astype(dtype)
        chi2 = 2.0 * jax.random.gamma(k_g, shape, dtype=dtype)
    u = jax.random.uniform(k_u, (), dtype)
    return Draws(z=z[0], chi2=chi2, u_jump=u, z_jump=z[1])


def shocks(d: Draws, mp: MarketParams) -> jnp.ndarray:
    """Correlated unit-variance shocks eps `[assets]`."""
    scale = jnp.where(mp.tail_dof > 0, jnp.sqrt((mp.tail_dof - 2.0) / d.chi2), 1.0)
    return (mp.chol @ d.z) * scale


def jumps(d: Draws, mp: MarketParams) -> jnp.ndarray:
    """Compound-Poisson jump return `[assets]` (log units)."""
    n = jnp.sum(d.u_jump > mp.jump_cdf).astype(d.z.dtype)
    return n * mp.jump_mean + jnp.sqrt(n) * mp.jump_std * d.z_jump


def jump_truncated(d: Draws, mp: MarketParams) -> jnp.ndarray:
    """`[]` bool: this step's jump count exceeded JUMP_MAX (`jumps` counted only JUMP_MAX)."""
    return d.u_jump > mp.jump_cdf_max


def exogenous_return(d: Draws, sigma: jnp.ndarray, shock: jnp.ndarray, mp: MarketParams):
    """Log return `[assets]` of one step before forced flow: drift, diffusion, jumps, shock."""
    return mp.mu + sigma * shocks(d, mp) + jumps(d, mp) + shock


def garch_variance(h: jnp.ndarray, realised: jnp.ndarray, mp: MarketParams) -> jnp.ndarray:
    """Next step's variance `[assets]` from this step's variance and realised log return."""
    s2 = mp.sigma0**2
    h_next = (
        s2 * (1.0 - mp.garch_alpha - mp.garch_beta)
        + mp.garch_alpha * (realised - mp.mu) ** 2
        + mp.garch_beta * h
    )
    return jnp.minimum(h_next, MAX_VARIANCE_MULT * s2)
