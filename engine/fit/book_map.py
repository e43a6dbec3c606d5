"""The book from observables: the leverage mix, the long share and the entry prices of an
event's book as functions of what was public before it, with a few parameters shared by all
events (`BookMap`).

The book's leverage mix and entry distribution are the least observable and the most decisive
inputs. The map reads, per asset (`engine.config.observables`; a figure an event does not have takes the
neutral value in brackets):

- f, funding in excess of the 0.01% per 8 h baseline, in units of 0.01% [0];
- g, the fractional growth of open interest over the lookback (about 30 days) [0];
- r, the log price return over the lookback [0];
- a, the log of the accounts' long/short ratio [0: as many long as short].

and sets, per asset:

    leverage tilt     tau = tilt + tilt_funding * f + tilt_growth * g
    long share        s   = sigmoid(long_bias + long_ratio * a + long_funding * f)
    entry offsets     log(entry / price) ~ Normal(-entry_lag * r, entry_spread)

Crowded, expensive longs (high funding) and fast-growing open interest hold more leverage;
positions opened over a rally entered below today's price and sit further from their
liquidation, those opened over a fall sit closer.

The map acts on a base book built on a fixed grid (the template's leverage levels and entry
quantiles of Normal(0, grid_std)): each cohort's quantity is reweighted by leverage**tau times
the ratio of the wanted entry density to the grid's, then each side is scaled to its open
interest (`apply`). The reweighting is smooth in every parameter, so the relaxed kernel's
gradient reaches them (`engine.fit.joint`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from pydantic import Field

from engine.config.observables import Observables
from engine.config.strict import Strict
from engine.model.params import BookParams
from engine.model.sides import by_side, side_matrix


class BookMap(Strict):
    """The map's parameters (see the module docstring), shared by all events. The defaults
    are the values of the default scenario where it has one (the tilt) and neutral ones
    elsewhere; a joint calibration fits those it names."""

    tilt: float = Field(default=-0.875, ge=-3, le=3)
    tilt_funding: float = Field(default=0.0, ge=-3, le=3)
    tilt_growth: float = Field(default=0.0, ge=-5, le=5)
    entry_lag: float = Field(default=0.3, ge=-2, le=2)
    entry_spread: float = Field(default=0.05, gt=0, le=1)
    long_bias: float = Field(default=0.4, ge=-5, le=5)
    long_ratio: float = Field(default=1.0, ge=-5, le=5)
    long_funding: float = Field(default=0.0, ge=-5, le=5)


FIELDS = tuple(BookMap.model_fields)


def long_share(values: dict, obs: Observables):
    """`[assets]` long share of the leveraged open interest."""
    return jax.nn.sigmoid(
        values["long_bias"] + values["long_ratio"] * obs.log_ratio + values["long_funding"] * obs.funding
    )


def apply(book: BookParams, price0, oi, obs: Observables, values: dict, grid_std: float) -> BookParams:
    """The base book reweighted by the map (differentiable in `values`).

    book: the base book `[assets, cohorts]`, its entries at quantiles of Normal(0, grid_std) in
    log(entry / price0); price0, oi: `[assets]` USD; values: {field of BookMap: scalar}.
    Each side of each asset keeps the open interest oi * (long share, 1 - long share).
    """
    offset = jnp.log(book.entry / price0[:, None])
    tau = values["tilt"] + values["tilt_funding"] * obs.funding + values["tilt_growth"] * obs.growth
    mu = -values["entry_lag"] * obs.log_return
    z = (offset - mu[:, None]) / values["entry_spread"]
    log_w = tau[:, None] * jnp.log(book.leverage) - 0.5 * z**2 + 0.5 * (offset / grid_std) ** 2
    w = jnp.exp(log_w - jnp.max(log_w, axis=-1, keepdims=True))
    q = book.quantity * w
    sides = side_matrix(book.side)
    have = by_side(q * book.entry, sides)
    share = long_share(values, obs)
    want = oi[:, None] * jnp.stack([share, 1.0 - share], axis=-1)
    scale = want / jnp.maximum(have, 1e-30)
    factor = w * jnp.where(book.side > 0, scale[:, :1], scale[:, 1:])
    return book._replace(quantity=book.quantity * factor, positions=book.positions * factor)
