"""Stop orders on the ladder kernel (`engine.model.ladder`: rung groups of their own, one per side,
keyed by the trigger price) against the dense general cascade and the NumPy reference on the same
draws, float64.

Seeded random books (tests/model/test_ladder.py: several tiers, both sides, ties, breakers, both
ADL settings) with stop orders of both sides on both assets, in a crash and in a rally, with
voluntary closing (accounts beside stops: tests/model/test_account_book.py): every per-path output equals the dense kernel's to
`PARITY_RTOL` on the paths the ladder does not hand over, stops trigger on both sides, and money
is conserved. A short stop that a jump carries past its own liquidation price is liquidated by
the dense kernel, not triggered: the ladder hands that path over, and the run's numbers are the
dense run's.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from engine.config import forms
from engine.config.schema import Config
from engine.model import ladder
from engine.model.ladder_kernel import FALLBACK_NEVER
from engine.sim import reference
from engine.sim.rollout import rollout
from engine.sim.simulate import simulate
from tests.conftest import small_dict
from tests.helpers import PARITY_RTOL, UNITLESS, assert_close, engine_draws, usd_scale
from tests.model.test_ladder import on_ladder, random_book

# BTC starts at 100,000 and SOL at 200 (tests/conftest.py); ties at 95,000
STOPS = [
    {"asset": "BTC", "side": "long", "price": 97_000.0, "notional_usd": 4e8},
    {"asset": "BTC", "side": "long", "price": 95_000.0, "notional_usd": 2e8},
    {"asset": "BTC", "side": "long", "price": 95_000.0, "notional_usd": 1e8},
    {"asset": "BTC", "side": "long", "price": 90_000.0, "notional_usd": 3e8},
    {"asset": "BTC", "side": "short", "price": 103_000.0, "notional_usd": 2e8},
    {"asset": "BTC", "side": "short", "price": 106_000.0, "notional_usd": 5e8},
    {"asset": "SOL", "side": "short", "price": 205.0, "notional_usd": 5e7},
    {"asset": "SOL", "side": "long", "price": 190.0, "notional_usd": 5e7},
    {"asset": "SOL", "side": "long", "price": 185.0, "notional_usd": 8e7},
]
# name -> (random book seed, headline shock, [market.derisk] or None)
CASES = {
    "crash": (0, -0.1, None),
    "closing_rally": (3, 0.08, {"vol_rate_per_day": 3.0, "loss_rate_per_day": 20.0}),
}


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def with_stops(cfg: Config, shock: float, derisk: dict | None = None) -> Config:
    d = cfg.model_dump()
    d["book"]["stops"] = STOPS
    d["scenario"]["shock"] = shock
    if derisk:
        d["market"]["derisk"] = derisk
    return Config.model_validate(d)


def compare_unflagged(out: dict, expected: dict, cfg: Config, what: str) -> np.ndarray:
    """Assert the paths the ladder did not hand over equal `expected`'s; returns the flags."""
    flagged = out.pop("fallback_step") < FALLBACK_NEVER
    # (small funds: ADL acts on most paths, and a rebound that reaches a closed cohort hands
    # its path over with or without stops)
    assert flagged.mean() <= 0.75, f"{what}: {flagged.sum()} of {flagged.size} paths handed over"
    for name, value in expected.items():
        scale = 1.0 if name in UNITLESS else usd_scale(cfg)
        assert_close(out[name][~flagged], np.asarray(value)[~flagged], PARITY_RTOL, scale, f"{what}: {name}")
    return flagged


@pytest.mark.parametrize("case", CASES)
def test_stop_orders_on_the_ladder_match_the_dense_kernel_and_the_reference(case):
    seed, shock, derisk = CASES[case]
    cfg = with_stops(random_book(seed), shock, derisk)
    params, static, dense_static = on_ladder(cfg)
    assert static.stops and dense_static.ladder == 0 and not dense_static.whole_only
    n = cfg.run.n_paths
    out = jax.device_get(rollout(params, seed, 0, n, static=static, n_paths=n)[0])
    den = jax.device_get(rollout(params, seed, 0, n, static=dense_static, n_paths=n)[0])
    flagged = compare_unflagged(dict(out), den, cfg, f"{case} ladder vs dense")
    draws = engine_draws(params, static, seed, n)
    ref = reference.run_paths(reference.to_numpy(params), dense_static, n, draws)
    compare_unflagged(dict(out), ref, cfg, f"{case} ladder vs reference")
    # the stops of the move's side triggered, and so did liquidations
    stops = den["stop_notional"][~flagged]
    side = 0 if shock < 0 else 1
    assert np.all(stops[..., side].sum(-1) > 0), f"{case}: some path triggered no stop"
    assert np.any(den["liquidated_total"][~flagged] > 0)
    assert_close(
        out["trader_loss"],
        out["counterparty_gain"] + out["fund_inflow"] - out["shortfall"],
        PARITY_RTOL,
        usd_scale(cfg),
        f"{case}: trader loss = counterparty gain + fund inflow - shortfall",
    )


def test_a_short_stop_jumped_past_its_liquidation_price_is_handed_to_the_dense_kernel():
    """SOL's short stop at 205 has its bankruptcy price at 410 and its liquidation price near
    405: a rally of e^0.75 (200 -> 423) in one step reaches both in one round, where the dense
    kernel liquidates it. The ladder flags those paths; the run equals the dense run."""
    d = small_dict(
        run={"n_paths": 16, "seed": 2, "steps": 12, "fan_points": 4, "tipping_paths": 0, "dtype": "float64"},
        scenario={"shock": 0.75, "shock_start": 4, "shock_steps": 1},
    )
    d["book"] = {**d["book"], "stops": STOPS}
    cfg = Config.model_validate(d)
    lad = simulate(cfg.model_copy(update={"run": cfg.run.model_copy(update={"kernel": "ladder"})}))
    den = simulate(cfg.model_copy(update={"run": cfg.run.model_copy(update={"kernel": "dense"})}))
    assert float(lad["n_dense_fallback"].max()) == 16
    for name in ("liquidated_total", "stop_notional", "trader_loss", "insurance_fund_draw"):
        assert_close(lad[name], den[name], PARITY_RTOL, usd_scale(cfg), name)


def test_stop_orders_have_rung_groups_of_their_own():
    """Two groups per base rate, then the long and the short stops, each sorted by trigger price
    and holding every stop order of its asset and side; the plan names the ladder."""
    cfg = with_stops(random_book(0), -0.1)
    params, static, _ = on_ladder(cfg)
    assert forms.blockers(static, [cfg]) == [] and forms.form(static) == "ladder"
    lad = jax.device_get(jax.jit(ladder.build_ladder, static_argnums=2)(params.book, params.policy, static))
    rates = static.ladder
    assert lad.u.shape[0] == 2 and lad.start.shape[1] == ladder.n_groups(static) == 2 * rates + 2
    np.testing.assert_array_equal(lad.stop[0], np.arange(2 * rates + 2) >= 2 * rates)
    for a, asset in enumerate(("BTC", "SOL")):
        for g, side in ((2 * rates, "long"), (2 * rates + 1, "short")):
            s = 1.0 if side == "long" else -1.0
            want = sorted(-s * o["price"] for o in STOPS if o["asset"] == asset and o["side"] == side)
            keys = lad.u[a, lad.start[a, g] : lad.end[a, g]]
            np.testing.assert_allclose(keys, want)
            assert lad.mmr[a, g] == 0.0 and lad.side[a, g] == s
