"""Voluntary closing (`engine.model.derisk`, `[market.derisk]`): parity with the NumPy reference
in both dense cascade forms, off means bit for bit the old kernel, the analytic decay of a book
at a fixed loss, monotonicity in the rates, gradients of the relaxed kernel, the cube's and the
summary's figures, and the kernel forms that take it (the ladder's numbers:
tests/model/test_ladder_derisk.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.config import build, forms
from engine.config.errors import validated
from engine.fit.common import differentiable_outputs
from engine.model import kernel, market
from engine.report.summary import book_rows
from engine.sim import reference
from engine.sim.rollout import rollout
from engine.sim.simulate import simulate
from tests.conftest import SMALL, small_dict
from tests.helpers import (
    EXACT_RTOL,
    FD_RTOL,
    PARITY_RTOL,
    UNITLESS,
    assert_close,
    assert_steps_match,
    engine_draws,
    usd_scale,
)

N_PATHS, SEED = 4, 3
RATES = {"vol_rate_per_day": 4.0, "loss_rate_per_day": 10.0}


def config(derisk: dict | None, policy: dict | None = None, n_paths: int = N_PATHS, dtype: str = "float64"):
    """The small two-asset scenario with `[market.derisk]` = `derisk` (None: no table)."""
    mkt = dict(SMALL["market"]) | ({} if derisk is None else {"derisk": derisk})
    run = {
        "n_paths": n_paths,
        "seed": SEED,
        "steps": 24,
        "cascade_rounds": 6,
        "fan_points": 6,
        "dtype": dtype,
    }
    return validated(small_dict(run=run, market=mkt, policy={"insurance_fund_usd": 2e8, **(policy or {})}))


HALT = {"breaker": {"kind": "halt", "threshold": 0.03, "window": 4, "duration": 3}}
CASES = [
    ("general", {}),
    ("whole", {}),
    ("general", HALT),
    ("whole", HALT),
    ("general", {"partial_liquidation": 0.5}),
]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def built(form: str, policy: dict):
    cfg = config(RATES, policy)
    params, static = build.build(cfg)
    assert static.derisk
    return cfg, params, dataclasses.replace(static, whole_only=form == "whole")


@pytest.mark.parametrize(("form", "policy"), CASES[:2])
@pytest.mark.usefixtures("x64")
def test_step_matches_reference_every_step(form, policy):
    """Every step of two paths: the kernel's step and `reference_step` from the same state."""
    cfg, params, static = built(form, policy)
    units = float(np.max(params.book.quantity))

    def scale(name):
        if name in ("quantity", "totals.voluntary_units"):
            return units
        return usd_scale(cfg) if name.startswith("totals.") else 1.0

    assert_steps_match(params, static, SEED, N_PATHS, scale, form)


@pytest.mark.parametrize(("form", "policy"), CASES)
@pytest.mark.usefixtures("x64")
def test_rollout_matches_reference_paths(form, policy):
    """Whole paths, both cascade forms, with and without a halt, and partial liquidation."""
    cfg, params, static = built(form, policy)
    out = jax.device_get(rollout(params, SEED, 0, N_PATHS, static=static, n_paths=N_PATHS)[0])
    ref = reference.run_paths(
        reference.to_numpy(params), static, N_PATHS, engine_draws(params, static, SEED, N_PATHS)
    )
    assert set(out) == set(ref)
    for name in ref:
        scale = 1.0 if name in UNITLESS else usd_scale(cfg)
        assert_close(out[name], ref[name], PARITY_RTOL, scale, f"{form} {policy}: {name}")
    assert np.all(ref["voluntary_closed"] > 0), "the holders never closed"
    assert np.all(ref["open_interest_decline"] > ref["open_interest_decline_forced"])
    if policy:
        assert np.any(ref["halted_steps"] > 0) or "partial_liquidation" in policy


def test_rates_zero_are_no_table():
    """Rates 0 are off: the same static settings and the same outputs, bit for bit."""
    zero = build.build(config({"vol_rate_per_day": 0.0, "loss_rate_per_day": 0.0}, dtype="float32"))
    none = build.build(config(None, dtype="float32"))
    assert zero[1] == none[1] and not zero[1].derisk
    assert forms.specialise(zero[1], [config({}, dtype="float32")]) == forms.specialise(
        none[1], [config(None)]
    )
    a = jax.device_get(rollout(zero[0], SEED, 0, 16, static=zero[1], n_paths=16)[0])
    b = jax.device_get(rollout(none[0], SEED, 0, 16, static=none[1], n_paths=16)[0])
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.any(a["voluntary_closed"])
    np.testing.assert_array_equal(a["open_interest_decline_forced"], a["open_interest_decline"])


@pytest.mark.usefixtures("x64")
def test_a_fixed_loss_closes_longs_exponentially():
    """No noise, no impact, volatility held at sigma0 (GARCH alpha = beta = 0), a low-leverage
    book nobody liquidates, and a shock of -10% (SOL: -15%) in step 0: from step 1 on the longs
    close 1 - exp(-dt loss_rate |x|) per step, so after n steps exp(-n dt loss_rate |x|) of them
    is left, all of it closed at the shocked price; shorts (in profit) keep everything."""
    rate, n = 30.0, 20
    assets = {
        a: v | {"impact_y": 0.0, "jump_mean": 0.0, "jump_std": 0.0}
        for a, v in SMALL["market"]["assets"].items()
    }
    mkt = SMALL["market"] | {
        "assets": assets,
        "garch_alpha": 0.0,
        "garch_beta": 0.0,
        "jump_intensity_per_day": 0.0,
        "tail_dof": 0.0,
        "derisk": {"vol_rate_per_day": 50.0, "loss_rate_per_day": rate},
    }
    cfg = validated(
        small_dict(
            run={"steps": n + 1, "fan_points": 1, "dtype": "float64"},
            market=mkt,
            book={"leverage": [2, 3], "leverage_weights": [50, 50]},
            scenario={"shock": -0.1, "shock_start": 0, "shock_steps": 1},
        )
    )
    params, static = build.build(cfg)
    params = reference.to_numpy(params)  # float64 leaves
    quiet = market.Draws(z=np.zeros(2), chi2=np.ones(()), u_jump=np.zeros(()), z_jump=np.zeros(2))
    step = jax.jit(kernel.step, static_argnums=6)
    state = kernel.init_state(params, static)
    for t in range(static.steps):
        state = step(state, quiet, t, params.schedule.shock[t], params.schedule.flow[t], params, static)
    x = -0.1 * np.array([a.get("shock_beta", 1.0) for a in assets.values()])
    assert_close(state.x_mark, x, EXACT_RTOL)
    assert_close(jnp.sqrt(state.variance), params.market.sigma0, EXACT_RTOL)
    long, q0 = params.book.side > 0, np.asarray(kernel.init_state(params, static).quantity)
    left = np.sum(np.where(long, state.quantity, 0.0), -1) / np.sum(np.where(long, q0, 0.0), -1)
    dt = 1.0 / float(params.market.steps_per_day)
    assert_close(left, np.exp(-n * dt * rate * np.abs(x)), EXACT_RTOL)
    np.testing.assert_array_equal(np.where(long, q0, state.quantity), q0)  # shorts untouched
    closed = np.sum(np.where(long, q0 - state.quantity, 0.0), -1) * params.market.price0 * np.exp(x)
    assert_close(state.totals.voluntary[:, 0], closed, EXACT_RTOL, float(np.max(closed)))
    assert not np.any(state.totals.voluntary[:, 1]) and not np.any(state.totals.liquidated)


def mean_decline(derisk: dict) -> tuple[float, np.ndarray]:
    params, static = build.build(config(derisk, n_paths=64))
    out = jax.device_get(rollout(params, SEED, 0, 64, static=static, n_paths=64)[0])
    return float(np.mean(out["open_interest_decline"])), out["voluntary_closed"]


@pytest.mark.parametrize("field", ["vol_rate_per_day", "loss_rate_per_day"])
@pytest.mark.usefixtures("x64")
def test_decline_rises_with_each_rate(field):
    (off, none), *on = (mean_decline({field: r}) for r in (0.0, 1.0, 4.0))
    assert not np.any(none)
    declines = [off] + [d for d, _ in on]
    assert declines[0] < declines[1] < declines[2], declines
    assert all(np.all(v.sum((1, 2)) > 0) for _, v in on)


@pytest.mark.usefixtures("x64")
def test_relaxed_gradient_in_the_rates():
    """d(mean OI decline)/d(rates) of the relaxed kernel (ADL off: its queue is piecewise
    constant): finite and positive from rates 0 with `Static.derisk` set (where a fit starts),
    and equal to central differences inside. Further in, the loss rate's derivative may turn
    negative: selling spread over earlier steps moves the concave impact less than the same
    units liquidated at once, so later cascades shrink."""
    params, static = build.build(config({}, {"adl_rule": "off"}, n_paths=8))
    static = dataclasses.replace(static, relaxed=True, derisk=True)
    params = params._replace(temperature=jnp.asarray(0.02))

    def decline(rates):
        mp = params.market._replace(
            derisk_vol=jnp.full_like(params.market.derisk_vol, rates[0]),
            derisk_loss=jnp.full_like(params.market.derisk_loss, rates[1]),
        )
        out = differentiable_outputs(params._replace(market=mp), static, SEED, 8)
        return jnp.mean(out["open_interest_decline"])

    grad, value = jax.jit(jax.grad(decline)), jax.jit(decline)
    g = np.asarray(grad(jnp.zeros(2)))
    assert np.all(np.isfinite(g)) and np.all(g > 0), g
    inside, h = jnp.array([0.5, 1.0]), 1e-4
    fd = [(value(inside.at[i].add(h)) - value(inside.at[i].add(-h))) / (2 * h) for i in range(2)]
    g = np.asarray(grad(inside))
    assert np.all(np.isfinite(g)) and g[0] > 0
    assert_close(g, fd, FD_RTOL, 1e-3)


def test_cube_and_summary_report_holders_closing():
    """The cube carries `voluntary_closed` (USD, CF attributes) and the summary's rows show it
    beside the liquidated notional."""
    cfg = config(RATES, n_paths=64, dtype="float32")
    ds = simulate(cfg)
    assert ds["voluntary_closed_mean"].attrs["units"] == "USD"
    assert set(ds["voluntary_closed"].dims) >= {"asset", "side", "quantile"}
    assert float(ds["voluntary_closed_mean"].sum()) > 0
    rows = dict(book_rows(ds.isel(point=0)))
    assert "Closed by holders (mean, USD)" in rows and "Liquidated (mean, USD)" in rows


def test_the_ladder_takes_holders_closing():
    """`run.kernel = "ladder"` with voluntary closing runs on the ladder with `Static.derisk`,
    and "auto" puts a large run there whether holders close or not (`engine.config.forms`)."""
    forced = validated(small_dict(run={"kernel": "ladder"}, market=SMALL["market"] | {"derisk": RATES}))
    static = forms.point_static(forced)
    assert static.ladder and static.derisk and not forms.blockers(static, [forced])
    for derisk in (None, RATES):
        big = config(derisk, n_paths=10**7, dtype="float32")
        static = forms.specialise(build.build(big)[1], [big])
        assert static.whole_only and static.ladder and static.derisk == (derisk is not None)
