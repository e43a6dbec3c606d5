"""Cross-margin accounts in the cascade: one equity for positions in several assets.

An account cohort `k` (`engine.model.params.AccountParams`, the sum of `weight` accounts alike)
holds a leg per asset (side `s`, units `q`, entry `e`) and a wallet `W` (USD) and collateral.
At perp marks `p` `[assets]`:

    equity      E = W + C(p) + sum_a s q (p_a - e_a)          C: collateral margin value
    maintenance M = sum_a (m_a q p_a - q a_a)                  per leg, tiers by leg size

The account is liquidated when `E <= M` (its margin ratio M / E reaches 1) and the markets of
all its legs are open; then every leg closes whole in the same round, which is forced flow in
each asset (so the cascade's fixed point couples the assets). At the fills `f`:

    trader loss  = W + C0                  the margin posted at t0 (C0: collateral at t0)
    counterparty = sum_a s q (e_a - f_a)
    equity left  E_f = W + C(p) + sum_a s q (f_a - e_a);  fund inflow max(E_f, 0), shortfall max(-E_f, 0)
    markdown     = C0 - C(p)               what the collateral lost since t0

so that trader loss = counterparty + fund inflow - shortfall + markdown. The shortfall is
booked against the account's legs in proportion to their notional at fill (the fund, ADL and
bad debt work per asset and side). A liquidation is *caused by collateral* when the account
would not be under water with its collateral at par (no depeg gap) at the same marks.

The leverage cap acts on the account: its leverage (notional at entry over margin at t0)
above the cap is brought to it by shrinking every leg (reduce size) or adding cash to the
wallet (add margin).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from engine.model import collateral, policies, tally
from engine.model.params import AccountParams, CollateralParams, Params, PolicyParams
from engine.model.waterfall import Opposite


class AccountStep(NamedTuple):
    """What one step's cascade rounds share about the accounts, `[accounts]` unless stated.

    wallet: USD after the leverage cap. margin0: USD margin at t0 (wallet and collateral).
    sigma, sigma0: `[assets]` per-step volatility of the step and long-run (dynamic margin,
    `policies.maintenance_rate`). pol: the policy point. weights: `[accounts, buckets]` leverage bucket.
    gap: `[collateral]` depeg gap of the step, or None. price0: `[assets]` USD. per_unit:
    `[accounts, assets]` positions per unit of each leg at t0 (after the cap), so that a leg
    ADL has cut counts by the share of its units.
    """

    acc: AccountParams
    cp: CollateralParams | None
    wallet: jnp.ndarray
    margin0: jnp.ndarray
    sigma: jnp.ndarray
    sigma0: jnp.ndarray
    pol: PolicyParams
    weights: jnp.ndarray
    gap: jnp.ndarray | None
    price0: jnp.ndarray
    per_unit: jnp.ndarray


def capped(acc: AccountParams, pol: PolicyParams) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Leg units `[accounts, assets]`, wallet `[accounts]` (USD) and leverage `[accounts]`
    after the leverage cap (`engine.model.policies.cap_leverage`, per account)."""
    lev = jnp.minimum(acc.leverage, pol.leverage_cap)
    # an account without legs (leverage 0) has nothing to cap
    ratio = jnp.where(lev > 0, acc.leverage / jnp.where(lev > 0, lev, 1.0), 1.0)
    add = pol.cap_add_margin > 0.5
    notional = jnp.sum(acc.quantity * acc.entry, -1)
    margin = notional / jnp.where(acc.leverage > 0, acc.leverage, 1.0)
    wallet = jnp.where(add, acc.wallet + margin * (ratio - 1.0), acc.wallet)
    quantity = jnp.where(add, acc.quantity, acc.quantity / ratio[:, None])
    return quantity, wallet, lev


def prepare(params: Params, gap, sigma) -> AccountStep:
    """The `AccountStep` of a step of `params` (which hold accounts): gap `[collateral]` the
    step's depeg gap (None without collateral), sigma `[assets]` its per-step volatility."""
    acc, cp, mp, pol = params.accounts, params.collateral, params.market, params.policy
    q0, wallet, lev = capped(acc, pol)
    per_unit = jnp.where(q0 > 0, acc.positions / jnp.where(q0 > 0, q0, 1.0), 0.0)
    c0 = 0.0
    if cp is not None:
        c0 = collateral.margin_value(acc.collateral, cp, jnp.zeros_like(gap), mp.price0, mp.price0)
    weights = tally.bucket_weights(lev)
    return AccountStep(acc, cp, wallet, wallet + c0, sigma, mp.sigma0, pol, weights, gap, mp.price0, per_unit)


def rates(st: AccountStep) -> jnp.ndarray:
    """Maintenance rates in force `[accounts, assets]` (`engine.model.policies.maintenance_rate`)."""
    return policies.maintenance_rate(st.acc.mmr.T, st.sigma, st.sigma0, st.pol).T


def collateral_value(st: AccountStep, price, par: bool = False) -> jnp.ndarray:
    """Collateral margin value `[accounts]` USD at marks `price` `[assets]`; `par`: with no
    depeg gap."""
    if st.cp is None:
        return jnp.zeros_like(st.wallet)
    gap = jnp.zeros_like(st.gap) if par else st.gap
    return collateral.margin_value(st.acc.collateral, st.cp, gap, price, st.price0)


class Lines(NamedTuple):
    """What the rounds of one step of one path share, `[accounts]`: `E - M = level +
    sum_a q (s - m) p_a + C(p)` at marks `p`, with level = `W - sum s q e + sum q a` (USD);
    live: the account holds a leg and every leg's market is open."""

    level: jnp.ndarray
    live: jnp.ndarray


def lines(st: AccountStep, q, active) -> Lines:
    """The `Lines` of leg units `q` `[accounts, assets]` with markets `active` `[assets]` open."""
    acc = st.acc
    level = st.wallet + jnp.sum(q * (acc.maint_amount - acc.side * acc.entry), -1)
    holds = q > 0
    live = jnp.any(holds, -1) & jnp.all(~holds | (active > 0), -1)
    return Lines(level, live)


def excess(st: AccountStep, ln: Lines, q, price, par: bool = False) -> jnp.ndarray:
    """Equity minus maintenance `[accounts]` (USD) of legs `q` at marks `price` `[assets]`."""
    return ln.level + jnp.sum(q * (st.acc.side - rates(st)) * price, -1) + collateral_value(st, price, par)


def under_water(st: AccountStep, q, price, active, par: bool = False) -> jnp.ndarray:
    """Accounts `[accounts]` bool holding a leg, with every leg's market open (`active`
    `[assets]`), whose equity is at or below maintenance at marks `price` `[assets]` (USD)."""
    ln = lines(st, q, active)
    return ln.live & (excess(st, ln, q, price, par) <= 0)


def leg_sums(x, side) -> jnp.ndarray:
    """Legs `x` `[accounts, assets]` summed per asset and side of `side`: `[assets, 2]`."""
    return jnp.stack([jnp.sum(jnp.where(side > 0, x, 0.0), 0), jnp.sum(jnp.where(side < 0, x, 0.0), 0)], -1)


class Pending(NamedTuple):
    """The accounts a step's rounds liquidated so far, settled after the last round
    (`settle`): hit, caused (by the depeg) `[accounts]` bool; round `[accounts]` int32, the
    round that hit; coll `[accounts]` USD, the collateral's margin value at that round's marks;
    fills `[rounds, assets, 2]` USD, each round's fill of long and short legs."""

    hit: jnp.ndarray
    caused: jnp.ndarray
    round: jnp.ndarray
    coll: jnp.ndarray
    fills: jnp.ndarray


def pending(q, rounds: int) -> Pending:
    """No account hit yet; q: leg units `[accounts, assets]`; rounds: the step's most rounds."""
    no = jnp.zeros(q.shape[:1], bool)
    fills = jnp.zeros((rounds, q.shape[1], 2), q.dtype)
    return Pending(no, no, jnp.zeros(q.shape[:1], jnp.int32), jnp.zeros(q.shape[:1], q.dtype), fills)


def hits(st: AccountStep, ln: Lines, q, pend: Pending, price) -> tuple:
    """This round's new hits at marks `price` `[assets]` (USD): (new `[accounts]` bool, caused
    `[accounts]` bool, their units per asset and side `[assets, 2]`, collateral value
    `[accounts]` USD)."""
    coll = collateral_value(st, price)
    ex = excess(st, ln, q, price)
    new = ln.live & ~pend.hit & (ex <= 0)
    caused = jnp.zeros_like(new)
    if st.cp is not None:
        caused = new & (ex - coll + collateral_value(st, price, par=True) > 0)
    return new, caused, leg_sums(jnp.where(new[:, None], q, 0.0), st.acc.side), coll


def record(pend: Pending, index, new, caused, fill, coll) -> Pending:
    """`pend` with round `index`'s new hits `new`, `caused` `[accounts]`, filled at `fill`
    `[assets, 2]` (USD, long legs then short legs per asset), collateral valued at `coll`."""
    return Pending(
        hit=pend.hit | new,
        caused=pend.caused | caused,
        round=jnp.where(new, index, pend.round),
        coll=jnp.where(new, coll, pend.coll),
        fills=pend.fills.at[index].set(fill),
    )


class Settled(NamedTuple):
    """A step's account liquidations: quantity `[accounts, assets]` after them; liquidated,
    shortfall: `[assets, 2]` USD; trader_loss, counterparty, fund_inflow: `[]` USD; tally."""

    quantity: jnp.ndarray
    liquidated: jnp.ndarray
    shortfall: jnp.ndarray
    trader_loss: jnp.ndarray
    counterparty: jnp.ndarray
    fund_inflow: jnp.ndarray
    tally: tally.Tally


def settle(st: AccountStep, q, pend: Pending, t: tally.Tally) -> Settled:
    """Close the accounts `pend.hit` whole at their fills: the accounting of the module
    docstring. q: leg units `[accounts, assets]`; t: the step's tally so far."""
    acc, hit = st.acc, pend.hit
    s, e = acc.side, acc.entry
    assets = jnp.arange(q.shape[1])
    fill = pend.fills[pend.round[:, None], assets, jnp.where(s > 0, 0, 1)]  # [accounts, assets]
    dq = jnp.where(hit[:, None], q, 0.0)
    at_fill = dq * fill
    pnl = jnp.sum(s * (at_fill - dq * e), -1)
    equity = st.wallet + pend.coll + pnl
    short = jnp.where(hit, jnp.maximum(-equity, 0.0), 0.0)
    size = jnp.sum(at_fill, -1)
    share = at_fill / jnp.where(size > 0, size, 1.0)[:, None]
    loss = jnp.where(hit, st.margin0, 0.0)
    weight = jnp.where(hit, acc.weight, 0.0)
    t = tally.liquidations(
        t,
        jnp.sum(dq * e, -1),
        loss,
        st.weights,
        jnp.sum(st.per_unit * dq, 0),
        jnp.where(hit, loss / jnp.where(weight > 0, weight, 1.0), 0.0),
        tally.CROSS,
    )
    t = t._replace(
        accounts=t.accounts + jnp.sum(weight),
        account_assets=t.account_assets + jnp.sum(jnp.where(dq > 0, weight[:, None], 0.0), 0),
        collateral_caused=t.collateral_caused + jnp.sum(jnp.where(pend.caused, size, 0.0)),
        markdown=t.markdown + jnp.sum(jnp.where(hit, st.margin0 - st.wallet - pend.coll, 0.0)),
    )
    return Settled(
        quantity=q - dq,
        liquidated=leg_sums(at_fill, s),
        shortfall=leg_sums(short[:, None] * share, s),
        trader_loss=jnp.sum(loss),
        counterparty=-jnp.sum(pnl),
        fund_inflow=jnp.sum(jnp.where(hit, jnp.maximum(equity, 0.0), 0.0)),
        tally=t,
    )


def adl_legs(st: AccountStep, q, price) -> Opposite:
    """The legs `q` `[accounts, assets]` as ADL sees them, transposed to `[assets, accounts]`,
    at marks `price` `[assets]` (USD): a leg's profit, scored by its profit over its account's
    margin at t0 times the account's effective leverage (notional over equity)."""
    acc = st.acc
    profit = jnp.maximum(acc.side * q * (price - acc.entry), 0.0)
    equity = st.wallet + collateral_value(st, price) + jnp.sum(acc.side * q * (price - acc.entry), -1)
    notional = jnp.sum(q * price, -1)
    safe = lambda x: jnp.where(x > 0, x, 1.0)
    score = jnp.where(
        profit > 0, profit / safe(st.margin0)[:, None] * (notional / safe(equity))[:, None], 0.0
    )
    return Opposite(profit.T, score.T, acc.side.T, q.T, lambda x: leg_sums(x.T, acc.side))
