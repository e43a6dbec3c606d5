"""Voluntary closing: holders of isolated positions close part of them as volatility rises and
after losses, a behavioural flow beside the forced one (`docs/model.md`, "Voluntary closing").

Per asset a, side s (+1 long, -1 short) and step t of dt_days = 1 / steps_per_day days:

    hazard = derisk_vol * max(0, sigma_t / sigma0 - 1) + derisk_loss * max(0, -s x_mark)
    nu     = 1 - exp(-dt_days * open * hazard)

sigma_t: the step's GARCH volatility per step (sqrt of `SimState.variance`); x_mark: the log
mark relative to `price0` at the start of the step (the side's log loss since t0 where
positive); open: 1 where the market trades, 0 during a halt (the relaxed kernel's open share in
between): holders cannot close while trading is halted. Every open isolated cohort of the side
closes the fraction nu of its units at the start of the cascade stage, which leaves its
bankruptcy and liquidation prices unchanged. The closing orders join the step's exogenous flow
(longs sell, shorts buy: `s dq p` USD, + sells) at the step's mark before any flow `p`, so they
move the mark through the same impact and can liquidate others in the step's cascade. They
fill at `p` (their notional `dq p`) and touch no part of the waterfall: holders close at the
market with their own margin. Cross-margin account legs are not closed (not modelled).

The dense kernels scale each cohort's units (`start`); the ladder kernel, whose cohorts of a
side all keep the same share of their t0 units, carries that share per asset and side
(`shrink`). Both take nu from `fractions` and the orders from `orders`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from engine.model.params import MarketParams, Params, Static
from engine.model.sides import by_side, side_matrix
from engine.model.stages import Move, SimState


class Closing(NamedTuple):
    """One step's voluntary closing of one path, summed per asset. flow: `[assets]` USD of
    closing orders (+ sells); notional: `[assets, 2]` USD closed at the fill marks (long,
    short); units: `[assets]` units closed, both sides."""

    flow: jnp.ndarray
    notional: jnp.ndarray
    units: jnp.ndarray


def fractions(x_start, sigma, open_, mp: MarketParams) -> jnp.ndarray:
    """The share nu `[assets, 2]` (long, short) of every open cohort's units closed this step
    (the module docstring's formula).

    x_start: `[assets]` log mark at the start of the step; sigma: `[assets]` volatility per
    step; open_: `[assets]` bool or open share in [0, 1].
    """
    excess = jnp.maximum(sigma / mp.sigma0 - 1.0, 0.0)
    loss = jnp.maximum(jnp.stack([-x_start, x_start], -1), 0.0)  # [assets, 2] (long, short)
    hazard = mp.derisk_vol[:, None] * excess[:, None] + mp.derisk_loss[:, None] * loss
    return -jnp.expm1(-jnp.asarray(open_, sigma.dtype)[:, None] * hazard / mp.steps_per_day)


def orders(units, x_open, mp: MarketParams) -> Closing:
    """The `Closing` of `units` `[assets, 2]` (long, short) closed at the log mark `x_open`
    `[assets]` (the step's, before any flow, within the breaker's limits)."""
    price = mp.price0 * jnp.exp(x_open)
    return Closing(
        flow=price * (units[:, 0] - units[:, 1]),
        notional=price[:, None] * units,
        units=units[:, 0] + units[:, 1],
    )


def open_mark(m: Move, lo, hi) -> jnp.ndarray:
    """The log mark `[assets]` the closing orders meet: the step's before any flow, within the
    breaker's limits `lo`, `hi` `[assets]`."""
    return jnp.clip(m.x_fair + m.x_trans, lo, hi)


def start(
    state: SimState, m: Move, flow0, lo, hi, open_, params: Params, static: Static
) -> tuple[SimState, jnp.ndarray, Closing | None]:
    """The first part of stage 3 (`engine.model.kernel`): the state with the cohorts' units
    (and the relaxed kernel's `quantity0`, so that its liquidation ramp measures the share of
    what holders still hold) after the step's closing, the flow into the cascade `[assets]`
    (USD) with its orders, and the `Closing`; all unchanged, and None, without `Static.derisk`.
    flow0, lo, hi, open_: the step's flow, limits and open share (`engine.model.kernel.market_step`)."""
    if not static.derisk:
        return state, flow0, None
    side = params.book.side
    nu = fractions(state.x_mark, m.sigma, open_, params.market)
    fraction = jnp.where(side > 0, nu[:, :1], nu[:, 1:])  # [assets, cohorts]
    closed = state.quantity * fraction
    c = orders(by_side(closed, side_matrix(side)), open_mark(m, lo, hi), params.market)
    q0 = None if state.quantity0 is None else state.quantity0 - state.quantity0 * fraction
    return state._replace(quantity=state.quantity - closed, quantity0=q0), flow0 + c.flow, c


def shrink(held, units, x_start, x_open, sigma, open_, mp: MarketParams) -> tuple[jnp.ndarray, Closing]:
    """The closing of a book held as a share of its t0 units per side (the ladder kernel's,
    `engine.model.ladder_kernel`): every open cohort of a side keeps `held` of its t0 units, so
    the units closed are nu times the side's open units.

    held: `[assets, 2]` share of t0 units still held (long, short); units: `[assets, 2]` open
    units; x_start, sigma, open_: as `fractions`; x_open: as `orders`. Returns the share
    after the closing `[assets, 2]` and the `Closing`.
    """
    nu = fractions(x_start, sigma, open_, mp)
    return held - held * nu, orders(units * nu, x_open, mp)


def record(state: SimState, c: Closing | None) -> SimState:
    """`state` with the step's closing `c` added to its totals (as it is when `c` is None)."""
    if c is None:
        return state
    tot = state.totals
    return state._replace(
        totals=tot._replace(
            voluntary=tot.voluntary + c.notional, voluntary_units=tot.voluntary_units + c.units
        )
    )
