"""A slow, obvious NumPy implementation of the model, written apart from the JAX kernel.

The equations are the ones stated in the docstrings of `engine.model.market`, `impact`,
`policies`, `cascade`, `waterfall` and `kernel`; this module implements them again with plain
loops over cascade rounds and steps, and with an explicit sort for the ADL queue (isolated
cohorts and account legs ranked by score, exact ties closed together and sharing the marginal
amount pro rata), the definition the kernel's bisection must reproduce. The tally, collateral
and cross-margin accounts (`engine.model.tally`, `collateral`, `accounts`) are in
`engine.sim.reference_accounts`; stop orders are here, in the cascade round.

Every array has a leading path axis `[paths, ...]`, so the same code is both the one-path
reference the tests compare `engine.model.kernel.step` with (`reference_step`) and the NumPy
baseline of `benchmarks/` (`simulate_paths`, vectorised over paths). It always computes in
float64. States and parameters use the kernel's containers (`SimState`, `Totals`, `Params`)
with NumPy leaves, so the two implementations can be compared field by field.

The module stays whole (over 450 lines) on purpose: it is the model written once more, and
a reader checks it against the model's equations from top to bottom in one file.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from engine.config.build import build
from engine.config.schema import Config
from engine.model.market import MAX_VARIANCE_MULT, Draws
from engine.model.params import Params, Static
from engine.model.stages import SimState, Totals
from engine.sim import reference_accounts as RA
from engine.sim.reference_accounts import per_side

LONG, SHORT = 0, 1  # column of the `[..., 2]` side axis


def to_numpy(params: Params) -> Params:
    """The same parameters with NumPy leaves, floats widened to float64."""
    host = jax.device_get(params)
    return jax.tree_util.tree_map(
        lambda x: (
            np.asarray(x, np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x)
        ),
        host,
    )


def capped_book(params: Params) -> tuple[np.ndarray, np.ndarray]:
    """Quantity and bankruptcy price `[assets, cohorts]` with the leverage cap applied."""
    pol, bk = params.policy, params.book
    lev = np.minimum(bk.leverage, pol.leverage_cap)
    if pol.cap_add_margin > 0.5:
        quantity = bk.quantity.copy()
    else:
        quantity = bk.quantity * lev / bk.leverage
    return quantity, bk.entry * (1.0 - bk.side / lev)


def init_state(params: Params, static: Static, n_paths: int) -> SimState:
    """State at t0 of `n_paths` identical paths, leverage cap applied."""
    mp, pol = params.market, params.policy
    n_a = static.n_assets
    quantity, bankrupt = capped_book(params)

    def paths(x, dtype=np.float64):
        return np.broadcast_to(np.asarray(x, dtype), (n_paths,) + np.shape(x)).copy()

    za, z = paths(np.zeros(n_a)), paths(0.0)
    totals = Totals(
        liquidated=paths(np.zeros((n_a, 2))),
        trader_loss=z.copy(),
        counterparty=z.copy(),
        fund_inflow=z.copy(),
        shortfall=z.copy(),
        fund_draw=z.copy(),
        adl_absorbed=z.copy(),
        adl_notional=z.copy(),
        bad_debt=z.copy(),
        halted_steps=za.copy(),
        max_rounds=paths(0, np.int64),
        max_residual=z.copy(),
        max_drawdown=za.copy(),
        nonfinite=paths(False, bool),
        jump_truncated=paths(False, bool),
        tally=RA.zero_tally(n_paths, n_a),
        voluntary=paths(np.zeros((n_a, 2))) if static.derisk else None,
        voluntary_units=za.copy() if static.derisk else None,
    )
    acc, n_c = params.accounts, static.n_collateral
    return SimState(
        x_fair=za.copy(),
        x_trans=za.copy(),
        x_mark=za.copy(),
        peak=za.copy(),
        variance=paths(mp.sigma_init**2),
        ring=paths(np.zeros((n_a, static.max_window))),
        halt_left=paths(np.zeros(n_a), np.int64),
        queue=za.copy(),
        quantity=paths(quantity),
        bankrupt=paths(bankrupt),
        fund=paths(pol.insurance_fund),
        deficit=paths(np.zeros((n_a, 2))),
        backstop_left=paths(pol.backstop_capacity),
        backstop_qty=za.copy(),
        backstop_cash=z.copy(),
        totals=totals,
        accounts=None if acc is None else paths(RA.capped_accounts(acc, pol)[0]),
        gap=None if params.collateral is None else paths(np.zeros(n_c)),
        # the kernel's whole-position form tallies a path's liquidations at its end
        liquidated_units=paths(np.zeros_like(quantity)) if static.whole_only and not static.relaxed else None,
    )


def impact(flow: np.ndarray, sigma: np.ndarray, mp) -> np.ndarray:
    """Log move `[paths, assets]` of cumulative net flow `[paths, assets]` (USD, + sells)."""
    liquidity = (mp.sigma0 / sigma) ** mp.depth_kappa
    out = np.empty_like(flow)
    for a in range(flow.shape[-1]):
        if mp.impact_law[a] == 1:
            daily_vol = sigma[:, a] * np.sqrt(mp.steps_per_day)
            volume = mp.volume[a] * liquidity[:, a]
            out[:, a] = (
                -np.sign(flow[:, a]) * mp.impact_y[a] * daily_vol * np.sqrt(np.abs(flow[:, a]) / volume)
            )
        else:
            out[:, a] = -flow[:, a] / (mp.depth[a] * liquidity[:, a])
    return out


def exogenous_return(d: Draws, sigma: np.ndarray, shock: np.ndarray, mp) -> np.ndarray:
    """Drift, correlated (Student-t) diffusion, jumps and scheduled shock `[paths, assets]`."""
    eps = d.z @ mp.chol.T
    if mp.tail_dof > 0:
        eps = eps * np.sqrt((mp.tail_dof - 2.0) / d.chi2)[:, None]
    n_jumps = np.sum(d.u_jump[:, None] > mp.jump_cdf[None, :], axis=1).astype(np.float64)[:, None]
    jump = n_jumps * mp.jump_mean + np.sqrt(n_jumps) * mp.jump_std * d.z_jump
    return mp.mu + sigma * eps + jump + shock


def liquidation_price(side, bankrupt, mmr, maint_amount):
    """Where equity s q (p - b) meets maintenance q (mmr p - a), solved for p (USD)."""
    return (bankrupt - side * maint_amount) / (1.0 - side * mmr)


def _stopped(side, q, dq, p, active, stop) -> np.ndarray:
    """Units `[paths, assets, cohorts]` closed by their stop order in a round: cohorts alive,
    not liquidating (`dq` 0), in an open market, whose stop `[assets, cohorts]` (USD; 0 long,
    inf short: none; None: no stops) the round's price `p` `[paths, assets, 1]` reached."""
    if stop is None:
        return np.zeros_like(q)
    return np.where(active[:, :, None] & (q > 0) & (dq == 0) & (side * (p - stop) <= 0), q, 0.0)


def cascade(
    q, b, flow, x_base, lo, hi, sigma, mmr, active, backstop_left, params: Params, rounds: int, accounts=None
):
    """The in-step cascade of `engine.model.cascade`, round by round, for all paths.

    q, b, mmr: `[paths, assets, cohorts]`; flow, x_base, lo, hi, sigma, active: `[paths,
    assets]`; backstop_left: `[paths]`; accounts: None, or (`reference_accounts.Accounts` of
    the step, leg units `[paths, accounts, assets]`). Returns a dict of the cascade's results
    (`legs`: the leg units after it, or None; `tally`: the step's `Tally`).
    """
    mp, bk = params.market, params.book
    s = bk.side
    n_p, n_a = flow.shape
    ac, legs = accounts if accounts is not None else (None, None)

    def mark_price(flow):
        return mp.price0 * np.exp(np.clip(x_base + impact(flow, sigma, mp), lo, hi))

    r = {
        "quantity": q.copy(),
        "bankrupt": b.copy(),
        "flow": flow.copy(),
        "backstop_left": backstop_left.copy(),
        "legs": None if legs is None else legs.copy(),
        "liquidated": np.zeros((n_p, n_a, 2)),
        "shortfall": np.zeros((n_p, n_a, 2)),
        "trader_loss": np.zeros(n_p),
        "counterparty": np.zeros(n_p),
        "fund_inflow": np.zeros(n_p),
        "backstop_qty": np.zeros((n_p, n_a)),
        "backstop_cash": np.zeros(n_p),
        "rounds": np.zeros(n_p, np.int64),
        "tally": RA.zero_tally(n_p, n_a),
    }
    for _ in range(rounds):
        if not _round(r, mark_price, mmr, active, params, ac):
            break  # a round that closes nothing changes nothing, nor would any later round

    p_end = mark_price(r["flow"])
    q, b = r["quantity"], r["bankrupt"]
    left = (
        active[:, :, None]
        & (q > 0)
        & (s * (p_end[:, :, None] - liquidation_price(s, b, mmr, bk.maint_amount)) <= 0)
    )
    r["residual"] = np.sum(np.where(left, q * p_end[:, :, None], 0.0), (1, 2))
    if ac is not None:
        under = RA.under_water(ac, r["legs"], p_end, active)
        r["residual"] += np.sum(np.where(under[..., None], r["legs"] * p_end[:, None, :], 0.0), (1, 2))
    return r


def _round(r: dict, mark_price, mmr, active, params: Params, ac) -> bool:
    """One round for all paths, `r` updated in place: the cohorts at or beyond their
    liquidation price, those whose stop is reached and the accounts under water at the
    round's price close; their orders move the price; fills split between the backstop and the
    market. Returns whether anything closed on some path."""
    mp, pol, bk = params.market, params.policy, params.book
    s, f, d = bk.side, pol.partial_fraction, pol.backstop_discount
    q, b = r["quantity"], r["bankrupt"]
    p = mark_price(r["flow"])[:, :, None]
    hit = active[:, :, None] & (q > 0) & (s * (p - liquidation_price(s, b, mmr, bk.maint_amount)) <= 0)
    partial = hit & (f < 1) & (s * q * (p - b) - mp.clearance_fee * f * q * p > 0)
    full = hit & ~partial
    dq = np.where(full, q, np.where(partial, f * q, 0.0))
    ds = _stopped(s, q, dq, p, active, bk.stop)
    units = per_side(dq + ds, s)  # [paths, assets, 2]
    closing = hit.any((1, 2)) | (ds > 0).any((1, 2))
    if ac is not None:
        hit_acc, caused = RA.hit(ac, r["legs"], p[:, :, 0], active)
        closing_legs = np.where(hit_acc[..., None], r["legs"], 0.0)
        units = units + per_side(np.swapaxes(closing_legs, 1, 2), ac.acc.side.T)
        closing = closing | hit_acc.any(-1)
    if not closing.any():
        return False

    net = units[..., 0] - units[..., 1]
    orders = p[:, :, 0] * net
    gross = np.sum(np.abs(orders), -1)
    taken = np.minimum(gross, r["backstop_left"])
    phi = np.zeros_like(gross)
    np.divide(taken, gross, out=phi, where=gross > 0)
    r["flow"] = r["flow"] + (1.0 - phi[:, None]) * orders
    p_next = mark_price(r["flow"])
    phi3 = phi[:, None, None]
    fill = phi3 * p * (1.0 - s * d) + (1.0 - phi3) * p_next[:, :, None]
    r["backstop_left"] = r["backstop_left"] - taken
    r["backstop_qty"] += phi[:, None] * net
    # the backstop pays the round's price less its discount for every unit it takes
    r["backstop_cash"] -= phi * np.sum(p[:, :, 0] * (net - d * units.sum(-1)), -1)
    r["rounds"] += closing
    _close_cohorts(r, dq, ds, full, partial, fill, params)
    if ac is not None:
        fill_legs = RA.fills(ac, phi, p[:, :, 0], p_next, d)
        closed, sums, r["tally"] = RA.settle(
            ac, r["legs"], hit_acc, caused, fill_legs, p[:, :, 0], r["tally"]
        )
        r["legs"] = r["legs"] - closed
        for name, x in sums.items():
            r[name] = r[name] + x
    return True


def _close_cohorts(r: dict, dq, ds, full, partial, fill, params: Params) -> None:
    """The accounting of a round's isolated cohorts (`engine.model.cascade`), `r` updated in
    place: dq, ds `[paths, assets, cohorts]` units liquidated and stopped; full, partial: the
    kind of each liquidation; fill: USD."""
    mp, bk = params.market, params.book
    s, e = bk.side, bk.entry
    q, b = r["quantity"], r["bankrupt"]
    equity = s * q * (fill - b)
    fee = mp.clearance_fee * dq * fill
    loss = np.where(full, s * q * (e - b), 0.0) + np.where(partial, s * dq * (e - fill) + fee, 0.0)
    r["trader_loss"] += loss.sum((1, 2))
    r["counterparty"] += np.sum(s * dq * (e - fill), (1, 2))
    r["fund_inflow"] += (np.where(full, np.maximum(equity, 0.0), 0.0) + np.where(partial, fee, 0.0)).sum(
        (1, 2)
    )
    r["shortfall"] += per_side(np.where(full, np.maximum(-equity, 0.0), 0.0), s)
    r["liquidated"] += per_side(dq * fill, s)
    t = r["tally"]
    t = t._replace(stop_notional=t.stop_notional + per_side(ds * fill, s))
    r["tally"] = RA.cohort_tally(t, params, capped_book(params)[0], dq, loss)
    rest = q - dq - ds
    # the remaining position keeps the equity less the fee: solve for its bankruptcy price
    r["bankrupt"] = np.where(partial, fill - s * (equity - fee) / np.where(rest > 0, rest, 1.0), b)
    r["quantity"] = np.where(full, 0.0, rest)


def adl_closures(profit, score, need, side, rule: int) -> np.ndarray:
    """Share of each cohort `[paths, assets, cohorts]` closed by ADL (0..1).

    profit, score: `[paths, assets, cohorts]`; need: `[paths, assets, 2]` USD to be covered by
    the longs (column 0) and the shorts (column 1). rule: 1 queue, 2 pro rata, 0 off.
    Queue: per asset and side, sort profitable cohorts by descending score; walking down the
    groups of exactly equal score, every group is closed whole until the profit of the groups
    so far covers the need (the group that completes it is closed whole too).
    """
    closed = np.zeros_like(profit)
    if rule == 0:
        return closed
    n_c = profit.shape[-1]
    for col, sd in ((LONG, 1.0), (SHORT, -1.0)):
        mine = (side == sd) & (profit > 0)
        need_c = need[..., col][..., None]
        if rule == 2:
            total = np.sum(np.where(mine, profit, 0.0), -1, keepdims=True)
            share = np.zeros_like(total)
            np.divide(np.minimum(need_c, total), total, out=share, where=total > 0)
            closed = np.where(mine, share, closed)
            continue
        key = np.where(mine, score, -np.inf)
        order = np.argsort(-key, axis=-1, kind="stable")
        k = np.take_along_axis(key, order, -1)
        held = np.cumsum(np.take_along_axis(np.where(mine, profit, 0.0), order, -1), -1)
        idx = np.broadcast_to(np.arange(n_c), k.shape)
        first = np.concatenate([np.ones(k.shape[:-1] + (1,), bool), k[..., 1:] != k[..., :-1]], -1)
        group_start = np.maximum.accumulate(np.where(first, idx, 0), -1)
        before = np.take_along_axis(
            held - np.take_along_axis(np.where(mine, profit, 0.0), order, -1), group_start, -1
        )  # profit of all better-ranked groups
        take = (k > -np.inf) & (before < need_c)
        sorted_closed = take.astype(np.float64)
        unsorted = np.empty_like(sorted_closed)
        np.put_along_axis(unsorted, order, sorted_closed, -1)
        closed = np.where(mine, unsorted, closed)
    return closed


def waterfall(st_fund, inflow, shortfall, q, b, price, params: Params, legs=None):
    """Fund, then ADL, then bad debt, for all paths. Returns a dict of the results.

    legs: None, or the account legs as ADL sees them (`reference_accounts.adl_legs`), which
    stand in one queue (or share) with the isolated cohorts; `accounts` of the result: their
    units `[paths, accounts, assets]` after ADL (None without).
    """
    s, e = params.book.side, params.book.entry
    rule = int(params.policy.adl_rule)
    fund = st_fund + inflow
    total = shortfall.sum((1, 2))
    draw = np.minimum(fund, total)
    unpaid = np.zeros_like(total)
    np.divide(total - draw, total, out=unpaid, where=total > 0)
    deficit = shortfall * unpaid[:, None, None]

    p = price[:, :, None]
    profit = np.maximum(s * q * (p - e), 0.0)
    # profit % of margin x notional / equity; per unit held, so equal cohorts tie exactly
    score = s * (p - e) / (e - b) * p / (p - b)
    units, side = q, s
    if legs is not None:
        profit, score, units = (np.concatenate([x, y], -1) for x, y in zip((profit, score, q), legs))
        side = np.concatenate([s, legs[3]], -1)
    need = deficit[..., ::-1]
    closed = adl_closures(profit, score, need, side, rule) * units
    covered = np.minimum(need, per_side(profit, side)) if rule > 0 else np.zeros_like(need)
    n_c = q.shape[-1]
    return {
        "fund": fund - draw,
        "draw": draw,
        "quantity": q - closed[..., :n_c],
        "accounts": None if legs is None else np.swapaxes(units - closed, 1, 2)[:, n_c:],
        "absorbed": covered.sum((1, 2)),
        "notional": np.sum(closed * p, (1, 2)),
        "bad_debt": (need - covered).sum((1, 2)),
    }


def _add_step(tot: Totals, c: dict, w: dict, halted, drawdown, nonfinite, truncated) -> Totals:
    """The totals after one more step: sums of the step's cascade (`c`) and waterfall (`w`)
    results, running maxima of rounds, residual and drawdown `[paths, assets]`, the
    non-finite and jump-truncation flags `[paths]`, and the step's tally."""
    return Totals(
        liquidated=tot.liquidated + c["liquidated"],
        trader_loss=tot.trader_loss + c["trader_loss"],
        counterparty=tot.counterparty + c["counterparty"],
        fund_inflow=tot.fund_inflow + c["fund_inflow"],
        shortfall=tot.shortfall + c["shortfall"].sum((1, 2)),
        fund_draw=tot.fund_draw + w["draw"],
        adl_absorbed=tot.adl_absorbed + w["absorbed"],
        adl_notional=tot.adl_notional + w["notional"],
        bad_debt=tot.bad_debt + w["bad_debt"],
        halted_steps=tot.halted_steps + halted,
        max_rounds=np.maximum(tot.max_rounds, c["rounds"]),
        max_residual=np.maximum(tot.max_residual, c["residual"]),
        max_drawdown=np.maximum(tot.max_drawdown, drawdown),
        nonfinite=tot.nonfinite | nonfinite,
        jump_truncated=tot.jump_truncated | truncated,
        tally=RA.add_tally(tot.tally, c["tally"]),
        voluntary=tot.voluntary,
        voluntary_units=tot.voluntary_units,
    )


def _move(st: SimState, d: Draws, t: int, shock, flow, params: Params, static: Static) -> dict:
    """Stages 1-2 of every path: the exogenous move, the breaker's limits, the flow into the
    cascade and the halt queue, the maintenance rates in force, the collateral's depeg gap
    `[paths, collateral]` (None without) and the accounts' `reference_accounts.Accounts`."""
    mp, pol = params.market, params.policy
    sigma = np.sqrt(st.variance)
    halted = st.halt_left > 0
    x_ref = st.ring[:, :, (t - int(pol.halt_window)) % static.max_window]
    lo = np.maximum(st.x_mark - pol.band, x_ref - pol.halt_threshold)
    hi = np.minimum(st.x_mark + pol.band, x_ref + pol.halt_threshold)
    excess = np.maximum(sigma / mp.sigma0 - 1.0, 0.0)
    gap = None
    if params.collateral is not None:
        gap = RA.next_gap(st.gap, d.u_depeg, params.schedule.depeg[t], params.collateral)
    return {
        "sigma": sigma,
        "x_fair": st.x_fair + exogenous_return(d, sigma, shock, mp),
        "x_trans": st.x_trans * mp.resilience,
        "halted": halted,
        "x_ref": x_ref,
        "lo": np.where(halted, st.x_mark, lo),
        "hi": np.where(halted, st.x_mark, hi),
        "flow0": np.where(halted, 0.0, flow + st.queue),
        "queue": np.where(halted, st.queue + flow, 0.0),
        "mmr": RA.maintenance_rate(params.book.mmr, excess[:, :, None], pol),
        "gap": gap,
        "accounts": None if params.accounts is None else RA.prepare(params, gap, excess),
    }


def derisk(st: SimState, m: dict, params: Params) -> tuple[SimState, np.ndarray]:
    """Voluntary closing at the start of the cascade stage (`engine.model.derisk`) for all
    paths, from the step's move `m` (`_move`): the state with the units left and the closing
    in its totals (notional at the fill marks, units), and the orders `[paths, assets]` (USD,
    + sells).

    Per side s the hazard is vol_rate max(0, sigma / sigma0 - 1) + loss_rate max(0, -s x_mark)
    with x_mark the mark at the start of the step; a cohort closes 1 - exp(-hazard / steps
    per day) of its units, nothing while halted; the orders meet the step's mark before any
    flow, within the breaker's limits, and fill there.
    """
    mp, s = params.market, params.book.side
    excess = np.maximum(m["sigma"] / mp.sigma0 - 1.0, 0.0)
    fraction = np.zeros_like(st.quantity)
    for sd, loss in ((1.0, -st.x_mark), (-1.0, st.x_mark)):
        hazard = mp.derisk_vol * excess + mp.derisk_loss * np.maximum(loss, 0.0)
        nu = np.where(m["halted"], 0.0, 1.0 - np.exp(-hazard / mp.steps_per_day))
        fraction = np.where(s == sd, nu[:, :, None], fraction)
    closed = st.quantity * fraction
    units = per_side(closed, s)
    price = mp.price0 * np.exp(np.clip(m["x_fair"] + m["x_trans"], m["lo"], m["hi"]))
    tot = st.totals._replace(
        voluntary=st.totals.voluntary + price[..., None] * units,
        voluntary_units=st.totals.voluntary_units + closed.sum(-1),
    )
    return st._replace(quantity=st.quantity - closed, totals=tot), price * (units[..., 0] - units[..., 1])


def step_paths(st: SimState, d: Draws, t: int, shock, flow, params: Params, static: Static) -> SimState:
    """One step of every path: `engine.model.kernel.step` with a leading path axis."""
    mp, pol = params.market, params.policy
    m = _move(st, d, t, shock, flow, params, static)
    halted, sigma, lo, hi, ac = m["halted"], m["sigma"], m["lo"], m["hi"], m["accounts"]
    if static.derisk:
        st, orders = derisk(st, m, params)
        m["flow0"] = m["flow0"] + orders
    c = cascade(
        st.quantity,
        st.bankrupt,
        m["flow0"],
        m["x_fair"] + m["x_trans"],
        lo,
        hi,
        sigma,
        m["mmr"],
        ~halted,
        st.backstop_left,
        params,
        static.rounds,
        None if ac is None else (ac, st.accounts),
    )
    dx = np.where(halted, 0.0, impact(c["flow"], sigma, mp))
    x_fair = m["x_fair"] + mp.permanent * dx
    x_trans = m["x_trans"] + (1.0 - mp.permanent) * dx
    target = x_fair + x_trans
    x_mark = np.clip(target, lo, hi)
    fires = ~halted & (np.abs(target - m["x_ref"]) > pol.halt_threshold)
    halt_left = np.where(fires, int(pol.halt_duration), np.maximum(st.halt_left - 1, 0))

    realised = x_mark - st.x_mark - mp.mu
    variance = (
        mp.sigma0**2 * (1.0 - mp.garch_alpha - mp.garch_beta)
        + mp.garch_alpha * realised**2
        + mp.garch_beta * st.variance
    )
    variance = np.minimum(variance, MAX_VARIANCE_MULT * mp.sigma0**2)
    ring = st.ring.copy()
    ring[:, :, t % static.max_window] = x_mark
    peak = np.maximum(st.peak, x_mark)

    price = mp.price0 * np.exp(x_mark)
    legs = None if ac is None else RA.adl_legs(ac, c["legs"], price)
    w = waterfall(
        st.fund, c["fund_inflow"], c["shortfall"], c["quantity"], c["bankrupt"], price, params, legs
    )
    finite = np.isfinite(x_mark).all(-1) & np.isfinite(w["fund"]) & np.isfinite(c["quantity"]).all((1, 2))
    drawdown = 1.0 - np.exp(x_mark - peak)
    totals = _add_step(st.totals, c, w, halted, drawdown, ~finite, d.u_jump > mp.jump_cdf_max)
    units = st.liquidated_units
    if units is not None:  # whole positions only: the step's tally is the path's end's
        units = units + (st.quantity - c["quantity"])
        totals = totals._replace(tally=st.totals.tally)
    return st._replace(
        liquidated_units=units,
        x_fair=x_fair,
        x_trans=x_trans,
        x_mark=x_mark,
        peak=peak,
        variance=variance,
        ring=ring,
        halt_left=halt_left,
        queue=m["queue"],
        quantity=w["quantity"],
        bankrupt=c["bankrupt"],
        fund=w["fund"],
        deficit=np.zeros_like(st.deficit),
        backstop_left=c["backstop_left"],
        backstop_qty=st.backstop_qty + c["backstop_qty"],
        backstop_cash=st.backstop_cash + c["backstop_cash"],
        totals=totals,
        accounts=w["accounts"],
        gap=m["gap"],
    )


def reference_step(
    state: SimState, draws: Draws, t: int, shock, flow, params_np: Params, static: Static
) -> SimState:
    """One step of one path (no path axis), mirroring `engine.model.kernel.step`.

    state, draws: one path's `SimState` and `Draws` (NumPy or JAX leaves); shock, flow:
    `[assets]` log shock and USD flow of step t; params_np: `to_numpy(params)`.
    """
    one = lambda x: np.asarray(x)[None]
    st = jax.tree_util.tree_map(
        lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x),
        jax.tree_util.tree_map(one, state),
    )
    d = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), jax.tree_util.tree_map(one, draws))
    out = step_paths(
        st, d, int(t), np.asarray(shock, np.float64), np.asarray(flow, np.float64), params_np, static
    )
    return jax.tree_util.tree_map(lambda x: x[0], out)


def extract(st: SimState, params: Params) -> dict[str, np.ndarray]:
    """Per-path outputs `{name: [paths, ...]}`, the names of `engine.model.outputs.extract`."""
    mp, bk, t, k = params.market, params.book, st.totals, st.totals.tally
    if st.liquidated_units is not None:
        margin = bk.side * st.liquidated_units * (bk.entry - st.bankrupt)
        k = RA.cohort_tally(k, params, capped_book(params)[0], st.liquidated_units, margin)
    price = mp.price0 * np.exp(st.x_mark)
    units0, units = np.sum(capped_book(params)[0], -1), np.sum(st.quantity, -1)
    fair = mp.price0 * np.exp(st.x_fair + st.x_trans)
    # at the maintenance rates in force for the next step (dynamic margin included)
    excess = np.maximum(np.sqrt(st.variance) / mp.sigma0 - 1.0, 0.0)
    mmr = RA.maintenance_rate(bk.mmr, excess[:, :, None], params.policy)
    p_liq = liquidation_price(bk.side, st.bankrupt, mmr, bk.maint_amount)
    beyond = (st.quantity > 0) & (bk.side * (fair[:, :, None] - p_liq) <= 0)
    deferred = np.sum(np.where(beyond, st.quantity * fair[:, :, None], 0.0), (1, 2))
    if params.accounts is not None:
        ac = RA.prepare(params, st.gap, excess)
        under = RA.under_water(ac, st.accounts, fair, np.ones_like(fair, bool))
        deferred = deferred + np.sum(np.where(under[..., None], st.accounts * fair[:, None, :], 0.0), (1, 2))
        units = units + st.accounts.sum(1)
        units0 = units0 + RA.capped_accounts(params.accounts, params.policy)[0].sum(0)
    oi0, oi = units0 * mp.price0, units * price
    closed = np.zeros_like(units) if t.voluntary_units is None else t.voluntary_units
    return {
        "liquidated_notional": t.liquidated,
        "liquidated_total": t.liquidated.sum((1, 2)),
        "max_drawdown": t.max_drawdown,
        "insurance_fund_draw": t.fund_draw,
        "adl_notional": t.adl_notional,
        "adl_absorbed": t.adl_absorbed,
        "bad_debt": t.bad_debt,
        "trader_loss": t.trader_loss,
        "shortfall": t.shortfall,
        "fund_inflow": t.fund_inflow,
        "counterparty_gain": t.counterparty,
        "backstop_pnl": np.sum(st.backstop_qty * price, -1) + st.backstop_cash,
        "halted_steps": t.halted_steps,
        "cascade_rounds": t.max_rounds.astype(np.float64),
        "residual_notional": t.max_residual,
        "deferred_notional": deferred,
        "open_interest_decline": 1.0 - oi / np.where(oi0 > 0, oi0, 1.0),
        # with the units holders closed put back: the decline had holders closed nothing
        "open_interest_decline_forced": 1.0 - (units + closed) * price / np.where(oi0 > 0, oi0, 1.0),
        "voluntary_closed": np.zeros_like(t.liquidated) if t.voluntary is None else t.voluntary,
        "stop_notional": k.stop_notional,
        "positions_liquidated": k.positions,
        "accounts_liquidated": k.accounts,
        "accounts_liquidated_by_asset": k.account_assets,
        "liquidated_entry_by_leverage": k.by_leverage[:, 0],
        "trader_loss_by_leverage": k.by_leverage[:, 1],
        "liquidated_entry_by_mode": k.by_mode[:, 0],
        "trader_loss_by_mode": k.by_mode[:, 1],
        "largest_account_loss": k.largest_loss,
        "collateral_liquidated": k.collateral_caused,
        "collateral_markdown": k.markdown,
        "nonfinite": t.nonfinite,
        "jump_truncated": t.jump_truncated,
    }


def run_paths(params_np: Params, static: Static, n_paths: int, draws_at: Callable[[int], Draws]) -> dict:
    """Simulate `n_paths` paths through all steps; `draws_at(t)` gives step t's `Draws`
    with a leading path axis. Returns per-path outputs (see `extract`)."""
    st = init_state(params_np, static, n_paths)
    sched = params_np.schedule
    for t in range(static.steps):
        st = step_paths(st, draws_at(t), t, sched.shock[t], sched.flow[t], params_np, static)
    return extract(st, params_np)


def numpy_draws(
    rng: np.random.Generator, n_paths: int, n_assets: int, tail_dof: float, n_collateral: int = 0
) -> Draws:
    """One step's random numbers for every path, distributed as `engine.model.market.draw` (and
    `depeg_draws` when there are `n_collateral` collateral assets)."""
    z = rng.standard_normal((n_paths, n_assets))
    chi2 = rng.chisquare(tail_dof, n_paths) if tail_dof > 0 else np.ones(n_paths)
    u_jump, z_jump = rng.random(n_paths), rng.standard_normal((n_paths, n_assets))
    u_depeg = rng.random((n_paths, n_collateral)) if n_collateral else None
    return Draws(z=z, chi2=chi2, u_jump=u_jump, z_jump=z_jump, u_depeg=u_depeg)


def simulate_paths(cfg: Config, n_paths: int, seed: int) -> dict[str, np.ndarray]:
    """Per-path outputs `{name: [n_paths, ...]}` of `cfg` with NumPy's own random numbers.

    The NumPy baseline: same model and distributions as the JAX engine, other random numbers
    (`numpy.random.default_rng(seed)`), float64, vectorised over paths.
    """
    params, static = build(cfg)
    p = to_numpy(params)
    rng = np.random.default_rng(seed)
    dof = float(p.market.tail_dof)
    n_a, n_c = static.n_assets, static.n_collateral
    return run_paths(p, static, n_paths, lambda t: numpy_draws(rng, n_paths, n_a, dof, n_c))
