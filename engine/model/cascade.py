"""The in-step liquidation cascade: forced orders move the mark, the moved mark liquidates more.

Within one step the cascade is a fixed point, found by a fixed number of rounds with masking
(no per-lane while loop). In round r, with cumulative market flow Q_r `[assets]`:

    x_r    = clip(x_base + impact(Q_r), lo, hi)          the mark before this round's orders
    hit    = cohorts alive with s * (p_r - p_liq) <= 0    p_liq from `engine.book`
    dq     = q (full) or f * q (partial, when the remainder stays solvent at p_r)
    F      = sum_k s * dq * p_r                           USD, + sells
    Q_r+1  = Q_r + (1 - phi) * F                          phi = share taken by the backstop
    fill   = phi * p_r * (1 - s * discount) + (1 - phi) * p_r+1

Accounting per liquidation event (it conserves money exactly):

    trader loss  = margin given up             full: s q (e - b)        partial: s dq (e - fill) + fee
    counterparty = s dq (e - fill)             what the other side of the fills gains vs entry
    fund inflow  = full: max(E, 0), E = s q (fill - b);  partial: the fee
    shortfall    = full: max(-E, 0)            paid by the fund, then ADL, then bad debt

so that trader loss = counterparty + fund inflow - shortfall. After a partial close the
remaining position keeps the equity (less the fee), so its bankruptcy price moves to
b' = fill - s (E - fee) / q'.

`run_cascade` is the general form (partial liquidation, the relaxed kernel). When every
liquidation closes the whole position, `run_cascade_whole` gives the same numbers faster: a
cohort is hit at most once per step and its liquidation price is fixed within the step, so a
round only has to find the newly crossed cohorts, sum their size per side and record their
fill; the per-cohort accounting above is done once, after the last round, at the fill of the
round that hit each cohort.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from engine.model.impact import impact
from engine.model.margin import liquidation_price
from engine.model.params import BookParams, MarketParams, PolicyParams


class Cascade(NamedTuple):
    """Result of one step's cascade for one path.

    quantity, bankrupt: `[assets, cohorts]` after liquidations. flow: cumulative market flow
    `[assets]` (USD, + sells). liquidated: `[assets, 2]` notional at fill (USD; long, short).
    shortfall: `[assets, 2]` USD. trader_loss, counterparty, fund_inflow: `[]` USD.
    backstop_left: `[]` USD; backstop_qty: `[assets]` units; backstop_cash: `[]` USD.
    rounds: `[]` rounds with a liquidation. residual: `[]` USD notional still crossing when
    the rounds ran out (it carries to the next step).
    """

    quantity: jnp.ndarray
    bankrupt: jnp.ndarray
    flow: jnp.ndarray
    liquidated: jnp.ndarray
    shortfall: jnp.ndarray
    trader_loss: jnp.ndarray
    counterparty: jnp.ndarray
    fund_inflow: jnp.ndarray
    backstop_left: jnp.ndarray
    backstop_qty: jnp.ndarray
    backstop_cash: jnp.ndarray
    rounds: jnp.ndarray
    residual: jnp.ndarray


def side_matrix(side: jnp.ndarray) -> jnp.ndarray:
    """Indicator `[cohorts, 2]` (long, short) of `side` `[assets, cohorts]`, for `by_side`.
    Every asset's book has the same cohort layout (`engine.book`), so the first row serves."""
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


def run_cascade(
    quantity,
    bankrupt,
    flow0,
    x_base,
    lo,
    hi,
    sigma,
    mmr,
    active,
    backstop_left,
    book: BookParams,
    mp: MarketParams,
    pol: PolicyParams,
    rounds: int,
    early_exit: bool = True,
    temperature=None,
    quantity0=None,
) -> Cascade:
    """Run `rounds` cascade rounds for one path.

    quantity, bankrupt, mmr: `[assets, cohorts]`. flow0: exogenous flow `[assets]` (USD).
    x_base: log mark (relative to price0) before any flow `[assets]`; lo, hi: limits on the
    log mark `[assets]`; sigma: per-step volatility `[assets]`; active: `[assets]` bool,
    False for halted assets (nothing liquidates there; in the relaxed kernel a weight in
    [0, 1], the open share of a partly halted asset). backstop_left: `[]` USD.
    early_exit: stop after the first round without liquidations (same result, faster; off
    where reverse-mode gradients are needed).
    temperature: None for the exact kernel; a `[]` width (log price) for the relaxed,
    differentiable one (full liquidation only), which then needs `quantity0`, the cohorts'
    initial quantities `[assets, cohorts]`.
    """
    s, e, a = book.side, book.entry, book.maint_amount
    sides = side_matrix(s)
    zero_a = jnp.zeros_like(flow0)
    zero = jnp.zeros((), flow0.dtype)

    def mark(flow):
        return jnp.clip(x_base + impact(flow, sigma, mp), lo, hi)

    def one_round(_, c: Cascade) -> Cascade:
        q, b = c.quantity, c.bankrupt
        p_r = (mp.price0 * jnp.exp(mark(c.flow)))[:, None]
        p_liq = liquidation_price(s, b, mmr, a)
        if temperature is None:
            hit = active[:, None] & (q > 0) & (s * (p_r - p_liq) <= 0)
            f = pol.partial_fraction
            solvent_rest = s * q * (p_r - b) - mp.clearance_fee * f * q * p_r > 0
            partial = hit & (f < 1) & solvent_rest
            w_full = (hit & ~partial).astype(q.dtype)
            w_part = partial.astype(q.dtype)
            dq = w_full * q + w_part * f * q
        else:
            # Relaxed: the share of a cohort's initial size that is gone is a ramp of how far
            # the mark has crossed its liquidation price (width `temperature` in log price);
            # only the part beyond what is already gone is liquidated, so nothing bleeds
            # away while the mark stands still.
            crossed = -s * jnp.log(p_r / jnp.maximum(p_liq, 1e-9 * p_r))
            gone = jnp.clip(crossed / temperature + 0.5, 0.0, 1.0) * active[:, None]
            remaining = q / jnp.where(quantity0 > 0, quantity0, 1.0)
            w_full = jnp.where(
                q > 0, jnp.clip(1.0 - (1.0 - gone) / jnp.where(q > 0, remaining, 1.0), 0.0, 1.0), 0.0
            )
            w_part = jnp.zeros_like(q)
            f = jnp.ones((), q.dtype)
            dq = w_full * q

        units = by_side(dq, sides)  # [assets, 2]
        orders = p_r[:, 0] * (units[:, 0] - units[:, 1])
        gross = jnp.sum(jnp.abs(orders))
        absorbed = jnp.minimum(gross, c.backstop_left)
        phi = jnp.where(gross > 0, absorbed / jnp.where(gross > 0, gross, 1.0), 0.0)
        flow = c.flow + (1.0 - phi) * orders
        p_next = (mp.price0 * jnp.exp(mark(flow)))[:, None]
        p_backstop = p_r * (1.0 - s * pol.backstop_discount)
        fill = phi * p_backstop + (1.0 - phi) * p_next

        equity = s * q * (fill - b)
        fee = mp.clearance_fee * f * q * fill
        # each event is a weighted mix of a full and a partial liquidation (weights 0/1 in
        # the exact kernel); both parts conserve money, so the mix does too
        loss = w_full * s * q * (e - b) + w_part * (s * f * q * (e - fill) + fee)
        gain = s * dq * (e - fill)
        inflow = w_full * jnp.maximum(equity, 0.0) + w_part * fee
        short = w_full * jnp.maximum(-equity, 0.0)

        q_new = q - dq
        b_partial = fill - s * (equity - fee) / jnp.where(q_new > 0, q_new, 1.0)
        # the backstop's units and cash: sum of s dq and of s dq p_r (1 - s d)
        net = units[:, 0] - units[:, 1]
        paid = jnp.sum(p_r[:, 0] * (net - pol.backstop_discount * (units[:, 0] + units[:, 1])))
        liquidated, shortfall, lost, gained, paid_in = side_sums(sides, dq * fill, short, loss, gain, inflow)
        return Cascade(
            quantity=q_new,
            bankrupt=jnp.where(w_part > 0, b_partial, b),
            flow=flow,
            liquidated=c.liquidated + liquidated,
            shortfall=c.shortfall + shortfall,
            trader_loss=c.trader_loss + jnp.sum(lost),
            counterparty=c.counterparty + jnp.sum(gained),
            fund_inflow=c.fund_inflow + jnp.sum(paid_in),
            backstop_left=c.backstop_left - absorbed,
            backstop_qty=c.backstop_qty + phi * net,
            backstop_cash=c.backstop_cash - phi * paid,
            rounds=c.rounds + (jnp.sum(liquidated) > 0).astype(c.rounds.dtype),
            residual=zero,
        )

    start = Cascade(
        quantity=quantity,
        bankrupt=bankrupt,
        flow=flow0,
        liquidated=jnp.zeros(quantity.shape[:1] + (2,), flow0.dtype),
        shortfall=jnp.zeros(quantity.shape[:1] + (2,), flow0.dtype),
        trader_loss=zero,
        counterparty=zero,
        fund_inflow=zero,
        backstop_left=backstop_left,
        backstop_qty=zero_a,
        backstop_cash=zero,
        rounds=jnp.zeros((), jnp.int32),
        residual=zero,
    )
    if early_exit:
        # A round without hits leaves the state unchanged, so stopping there gives the same
        # numbers as running all rounds. Under vmap the loop runs while any path has hits.
        def more(carry):
            i, c = carry
            return (i < rounds) & (c.rounds == i)

        def go(carry):
            i, c = carry
            return i + 1, one_round(i, c)

        _, end = jax.lax.while_loop(more, go, (jnp.zeros((), jnp.int32), start))
    else:
        end = jax.lax.fori_loop(0, rounds, one_round, start)
    p_end = (mp.price0 * jnp.exp(mark(end.flow)))[:, None]
    left = (
        (active[:, None] > 0)
        & (end.quantity > 0)
        & (s * (p_end - liquidation_price(s, end.bankrupt, mmr, a)) <= 0)
    )
    return end._replace(residual=jnp.sum(jnp.where(left, end.quantity * p_end, 0.0)))


def run_cascade_whole(
    quantity,
    bankrupt,
    flow0,
    x_base,
    lo,
    hi,
    sigma,
    mmr,
    active,
    backstop_left,
    book: BookParams,
    mp: MarketParams,
    pol: PolicyParams,
    rounds: int,
) -> Cascade:
    """`run_cascade` (exact kernel, early exit) when every liquidation closes the whole position.

    Arguments and result as `run_cascade`; `pol.partial_fraction` must be 1 (not checked here:
    `engine.params.specialise` selects this form only then). Per round the work is one comparison, one
    per-side sum and one select over the cohorts; the accounting runs once after the rounds.
    """
    s, e, a = book.side, book.entry, book.maint_amount
    p_liq = liquidation_price(s, bankrupt, mmr, a)
    alive = (active[:, None] > 0) & (quantity > 0)
    sides = side_matrix(s)
    zero = jnp.zeros((), flow0.dtype)

    def price(flow):
        return mp.price0 * jnp.exp(jnp.clip(x_base + impact(flow, sigma, mp), lo, hi))

    class Rounds(NamedTuple):
        flow: jnp.ndarray  # [assets] USD
        backstop_left: jnp.ndarray  # [] USD
        fill: jnp.ndarray  # [assets, cohorts] USD fill of the round that hit; -1 if none (fills are >= 0)
        backstop_qty: jnp.ndarray  # [assets] units
        backstop_cash: jnp.ndarray  # [] USD
        busy: jnp.ndarray  # [] int32 rounds with a liquidation

    def one_round(c: Rounds) -> Rounds:
        p_r = price(c.flow)
        new = alive & (c.fill < 0) & (s * (p_r[:, None] - p_liq) <= 0)
        units = by_side(jnp.where(new, quantity, 0.0), sides)  # [assets, 2]
        net, size = units[:, 0] - units[:, 1], units[:, 0] + units[:, 1]
        orders = p_r * net
        gross = jnp.sum(jnp.abs(orders))
        absorbed = jnp.minimum(gross, c.backstop_left)
        phi = jnp.where(gross > 0, absorbed / jnp.where(gross > 0, gross, 1.0), 0.0)
        flow = c.flow + (1.0 - phi) * orders
        d = pol.backstop_discount
        fill = phi * p_r[:, None] * (1.0 - s * d) + (1.0 - phi) * price(flow)[:, None]
        return Rounds(
            flow=flow,
            backstop_left=c.backstop_left - absorbed,
            fill=jnp.where(new, fill, c.fill),
            backstop_qty=c.backstop_qty + phi * net,
            # the backstop pays p_r (1 - s d) per unit: sum of s dq p_r (1 - s d)
            backstop_cash=c.backstop_cash - phi * jnp.sum(p_r * (net - d * size)),
            busy=c.busy + jnp.any(size > 0).astype(jnp.int32),
        )

    start = Rounds(
        flow=flow0,
        backstop_left=backstop_left,
        fill=jnp.full_like(quantity, -1.0),
        backstop_qty=jnp.zeros_like(flow0),
        backstop_cash=zero,
        busy=jnp.zeros((), jnp.int32),
    )

    def more(carry):
        i, c = carry
        return (i < rounds) & (c.busy == i)

    def go(carry):
        i, c = carry
        return i + 1, one_round(c)

    _, end = jax.lax.while_loop(more, go, (jnp.zeros((), jnp.int32), start))

    # accounting of every hit cohort at the fill of its round
    hit = end.fill >= 0
    fill, q, b = end.fill, quantity, bankrupt
    dq = jnp.where(hit, q, 0.0)
    equity = s * dq * (fill - b)
    p_end = price(end.flow)[:, None]
    left = alive & ~hit & (s * (p_end - p_liq) <= 0)
    liquidated, shortfall, lost, gained, paid_in = side_sums(
        sides,
        dq * fill,
        jnp.maximum(-equity, 0.0),
        s * dq * (e - b),  # the trader loses the margin
        s * dq * (e - fill),
        jnp.maximum(equity, 0.0),
    )
    return Cascade(
        quantity=jnp.where(hit, 0.0, q),
        bankrupt=b,
        flow=end.flow,
        liquidated=liquidated,
        shortfall=shortfall,
        trader_loss=jnp.sum(lost),
        counterparty=jnp.sum(gained),
        fund_inflow=jnp.sum(paid_in),
        backstop_left=end.backstop_left,
        backstop_qty=end.backstop_qty,
        backstop_cash=end.backstop_cash,
        rounds=end.busy,
        residual=jnp.sum(jnp.where(left, q * p_end, 0.0)),
    )
