"""Cross-margin accounts on the ladder: what every path shares is stored once per point, and a
path carries only which account cohorts are still open.

Until ADL cuts a leg (the ladder hands such a path to the dense kernel, `engine.sim.fallback`),
an account's legs change only when it is liquidated, and then all at once
(`engine.model.accounts`). A path's account book is therefore one bool per account cohort, and
the equity over maintenance of every account at marks `p` `[assets]` is linear in a short
per-path vector `v`:

    E - M = level + sum_a q s p_a - sum_a q m g_a p_a + sum_c U_c w_c  =  level + K v
    v     = (p, g p, w)                                   [2 assets + collateral]

with `level = W + sum_a q (a - s e)` (USD; wallet and legs after the leverage cap), `g_a = 1 +
dynamic_margin * max(0, sigma_a / sigma0_a - 1)` the dynamic-margin multiplier of the step,
`U_c` the units of collateral c and `w_c = (1 - haircut_c) P_c` the margin value of one unit at
the path's marks and depeg gap (`engine.model.collateral`). The coefficients `K` `[accounts, 2
assets + collateral]` are built once per point (`table`); the hit test `E - M <= 0` of every
account of a batch of paths is one matrix product, and per-path memory is `[accounts]` bools,
not `[accounts, assets]` units. The sums are ordered differently from the dense kernel's, so the
two agree to rounding (an account exactly at its threshold can tip either way).

The dense kernel caps a rate in force at `engine.model.policies.MAX_MMR`; a path whose
multiplier would take some leg's rate to the cap is flagged (`capped`) for the dense kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model import accounts, collateral, policies
from engine.model.params import Params


class AccountTable(NamedTuple):
    """The account cohorts of one point, shared by every path (after the leverage cap).

    legs: `[accounts, assets]` units; side: `[accounts, assets]` +1/-1; holds: `[accounts,
    assets]` 1.0 where a leg is held, else 0.0; level: `[accounts]` USD; coef: `[accounts, 2
    assets + collateral]` the matrix `K` of the module docstring; units: `[accounts,
    collateral]` collateral units held; top_mmr: `[assets]` the largest base rate of a held leg
    (0 where none).
    """

    legs: jnp.ndarray
    side: jnp.ndarray
    holds: jnp.ndarray
    level: jnp.ndarray
    coef: jnp.ndarray
    units: jnp.ndarray
    top_mmr: jnp.ndarray


def table(params: Params) -> AccountTable:
    """The `AccountTable` of `params` (which hold accounts), built once per compiled call."""
    acc, pol = params.accounts, params.policy
    legs, wallet, _ = accounts.capped(acc, pol)
    held = legs > 0
    units = acc.collateral if params.collateral is not None else jnp.zeros((legs.shape[0], 0), legs.dtype)
    return AccountTable(
        legs=legs,
        side=acc.side,
        holds=held.astype(legs.dtype),
        level=wallet + jnp.sum(legs * (acc.maint_amount - acc.side * acc.entry), -1),
        coef=jnp.concatenate([legs * acc.side, -legs * acc.mmr, units], -1),
        units=units,
        top_mmr=jnp.max(jnp.where(held, acc.mmr, 0.0), 0),
    )


def opened(tab: AccountTable) -> jnp.ndarray:
    """Account cohorts open at t0 `[accounts]` bool: those holding a leg."""
    return jnp.any(tab.holds > 0, -1)


def unit_values(params: Params, gap, price, par: bool = False) -> jnp.ndarray:
    """Margin value of one unit of each collateral asset `[collateral]` (USD) at marks `price`
    `[assets]` and depeg gap `gap` `[collateral]` (`par`: no gap); `[0]` without collateral."""
    cp = params.collateral
    if cp is None:
        return jnp.zeros(0, price.dtype)
    g = jnp.zeros_like(gap) if par else gap
    return (1.0 - cp.haircut) * collateral.prices(cp, g, price, params.market.price0)


class Marks(NamedTuple):
    """What prices the accounts' equity on one path in one step: mult `[assets]` the dynamic
    margin multiplier; gap `[collateral]` the depeg gap (None without collateral); open_ `[assets]`
    bool, markets trading."""

    mult: jnp.ndarray
    gap: jnp.ndarray | None
    open_: jnp.ndarray


def marks(params: Params, sigma, gap, open_) -> Marks:
    """The step's `Marks` of one path: sigma `[assets]` per-step volatility."""
    return Marks(policies.margin_multiplier(sigma, params.market.sigma0, params.policy), gap, open_)


def capped(tab: AccountTable, m: Marks) -> jnp.ndarray:
    """`[]` bool: the multiplier takes some held leg's rate beyond `policies.MAX_MMR`, where the
    dense kernel caps it and `excess` would not (the path goes to the dense kernel)."""
    return jnp.any(tab.top_mmr * m.mult > policies.MAX_MMR)


def excess(tab: AccountTable, params: Params, m: Marks, price) -> jnp.ndarray:
    """Equity minus maintenance `[accounts]` (USD) of every account cohort at marks `price`
    `[assets]` (USD), with the legs it held at t0."""
    v = jnp.concatenate([price, m.mult * price, unit_values(params, m.gap, price)])
    return tab.level + jnp.matmul(tab.coef, v, precision=jax.lax.Precision.HIGHEST)


def live(tab: AccountTable, alive, m: Marks) -> jnp.ndarray:
    """Accounts `[accounts]` bool that can be liquidated this step: open (`alive`) with every
    leg's market trading."""
    halted = (~m.open_).astype(tab.holds.dtype)
    return alive & (jnp.matmul(tab.holds, halted, precision=jax.lax.Precision.HIGHEST) == 0)


def under_water(tab: AccountTable, params: Params, m: Marks, alive, price) -> jnp.ndarray:
    """Accounts `[accounts]` bool, `live`, at or below maintenance at marks `price` `[assets]`."""
    return live(tab, alive, m) & (excess(tab, params, m, price) <= 0)


def hits(tab: AccountTable, params: Params, m: Marks, can, price) -> tuple:
    """A round's new hits at marks `price` `[assets]` (USD) among the accounts `can` `[accounts]`
    bool (live, not hit yet): (new `[accounts]` bool, caused by the depeg `[accounts]` bool,
    their units per asset and side `[assets, 2]`, collateral margin value `[accounts]` USD), as
    `engine.model.accounts.hits`."""
    ex = excess(tab, params, m, price)
    new = can & (ex <= 0)
    hp = jax.lax.Precision.HIGHEST
    coll = jnp.matmul(tab.units, unit_values(params, m.gap, price), precision=hp)
    caused = jnp.zeros_like(new)
    if params.collateral is not None:
        par = jnp.matmul(tab.units, unit_values(params, m.gap, price, par=True), precision=hp)
        caused = new & (ex - coll + par > 0)
    return new, caused, accounts.leg_sums(jnp.where(new[:, None], tab.legs, 0.0), tab.side), coll


def left(tab: AccountTable, params: Params, m: Marks, can, price) -> jnp.ndarray:
    """Notional `[]` (USD) at marks `price` of the accounts `can` still under water there (the
    cascade's residual)."""
    under = can & (excess(tab, params, m, price) <= 0)
    return jnp.sum(jnp.where(under[:, None], tab.legs * price, 0.0))
