"""The in-step liquidation cascade: forced orders move the mark, the moved mark liquidates more.

Within one step the cascade is a fixed point, found by a fixed number of rounds with masking
(no per-lane while loop). In round r, with cumulative market flow Q_r `[assets]`:

    x_r    = clip(x_base + impact(Q_r), lo, hi)          the mark before this round's orders
    hit    = cohorts alive with s * (p_r - p_liq) <= 0    p_liq from `engine.model.margin`
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

`run_cascade` is the general form (partial liquidation; the relaxed kernel passes its own
`shares`). When every
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

from engine.model import accounts as A
from engine.model import tally as T
from engine.model.impact import impact
from engine.model.margin import liquidation_price
from engine.model.params import BookParams, MarketParams, Params, PolicyParams
from engine.model.sides import by_side, side_matrix, side_sums


class Cascade(NamedTuple):
    """Result of one step's cascade for one path.

    quantity, bankrupt: `[assets, cohorts]` after liquidations. flow: cumulative market flow
    `[assets]` (USD, + sells). liquidated: `[assets, 2]` notional at fill (USD; long, short).
    shortfall: `[assets, 2]` USD. trader_loss, counterparty, fund_inflow: `[]` USD.
    backstop_left: `[]` USD; backstop_qty: `[assets]` units; backstop_cash: `[]` USD.
    rounds: `[]` rounds with a liquidation. residual: `[]` USD notional still crossing when
    the rounds ran out (it carries to the next step). tally: `engine.model.tally.Tally` of the
    step (None in the ladder form, which tallies a path at its end). accounts: `[accounts,
    assets]` leg units after liquidations, or None without accounts; pending: the accounts hit
    so far during the rounds (`engine.model.accounts.Pending`), settled after the last.
    liquidated_units: `[assets, cohorts]` units liquidated in the step, in the whole-position
    form, which leaves its tally to the path's end (`engine.model.skeleton.dense_tally`); else None.
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
    tally: T.Tally | None = None
    accounts: jnp.ndarray | None = None
    pending: A.Pending | None = None
    liquidated_units: jnp.ndarray | None = None


class Shares(NamedTuple):
    """How much of each cohort `[assets, cohorts]` a round liquidates: weights of a full and of
    a partial liquidation (0/1 in the exact kernel), the partial fraction `[]`, and the units
    closed `dq`."""

    full: jnp.ndarray
    partial: jnp.ndarray
    fraction: jnp.ndarray
    dq: jnp.ndarray


def exact_shares(s, q, b, p_r, p_liq, active, mp: MarketParams, pol: PolicyParams) -> Shares:
    """Cohorts alive at or beyond their liquidation price close whole, or by the partial
    fraction when the rest stays solvent at the round's price.

    s, q, b, p_liq: `[assets, cohorts]` side, units, bankruptcy and liquidation price (USD);
    p_r: `[assets, 1]` the round's price (USD); active: `[assets]` bool (False while halted).
    """
    hit = active[:, None] & (q > 0) & (s * (p_r - p_liq) <= 0)
    f = pol.partial_fraction
    solvent_rest = s * q * (p_r - b) - mp.clearance_fee * f * q * p_r > 0
    partial = hit & (f < 1) & solvent_rest
    w_full = (hit & ~partial).astype(q.dtype)
    w_part = partial.astype(q.dtype)
    return Shares(w_full, w_part, f, w_full * q + w_part * f * q)


class _Step(NamedTuple):
    """What one step's cascade rounds share (see `run_cascade` for the meaning of each)."""

    book: BookParams
    mp: MarketParams
    pol: PolicyParams
    mmr: jnp.ndarray
    active: jnp.ndarray
    sides: jnp.ndarray
    x_base: jnp.ndarray
    lo: jnp.ndarray
    hi: jnp.ndarray
    sigma: jnp.ndarray
    # the general form's tally per round: the cohorts' leverage buckets `[assets, cohorts,
    # buckets]` and positions per unit held at t0 `[assets, cohorts]` (None in the whole form,
    # which tallies at the path's end); the accounts (`engine.model.accounts`) or None
    buckets: jnp.ndarray | None = None
    per_unit: jnp.ndarray | None = None
    acc: A.AccountStep | None = None
    lines: A.Lines | None = None
    legs: jnp.ndarray | None = None  # [accounts, assets] units, fixed within the step's rounds

    def mark(self, flow):
        """Log mark `[assets]` after cumulative flow `flow` (USD)."""
        return jnp.clip(self.x_base + impact(flow, self.sigma, self.mp), self.lo, self.hi)

    def price(self, flow):
        """Mark price `[assets, 1]` (USD) after cumulative flow `flow`."""
        return (self.mp.price0 * jnp.exp(self.mark(flow)))[:, None]


def backstop_share(orders, backstop_left):
    """USD the backstop absorbs of this round's orders `[assets]` and its share `phi` `[]`."""
    gross = jnp.sum(jnp.abs(orders))
    absorbed = jnp.minimum(gross, backstop_left)
    phi = jnp.where(gross > 0, absorbed / jnp.where(gross > 0, gross, 1.0), 0.0)
    return absorbed, phi


def _stopped(st: _Step, q, dq, p_r) -> jnp.ndarray:
    """Units `[assets, cohorts]` closed by their stop order this round: cohorts alive, not
    liquidating, whose stop price `p_r` `[assets, 1]` (USD) reached."""
    if st.book.stop is None:
        return jnp.zeros_like(q)
    s = st.book.side
    hit = (st.active[:, None] > 0) & (q > 0) & (dq == 0) & (s * (p_r - st.book.stop) <= 0)
    return jnp.where(hit, q, 0.0)


def _round(st: _Step, shares, c: Cascade) -> Cascade:
    """One round: who is hit at this round's price, their orders and fills, and the accounting."""
    s, e, a = st.book.side, st.book.entry, st.book.maint_amount
    mp, pol = st.mp, st.pol
    q, b = c.quantity, c.bankrupt
    p_r = st.price(c.flow)
    p_liq = liquidation_price(s, b, st.mmr, a)
    w_full, w_part, f, dq = shares(s, q, b, p_r, p_liq, st.active, mp, pol)
    ds = _stopped(st, q, dq, p_r)

    units = by_side(dq + ds, st.sides)  # [assets, 2]
    if st.acc is not None:
        new, caused, acc_units, coll = A.hits(st.acc, st.lines, st.legs, c.pending, p_r[:, 0])
        units = units + acc_units
    orders = p_r[:, 0] * (units[:, 0] - units[:, 1])
    absorbed, phi = backstop_share(orders, c.backstop_left)
    flow = c.flow + (1.0 - phi) * orders
    p_next = st.price(flow)
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

    q_new = q - dq - ds
    b_partial = fill - s * (equity - fee) / jnp.where(q_new > 0, q_new, 1.0)
    # the backstop's units and cash: sum of s dq and of s dq p_r (1 - s d)
    net = units[:, 0] - units[:, 1]
    paid = jnp.sum(p_r[:, 0] * (net - pol.backstop_discount * (units[:, 0] + units[:, 1])))
    liquidated, shortfall, lost, gained, paid_in, stops = side_sums(
        st.sides, dq * fill, short, loss, gain, inflow, ds * fill
    )
    t = T.cohorts(
        st.book.entry,
        st.buckets,
        st.per_unit,
        c.tally._replace(stop_notional=c.tally.stop_notional + stops),
        dq,
        loss,
    )
    pend = c.pending
    if st.acc is not None:
        sides = jnp.array([1.0, -1.0], p_r.dtype)
        acc_fill = phi * p_r * (1.0 - sides * pol.backstop_discount) + (1.0 - phi) * p_next  # [assets, 2]
        pend = A.record(pend, c.rounds, new, caused, acc_fill, coll)
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
        rounds=c.rounds + (jnp.sum(units) > 0).astype(c.rounds.dtype),
        residual=c.residual,
        tally=t,
        pending=pend,
    )


def _start(quantity, bankrupt, flow0, backstop_left, pending=None) -> Cascade:
    """The cascade before its first round."""
    zero = jnp.zeros((), flow0.dtype)
    return Cascade(
        quantity=quantity,
        bankrupt=bankrupt,
        flow=flow0,
        liquidated=jnp.zeros(quantity.shape[:1] + (2,), flow0.dtype),
        shortfall=jnp.zeros(quantity.shape[:1] + (2,), flow0.dtype),
        trader_loss=zero,
        counterparty=zero,
        fund_inflow=zero,
        backstop_left=backstop_left,
        backstop_qty=jnp.zeros_like(flow0),
        backstop_cash=zero,
        rounds=jnp.zeros((), jnp.int32),
        residual=zero,
        tally=T.zero(flow0.shape[0], flow0.dtype),
        pending=pending,
    )


def until_quiet(one_round, start, busy, rounds: int):
    """Apply `one_round` up to `rounds` times, stopping after the first round without hits
    (`busy(c)`, the rounds with hits so far, falls behind the round count). A round without
    hits leaves the state unchanged, so this gives the numbers of all rounds. Under vmap the
    loop runs while any path has hits."""

    def more(carry):
        i, c = carry
        return (i < rounds) & (busy(c) == i)

    def go(carry):
        i, c = carry
        return i + 1, one_round(c)

    return jax.lax.while_loop(more, go, (jnp.zeros((), jnp.int32), start))[1]


class CascadeInputs(NamedTuple):
    """One path's step as its cascade takes it. quantity, bankrupt (USD), mmr: `[assets,
    cohorts]`. flow0: exogenous flow `[assets]` (USD). x_base: log mark (relative to price0)
    before any flow `[assets]`; lo, hi: limits on the log mark `[assets]`; sigma: per-step
    volatility `[assets]`; active: `[assets]` bool, False for halted assets (nothing liquidates
    there; in the relaxed kernel a weight in [0, 1], the open share of a partly halted asset).
    backstop_left: `[]` USD."""

    quantity: jnp.ndarray
    bankrupt: jnp.ndarray
    flow0: jnp.ndarray
    x_base: jnp.ndarray
    lo: jnp.ndarray
    hi: jnp.ndarray
    sigma: jnp.ndarray
    mmr: jnp.ndarray
    active: jnp.ndarray
    backstop_left: jnp.ndarray


def run_cascade(
    inp: CascadeInputs,
    params: Params,
    rounds: int,
    early_exit: bool = True,
    shares=exact_shares,
    accounts: tuple | None = None,
) -> Cascade:
    """Run `rounds` cascade rounds for one path on `inp` (`CascadeInputs`) with the book,
    market and policy of `params`.

    early_exit: stop after the first round without liquidations (same result, faster; off
    where reverse-mode gradients are needed).
    shares: who a round liquidates, `exact_shares` or the relaxed kernel's ramp
    (`engine.model.relaxed.liquidation_shares`), called as `exact_shares` is.
    accounts: None, or (`engine.model.accounts.AccountStep`, leg units `[accounts, assets]`).
    """
    quantity, bankrupt, flow0, x_base, lo, hi, sigma, mmr, active, backstop_left = inp
    book, mp, pol = params.book, params.market, params.policy
    acc, acc_q = accounts if accounts is not None else (None, None)
    tallied = T.cohort_inputs(book, pol)
    ln = None if acc is None else A.lines(acc, acc_q, active)
    st = _Step(
        book, mp, pol, mmr, active, side_matrix(book.side), x_base, lo, hi, sigma, *tallied, acc, ln, acc_q
    )
    # the legs stay out of the rounds' carry (they change only when the rounds are settled)
    start = _start(
        quantity, bankrupt, flow0, backstop_left, None if acc is None else A.pending(acc_q, rounds)
    )
    one_round = lambda c: _round(st, shares, c)
    if early_exit:
        end = until_quiet(one_round, start, lambda c: c.rounds, rounds)
    else:
        end = jax.lax.fori_loop(0, rounds, lambda _, c: one_round(c), start)
    s = book.side
    p_end = st.price(end.flow)
    left = (
        (active[:, None] > 0)
        & (end.quantity > 0)
        & (s * (p_end - liquidation_price(s, end.bankrupt, mmr, book.maint_amount)) <= 0)
    )
    end = end._replace(residual=jnp.sum(jnp.where(left, end.quantity * p_end, 0.0)))
    return end if acc is None else _settle_accounts(acc, ln, acc_q, end, p_end[:, 0])


def _settle_accounts(acc: A.AccountStep, ln: A.Lines, legs, end: Cascade, p_end) -> Cascade:
    """`end` with the accounts hit in its rounds settled, and those still under water at the
    last marks `p_end` `[assets]` (USD) in the residual."""
    r = A.settle(acc, legs, end.pending, end.tally)
    left = ln.live & ~end.pending.hit & (A.excess(acc, ln, legs, p_end) <= 0)
    late = jnp.sum(jnp.where(left[:, None], legs * p_end, 0.0))
    return with_settled(end, r, late)._replace(accounts=r.quantity, pending=None)


def with_settled(c: Cascade, r: A.Settled, late) -> Cascade:
    """`c` with a step's settled account liquidations `r` added (its tally replaces `c`'s, which
    it started from) and `late` (USD) of accounts still under water added to the residual."""
    return c._replace(
        liquidated=c.liquidated + r.liquidated,
        shortfall=c.shortfall + r.shortfall,
        trader_loss=c.trader_loss + r.trader_loss,
        counterparty=c.counterparty + r.counterparty,
        fund_inflow=c.fund_inflow + r.fund_inflow,
        tally=r.tally,
        residual=c.residual + late,
    )


class _Hits(NamedTuple):
    """The carry of `run_cascade_whole`'s rounds."""

    flow: jnp.ndarray  # [assets] USD
    backstop_left: jnp.ndarray  # [] USD
    fill: jnp.ndarray  # [assets, cohorts] USD fill of the round that hit; -1 if none (fills are >= 0)
    backstop_qty: jnp.ndarray  # [assets] units
    backstop_cash: jnp.ndarray  # [] USD
    busy: jnp.ndarray  # [] int32 rounds with a liquidation


def _whole_round(st: _Step, quantity, p_liq, alive, c: _Hits) -> _Hits:
    """One round of `run_cascade_whole`: the newly crossed cohorts, their orders and fill."""
    s, d = st.book.side, st.pol.backstop_discount
    p_r = st.price(c.flow)[:, 0]
    new = alive & (c.fill < 0) & (s * (p_r[:, None] - p_liq) <= 0)
    units = by_side(jnp.where(new, quantity, 0.0), st.sides)  # [assets, 2]
    net, size = units[:, 0] - units[:, 1], units[:, 0] + units[:, 1]
    orders = p_r * net
    absorbed, phi = backstop_share(orders, c.backstop_left)
    flow = c.flow + (1.0 - phi) * orders
    fill = phi * p_r[:, None] * (1.0 - s * d) + (1.0 - phi) * st.price(flow)
    return _Hits(
        flow=flow,
        backstop_left=c.backstop_left - absorbed,
        fill=jnp.where(new, fill, c.fill),
        backstop_qty=c.backstop_qty + phi * net,
        # the backstop pays p_r (1 - s d) per unit: sum of s dq p_r (1 - s d)
        backstop_cash=c.backstop_cash - phi * jnp.sum(p_r * (net - d * size)),
        busy=c.busy + jnp.any(size > 0).astype(jnp.int32),
    )


def _whole_accounts(st: _Step, quantity, bankrupt, p_liq, alive, end: _Hits) -> Cascade:
    """The accounting of every hit cohort at the fill of its round."""
    s, e = st.book.side, st.book.entry
    hit = end.fill >= 0
    fill, q, b = end.fill, quantity, bankrupt
    dq = jnp.where(hit, q, 0.0)
    equity = s * dq * (fill - b)
    p_end = st.price(end.flow)
    left = alive & ~hit & (s * (p_end - p_liq) <= 0)
    margin = s * dq * (e - b)  # the trader loses the margin
    liquidated, shortfall, lost, gained, paid_in = side_sums(
        st.sides,
        dq * fill,
        jnp.maximum(-equity, 0.0),
        margin,
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
        liquidated_units=dq,
    )


def run_cascade_whole(inp: CascadeInputs, params: Params, rounds: int) -> Cascade:
    """`run_cascade` (exact kernel, early exit) when every liquidation closes the whole position.

    Arguments and result as `run_cascade`; `pol.partial_fraction` must be 1 (not checked here:
    `engine.config.forms.specialise` selects this form only then). Per round the work is one
    comparison, one per-side sum and one select over the cohorts; the accounting runs once
    after the rounds.
    """
    quantity, bankrupt, flow0, x_base, lo, hi, sigma, mmr, active, backstop_left = inp
    book, mp, pol = params.book, params.market, params.policy
    st = _Step(book, mp, pol, mmr, active, side_matrix(book.side), x_base, lo, hi, sigma)
    p_liq = liquidation_price(book.side, bankrupt, mmr, book.maint_amount)
    alive = (active[:, None] > 0) & (quantity > 0)
    start = _Hits(
        flow=flow0,
        backstop_left=backstop_left,
        fill=jnp.full_like(quantity, -1.0),
        backstop_qty=jnp.zeros_like(flow0),
        backstop_cash=jnp.zeros((), flow0.dtype),
        busy=jnp.zeros((), jnp.int32),
    )
    end = until_quiet(lambda c: _whole_round(st, quantity, p_liq, alive, c), start, lambda c: c.busy, rounds)
    return _whole_accounts(st, quantity, bankrupt, p_liq, alive, end)
