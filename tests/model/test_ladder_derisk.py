"""Voluntary closing on the ladder kernel (`engine.model.derisk.shrink`, `SimState.held`) against
the dense kernel on the same draws.

float64, seeded random books of tests/model/test_ladder.py (2 assets, 1-4 tiers, both sides,
1,440-4,800 cohorts per asset) with closing rates high enough that holders close a large share
before and after the shock, under policies that make halts, bands, dynamic margin, the leverage
cap both ways, the backstop and both ADL rules act: every per-path output of the ladder
(`voluntary_closed`, `open_interest_decline_forced` and the tally by leverage and margin mode
included) equals the dense kernel's to `PARITY_RTOL`. Paths that need ADL are handed to the dense
kernel and flagged; with ADL off none is. Money is conserved on every ladder path, and a path's
state holds the share per side, not a quantity per cohort. Cross-margin accounts beside the
isolated cohorts: one book of tests/model/test_account_book.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.config.schema import Config
from engine.model import kernel
from engine.model.ladder_kernel import FALLBACK_NEVER
from engine.sim.rollout import rollout
from tests.helpers import PARITY_RTOL, UNITLESS, assert_close, usd_scale
from tests.model import test_account_book as accounts
from tests.model.test_ladder import compare, on_ladder, random_book

# per day: a log loss of 0.1 closes about 7% of a side per 5-minute step
RATES = {"vol_rate_per_day": 50.0, "loss_rate_per_day": 200.0}
HALT = {"kind": "halt", "threshold": 0.03, "window": 4, "duration": 2}
BAND = {"kind": "band", "band": 0.01}
# name -> (seed of the random book, policy over its own)
CASES = {
    "halt_dynamic_margin_reduce": (
        0,
        {
            "adl_rule": "off",
            "breaker": HALT,
            "dynamic_margin": 2.0,
            "leverage_cap": 10.0,
            "leverage_cap_mode": "reduce_size",
        },
    ),
    "band_add_margin_backstop": (
        1,
        {
            "adl_rule": "off",
            "breaker": BAND,
            "leverage_cap": 25.0,
            "leverage_cap_mode": "add_margin",
            "backstop_capacity_usd": 2e9,
        },
    ),
    # funds that some paths exhaust (5 and 1 of 24), so that ADL hands those to the dense kernel
    "queue": (2, {"adl_rule": "queue", "insurance_fund_usd": 3e8, "breaker": {"kind": "none"}}),
    "pro_rata_halt": (4, {"adl_rule": "pro_rata", "insurance_fund_usd": 1e7, "breaker": HALT}),
}


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def closing_book(seed: int, policy: dict) -> Config:
    """`random_book(seed)` with `[market.derisk]` = `RATES` and `policy` over its own."""
    d = random_book(seed).model_dump()
    d["market"]["derisk"] = RATES
    d["policy"] |= policy
    return Config.model_validate(d)


def assert_conserved(out: dict, scale: float, what: str) -> None:
    """trader loss = counterparty gain + fund inflow - shortfall on every path (holders'
    closing touches no part of the waterfall)."""
    rhs = out["counterparty_gain"] + out["fund_inflow"] - out["shortfall"]
    assert_close(out["trader_loss"], rhs, PARITY_RTOL, scale, f"{what}: money")


@pytest.mark.parametrize("case", list(CASES))
def test_closing_on_the_ladder_matches_the_dense_kernel(case):
    seed, policy = CASES[case]
    cfg = closing_book(seed, policy)
    params, static, dense_static = on_ladder(cfg)
    assert static.derisk
    n = cfg.run.n_paths
    out = jax.device_get(rollout(params, seed, 0, n, static=static, n_paths=n)[0])
    flagged = out.pop("fallback_step") < FALLBACK_NEVER
    den = jax.device_get(rollout(params, seed, 0, n, static=dense_static, n_paths=n)[0])
    compare(out, den, cfg, f"{case} ({static.n_cohorts} cohorts per asset)")
    assert_conserved(out, usd_scale(cfg), case)
    # closing mattered: every path closed, and it moved open interest as much as liquidation did
    closed, liquidated = den["voluntary_closed"].sum((1, 2)), den["liquidated_total"]
    assert np.all(closed > 0) and np.any(liquidated > 0)
    assert np.sum(closed) > 0.1 * np.sum(liquidated), (np.sum(closed), np.sum(liquidated))
    assert np.all(den["open_interest_decline"] > den["open_interest_decline_forced"])
    # only paths with a deficit for ADL are handed over, and with an ADL rule some are
    deficit = (den["adl_absorbed"] + den["bad_debt"]) > 0
    assert not np.any(flagged & ~deficit), f"{case}: paths handed over without a deficit"
    if policy["adl_rule"] == "off":
        assert not flagged.any(), f"{case}: paths handed over with ADL off"
    else:
        assert flagged.any(), f"{case}: no path needed ADL, the hand-over was not exercised"
    if "breaker" in policy and policy["breaker"]["kind"] == "halt":
        assert np.any(den["halted_steps"] > 0), f"{case}: no halt"


def test_accounts_beside_closing_match_the_dense_kernel():
    """Cross-margin accounts (not closed voluntarily) with the isolated cohorts closing: the
    accounts' tally adds to the steps' isolated one."""
    cfg, params, lad, dense = accounts.book(accounts.VARIANTS["halt_dynamic_margin"], 0)
    mp = params.market
    params = params._replace(
        market=mp._replace(
            derisk_vol=jnp.full_like(mp.derisk_vol, RATES["vol_rate_per_day"]),
            derisk_loss=jnp.full_like(mp.derisk_loss, RATES["loss_rate_per_day"]),
        )
    )
    lad, dense = (dataclasses.replace(s, derisk=True) for s in (lad, dense))
    out, den = accounts.run(params, lad, 0), accounts.run(params, dense, 0)
    assert not np.any(out.pop("fallback_step") < FALLBACK_NEVER)
    for name, value in den.items():
        scale = 1.0 if name in UNITLESS else usd_scale(cfg) + 1e3 * accounts.N_ACCOUNTS
        assert_close(out[name], value, PARITY_RTOL, scale, f"accounts: {name}")
    assert np.all(den["voluntary_closed"].sum((1, 2)) > 0)
    assert np.any(den["accounts_liquidated"] > 0)
    assert np.any(den["liquidated_entry_by_mode"][:, 0] > 0), "no isolated cohort liquidated"


def test_a_paths_state_holds_a_share_per_side_not_per_cohort():
    params, static, _ = on_ladder(closing_book(0, CASES["halt_dynamic_margin_reduce"][1]))
    state = jax.jit(kernel.init_state, static_argnums=1)(params, static)
    np.testing.assert_array_equal(state.held, np.ones((static.n_assets, 2)))
    sizes = [np.size(v) for v in jax.tree_util.tree_leaves(state)]
    assert state.quantity is None and max(sizes) < static.n_cohorts, sizes
