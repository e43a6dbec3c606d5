"""What each path reports, with units and bins: the single list the reductions and cube use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp

from engine.model import accounts
from engine.model import bins as B
from engine.model.margin import liquidation_price
from engine.model.params import JUMP_MAX, Params, Static
from engine.model.policies import cap_leverage, maintenance_rate
from engine.model.stages import SimState


@dataclass(frozen=True)
class Output:
    name: str
    dims: tuple[str, ...]  # trailing dims after the path axis
    units: str
    long_name: str
    bins: Callable[[Static], B.Bins]
    loss: bool = False  # gets es99_<name>


OUTPUTS: tuple[Output, ...] = (
    Output(
        "liquidated_notional",
        ("asset", "side"),
        "USD",
        "notional liquidated at fill price",
        lambda s: B.usd(),
        True,
    ),
    Output(
        "liquidated_total", (), "USD", "notional liquidated, all assets and sides", lambda s: B.usd(), True
    ),
    Output(
        "max_drawdown",
        ("asset",),
        "1",
        "maximum peak-to-trough fall of the mark price",
        lambda s: B.fraction(),
    ),
    Output(
        "insurance_fund_draw", (), "USD", "insurance fund paid out for shortfalls", lambda s: B.usd(), True
    ),
    Output(
        "adl_notional",
        (),
        "USD",
        "notional of positions closed by auto-deleveraging",
        lambda s: B.usd(),
        True,
    ),
    Output(
        "adl_absorbed", (), "USD", "profit given up by auto-deleveraged positions", lambda s: B.usd(), True
    ),
    Output("bad_debt", (), "USD", "deficit left after fund and ADL", lambda s: B.usd(), True),
    Output("trader_loss", (), "USD", "margin lost by liquidated traders", lambda s: B.usd(), True),
    Output("shortfall", (), "USD", "liquidation losses beyond posted margin", lambda s: B.usd(), True),
    Output(
        "fund_inflow", (), "USD", "leftover margin and fees paid into the insurance fund", lambda s: B.usd()
    ),
    Output(
        "counterparty_gain",
        (),
        "USD",
        "gain of the fills' other side relative to liquidated entries",
        lambda s: B.usd(),
    ),
    Output("backstop_pnl", (), "USD", "backstop vault profit, marked at the final price", lambda s: B.usd()),
    Output("halted_steps", ("asset",), "1", "steps with trading halted", lambda s: B.count(s.steps)),
    Output(
        "cascade_rounds",
        (),
        "1",
        "most cascade rounds with liquidations in one step",
        lambda s: B.count(s.rounds),
    ),
    Output(
        "residual_notional",
        (),
        "USD",
        "largest notional left crossing when the cascade rounds ran out",
        lambda s: B.usd(),
    ),
    Output(
        "deferred_notional",
        (),
        "USD",
        "notional beyond its liquidation price at the end (queued, not executed)",
        lambda s: B.usd(),
    ),
    Output(
        "open_interest_decline",
        ("asset",),
        "1",
        "1 - final open interest (USD) / initial (after the leverage cap)",
        lambda s: B.ratio(),
    ),
    Output(
        "open_interest_decline_forced",
        ("asset",),
        "1",
        "1 - (final open interest + units closed by holders at the final price) / initial: "
        "the decline had holders closed nothing (liquidations, ADL and the price change)",
        lambda s: B.ratio(),
    ),
    Output(
        "voluntary_closed",
        ("asset", "side"),
        "USD",
        "notional closed by holders (voluntary closing) at fill price",
        lambda s: B.usd(),
    ),
    Output(
        "stop_notional",
        ("asset", "side"),
        "USD",
        "stop orders triggered, notional at fill",
        lambda s: B.usd(),
    ),
    Output(
        "positions_liquidated",
        ("asset",),
        "1",
        "positions liquidated (cross legs included; in part: by the share of units)",
        lambda s: B.usd(),
    ),
    Output("accounts_liquidated", (), "1", "cross-margin accounts liquidated", lambda s: B.usd()),
    Output(
        "accounts_liquidated_by_asset",
        ("asset",),
        "1",
        "cross-margin accounts liquidated with a leg in the asset",
        lambda s: B.usd(),
    ),
    Output(
        "liquidated_entry_by_leverage",
        ("leverage",),
        "USD",
        "notional liquidated at entry price, by leverage at t0 (account leverage for cross)",
        lambda s: B.usd(),
    ),
    Output(
        "trader_loss_by_leverage", ("leverage",), "USD", "trader loss by leverage at t0", lambda s: B.usd()
    ),
    Output(
        "liquidated_entry_by_mode",
        ("margin_mode",),
        "USD",
        "notional liquidated at entry price, by margin mode",
        lambda s: B.usd(),
    ),
    Output("trader_loss_by_mode", ("margin_mode",), "USD", "trader loss by margin mode", lambda s: B.usd()),
    Output(
        "largest_account_loss",
        (),
        "USD",
        "largest loss of one liquidated account (an isolated position counts as one)",
        lambda s: B.usd(),
        True,
    ),
    Output(
        "collateral_liquidated",
        (),
        "USD",
        "notional at fill of accounts that collateral at par would not have liquidated",
        lambda s: B.usd(),
        True,
    ),
    Output(
        "collateral_markdown",
        (),
        "USD",
        "fall in margin value of liquidated accounts' collateral since t0",
        lambda s: B.usd(),
    ),
)
# Per-point counts of paths where a static limit of the kernel bit (cube variables, int32).
DIAGNOSTICS = {
    "n_cascade_unconverged": "paths whose in-step cascade ran out of rounds (residual_notional > 0)",
    "n_jump_truncated": f"paths with a step of more than {JUMP_MAX} jumps, counted as {JUMP_MAX}",
}


def extract(state: SimState, params: Params, static: Static) -> dict[str, jnp.ndarray]:
    """Per-path outputs of one path's final state (shapes as in `OUTPUTS`), dense book, its
    liquidations tallied (`engine.model.skeleton.BookForm.tally`)."""
    mp, book = params.market, params.book
    fair = (mp.price0 * jnp.exp(state.x_fair + state.x_trans))[:, None]
    # at the maintenance rate in force for the next step (dynamic margin included)
    mmr = maintenance_rate(book.mmr, jnp.sqrt(state.variance), mp.sigma0, params.policy)
    p_liq = liquidation_price(book.side, state.bankrupt, mmr, book.maint_amount)
    deferred = (state.quantity > 0) & (book.side * (fair - p_liq) <= 0)
    units = jnp.sum(state.quantity, -1)
    late = jnp.sum(jnp.where(deferred, state.quantity * fair, 0.0))
    if params.accounts is not None:
        sigma = jnp.sqrt(state.variance)
        st = accounts.prepare(params, state.gap, sigma)
        under = accounts.under_water(st, state.accounts, fair[:, 0], jnp.ones_like(units))
        units = units + jnp.sum(state.accounts, 0)
        late = late + jnp.sum(jnp.where(under[:, None], state.accounts * fair[:, 0], 0.0))
    return assemble(state, params, units, late)


def assemble(state: SimState, params: Params, units, deferred) -> dict[str, jnp.ndarray]:
    """The outputs of a final state whose book the kernel form has summed: `units` `[assets]`
    still open, `deferred` `[]` USD notional beyond its liquidation price at the fair price."""
    t, mp, book = state.totals, params.market, params.book
    price = mp.price0 * jnp.exp(state.x_mark)
    # against the book after the leverage cap, so the cut made at t0 is not a "decline"
    units0 = jnp.sum(cap_leverage(book, params.policy)[0], -1)
    if params.accounts is not None:
        units0 = units0 + jnp.sum(accounts.capped(params.accounts, params.policy)[0], 0)
    oi0 = units0 * mp.price0
    oi = units * price
    decline = 1.0 - oi / jnp.where(oi0 > 0, oi0, 1.0)
    if t.voluntary is None:  # nobody closes voluntarily: every decline is forced
        voluntary, forced = jnp.zeros_like(t.liquidated), decline
    else:
        voluntary = t.voluntary
        forced = 1.0 - (units + t.voluntary_units) * price / jnp.where(oi0 > 0, oi0, 1.0)
    k = t.tally
    return {
        "liquidated_notional": t.liquidated,
        "liquidated_total": jnp.sum(t.liquidated),
        "max_drawdown": t.max_drawdown,
        "insurance_fund_draw": t.fund_draw,
        "adl_notional": t.adl_notional,
        "adl_absorbed": t.adl_absorbed,
        "bad_debt": t.bad_debt,
        "trader_loss": t.trader_loss,
        "shortfall": t.shortfall,
        "fund_inflow": t.fund_inflow,
        "counterparty_gain": t.counterparty,
        "backstop_pnl": jnp.sum(state.backstop_qty * price) + state.backstop_cash,
        "halted_steps": t.halted_steps,
        "cascade_rounds": t.max_rounds.astype(price.dtype),
        "residual_notional": t.max_residual,
        "deferred_notional": deferred,
        "open_interest_decline": decline,
        "open_interest_decline_forced": forced,
        "voluntary_closed": voluntary,
        "stop_notional": k.stop_notional,
        "positions_liquidated": k.positions,
        "accounts_liquidated": k.accounts,
        "accounts_liquidated_by_asset": k.account_assets,
        "liquidated_entry_by_leverage": k.by_leverage[0],
        "trader_loss_by_leverage": k.by_leverage[1],
        "liquidated_entry_by_mode": k.by_mode[0],
        "trader_loss_by_mode": k.by_mode[1],
        "largest_account_loss": k.largest_loss,
        "collateral_liquidated": k.collateral_caused,
        "collateral_markdown": k.markdown,
        "nonfinite": t.nonfinite,
        "jump_truncated": t.jump_truncated,
    }
