"""Parity of the JAX kernel with the NumPy reference (`engine.sim.reference`) on the same draws.

Small cases (2 assets, 48 cohorts each, 24 steps, 4 paths; 2 of them step by step) in float64, across the policy
variants and both forms of the cascade (the general one and, where every liquidation closes
the whole position, `run_cascade_whole`); tolerance `PARITY_RTOL` of tests/helpers.py. Each variant also checks that the
lever it tests actually acted (a halt happened, ADL closed something, ...), so that the
parity is not vacuous.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.config import build
from engine.config.schema import Config
from engine.model import waterfall
from engine.model.sides import by_side, side_matrix
from engine.sim import reference
from engine.sim.rollout import rollout
from tests.conftest import small_dict
from tests.helpers import (
    EXACT_RTOL,
    F32_RTOL,
    PARITY_RTOL,
    UNITLESS,
    assert_close,
    assert_steps_match,
    engine_draws,
    usd_scale,
)

N_PATHS, SEED = 4, 3

# name -> (policy overrides, output that must be positive on some path; "changed" means that
# the outputs differ from the base variant's)
VARIANTS = {
    "base_queue": ({}, "adl_notional"),
    "halt": ({"breaker": {"kind": "halt", "threshold": 0.03, "window": 4, "duration": 3}}, "halted_steps"),
    "band": ({"breaker": {"kind": "band", "band": 0.01}}, "changed"),
    "partial": ({"partial_liquidation": 0.5}, "liquidated_total"),
    "backstop": ({"backstop_capacity_usd": 3e9, "backstop_discount": 0.02}, "backstop_pnl"),
    "queue_small_fund": ({"adl_rule": "queue", "insurance_fund_usd": 1e6}, "adl_notional"),
    "pro_rata": ({"adl_rule": "pro_rata", "insurance_fund_usd": 1e6}, "adl_notional"),
    "adl_off": ({"adl_rule": "off", "insurance_fund_usd": 1e6}, "bad_debt"),
    "dynamic_margin": ({"dynamic_margin": 3.0}, "liquidated_total"),
    "cap_reduce_size": ({"leverage_cap": 20.0, "leverage_cap_mode": "reduce_size"}, "liquidated_total"),
    "cap_add_margin": ({"leverage_cap": 20.0, "leverage_cap_mode": "add_margin"}, "liquidated_total"),
}


def parity_config(policy: dict) -> Config:
    return Config.model_validate(
        small_dict(
            run={
                "n_paths": N_PATHS,
                "seed": SEED,
                "steps": 24,
                "cascade_rounds": 6,
                "max_window": 16,
                "fan_points": 6,
                "dtype": "float64",
            },
            policy={"insurance_fund_usd": 2e8, **policy},
            scenario={
                "shock": -0.08,
                "shock_start": 6,
                "shock_steps": 2,
                "flows": [{"usd": 2e9, "asset": "BTC", "start_step": 4, "steps": 6}],
            },
        )
    )


# (variant, cascade form) pairs: the whole-position form only where it applies
CASES = [
    (v, form)
    for v in VARIANTS
    for form in ("general", "whole")
    if form == "general" or "partial_liquidation" not in VARIANTS[v][0]
]


def built(variant: str, form: str):
    """(config, params, static) of a variant with the cascade form selected."""
    cfg = parity_config(VARIANTS[variant][0])
    params, static = build.build(cfg)
    return cfg, params, dataclasses.replace(static, whole_only=form == "whole")


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def field_scale(name: str, cfg: Config, params) -> float:
    """Natural size of a state field (see the tolerance rule in tests/helpers.py)."""
    if name in ("totals.max_rounds", "totals.halted_steps", "totals.max_drawdown"):
        return 1.0  # counts and fractions: not on the USD scale, so a wrong count shows
    if name in ("quantity",) or name.startswith("backstop_qty"):
        return float(np.max(params.book.quantity))
    if name == "bankrupt":
        return float(np.max(params.book.entry))
    if name in ("fund", "deficit", "backstop_left", "backstop_cash", "queue") or name.startswith("totals."):
        return usd_scale(cfg)
    return 1.0


@pytest.mark.parametrize(("variant", "form"), CASES)
def test_step_matches_reference_every_step(variant, form):
    """Every step of every path: JAX `kernel.step` and `reference_step` from the same state."""
    cfg, params, static = built(variant, form)
    p_np = reference.to_numpy(params)
    assert_steps_match(params, static, SEED, N_PATHS, lambda name: field_scale(name, cfg, p_np), variant)


@pytest.mark.parametrize(("variant", "form"), CASES)
def test_rollout_matches_reference_paths(variant, form):
    """Whole paths: `engine.sim.rollout.rollout` (scan, ADL under cond, extract) vs `run_paths`."""
    acted = VARIANTS[variant][1]
    cfg, params, static = built(variant, form)
    out = jax.device_get(rollout(params, SEED, 0, N_PATHS, static=static, n_paths=N_PATHS)[0])
    ref = reference.run_paths(
        reference.to_numpy(params), static, N_PATHS, engine_draws(params, static, SEED, N_PATHS)
    )
    assert set(out) == set(ref)
    for name in ref:
        scale = 1.0 if name in UNITLESS else usd_scale(cfg)
        assert_close(out[name], ref[name], PARITY_RTOL, scale, f"{variant}: {name}")
    if acted == "changed":
        base = reference.run_paths(
            reference.to_numpy(build.build(parity_config({}))[0]),
            static,
            N_PATHS,
            engine_draws(params, static, SEED, N_PATHS),
        )
        assert not np.allclose(ref["liquidated_notional"], base["liquidated_notional"]), (
            f"{variant} never acted"
        )
    else:
        assert np.any(np.abs(ref[acted]) > 0), f"{variant}: the lever under test never acted ({acted} is 0)"


def queue(profit, score, need, side):
    """The kernel's ADL queue over one set of cohorts `[assets, cohorts]`: (absorbed, closed)."""
    sides = side_matrix(jnp.asarray(side))
    part = waterfall.Opposite(profit, score, side, profit, lambda x: by_side(x, sides))
    out, _ = waterfall._adl_queue([part], need)
    return out[0]


def test_adl_queue_closes_by_score_and_ties_together():
    """The queue on a hand-made book, reference and kernel: best score first, ties together."""
    profit = np.array([[[5.0, 3.0, 3.0, 4.0, 0.0, 2.0]]])
    score = np.array([[[4.0, 2.0, 2.0, 1.0, 7.0, 9.0]]])
    side = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, -1.0]])
    # longs cover 7: cohort 0 (score 4, profit 5), then the tie group {1, 2} (score 2) closes
    # whole and shares the last 2 USD; cohort 4 has the best score but no profit
    need = np.array([[[7.0, 0.0]]])
    closed = reference.adl_closures(profit, score, need, side, rule=1)
    np.testing.assert_array_equal(closed[0, 0], [1, 1, 1, 0, 0, 0])
    absorbed, kernel_closed = queue(profit[0], score[0], need[0], side)
    np.testing.assert_array_equal(np.asarray(kernel_closed)[0], [1, 1, 1, 0, 0, 0])
    assert_close(np.asarray(absorbed)[0], [5, 1, 1, 0, 0, 0], F32_RTOL)
    # nothing needed: nothing closed; more needed than held: every profitable cohort closed
    for amount, expect in ((0.0, [0, 0, 0, 0, 0, 0]), (100.0, [1, 1, 1, 1, 0, 0])):
        need = np.array([[[amount, 0.0]]])
        np.testing.assert_array_equal(reference.adl_closures(profit, score, need, side, rule=1)[0, 0], expect)
        np.testing.assert_array_equal(np.asarray(queue(profit[0], score[0], need[0], side)[1])[0], expect)
    # pro rata: every profitable cohort gives the same share of its profit and size
    closed = reference.adl_closures(profit, score, np.array([[[7.0, 1.0]]]), side, rule=2)
    assert_close(closed[0, 0], [7 / 15] * 4 + [0, 0.5], EXACT_RTOL)
