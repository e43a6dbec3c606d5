"""The ladder kernel (`engine.model.ladder`, `engine.model.ladder_kernel`) against the dense kernel
and the NumPy reference on the same draws.

float64: every per-path output equals the dense whole-position kernel's and the reference's to
`PARITY_RTOL`, on every policy variant of tests/model/test_reference.py that closes positions
whole, and on seeded random books (several assets and tiers, both sides, thousands of cohorts,
exact ties in liquidation price). The queue's ADL runs on the ladder (`engine.model.ladder_adl`);
paths the ladder hands to the dense kernel (pro-rata ADL) are counted and their numbers checked
too. float32: the distributions of the two forms agree within Monte
Carlo error, and money is conserved on every path.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from engine.config import build, forms
from engine.config.schema import Config
from engine.model import ladder
from engine.model.ladder_kernel import FALLBACK_NEVER
from engine.model.policies import cap_leverage
from engine.sim import reference
from engine.sim.rollout import dense, rollout
from engine.sim.simulate import simulate
from tests.conftest import small_dict
from tests.helpers import F32_RTOL, PARITY_RTOL, UNITLESS, assert_close, engine_draws, usd_scale
from tests.model.test_reference import VARIANTS, parity_config

N_PATHS, SEED = 16, 3
WHOLE = [v for v in VARIANTS if "partial_liquidation" not in VARIANTS[v][0]]
# variants whose ADL must act on some path: the queue's on the ladder, pro rata's handed to the
# dense kernel
QUEUE_ON_LADDER = {"base_queue", "queue_small_fund"}
HANDED_OVER = {"pro_rata"}


def on_ladder(cfg: Config):
    """(params, ladder static, dense static) of `cfg` with the ladder kernel forced."""
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"kernel": "ladder"})})
    params, static = build.build(cfg)
    static = forms.specialise(static, [cfg])
    assert static.ladder > 0
    return params, static, dense(static)


def compare(out: dict, expected: dict, cfg: Config, what: str) -> None:
    for name, value in expected.items():
        scale = 1.0 if name in UNITLESS else usd_scale(cfg)
        assert_close(out[name], value, PARITY_RTOL, scale, f"{what}: {name}")


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("variant", WHOLE)
def test_ladder_matches_dense_and_reference(variant):
    cfg = parity_config(VARIANTS[variant][0])
    params, static, dense_static = on_ladder(cfg)
    out = jax.device_get(rollout(params, SEED, 0, N_PATHS, static=static, n_paths=N_PATHS)[0])
    flagged = out.pop("fallback_step") < FALLBACK_NEVER
    den = jax.device_get(rollout(params, SEED, 0, N_PATHS, static=dense_static, n_paths=N_PATHS)[0])
    draws = engine_draws(params, static, SEED, N_PATHS)
    ref = reference.run_paths(reference.to_numpy(params), dense_static, N_PATHS, draws)
    compare(out, den, cfg, f"{variant} ladder vs dense")
    compare(out, ref, cfg, f"{variant} ladder vs reference")
    # only paths with a deficit for ADL are handed over (no equity split outran its window here)
    deficit = (den["adl_absorbed"] + den["bad_debt"]) > 0
    assert not np.any(flagged & ~deficit), f"{variant}: paths handed over without a deficit"
    if variant in HANDED_OVER:
        assert flagged.any(), f"{variant}: no path needed ADL, the fallback was not exercised"
    if variant in QUEUE_ON_LADDER:
        assert np.any(den["adl_notional"] > 0), f"{variant}: ADL closed nothing"
        assert not flagged.any(), f"{variant}: the queue's ADL was handed to the dense kernel"
    assert np.any(out["liquidated_total"] > 0)


def random_book(seed: int) -> Config:
    """A seeded random book and policy: 2 assets, 3-6 leverage levels, 3-5 sizes over 1-4 tiers
    (two sizes in the first tier give exact ties), 40-80 entries: 1,440-4,800 cohorts per asset."""
    rng = np.random.default_rng(seed)
    levels = sorted(rng.choice([2, 3, 5, 10, 20, 25, 50, 75, 100], size=rng.integers(3, 7), replace=False))
    sizes = sorted({5e3, 20e3, *rng.choice([1e5, 6e5, 3e6, 8e6], size=rng.integers(1, 4), replace=False)})
    breaker = rng.choice(
        [
            {"kind": "none"},
            {"kind": "halt", "threshold": 0.03, "window": 4, "duration": 2},
            {"kind": "band", "band": 0.01},
        ]
    )
    return Config.model_validate(
        small_dict(
            run={
                "n_paths": 24,
                "seed": seed,
                "steps": 24,
                "cascade_rounds": 6,
                "max_window": 16,
                "fan_points": 6,
                "dtype": "float64",
            },
            book={
                "leverage": [float(x) for x in levels],
                "leverage_weights": rng.uniform(1, 5, len(levels)).tolist(),
                "entry_points": int(rng.integers(40, 81)),
                "position_sizes_usd": [float(x) for x in sizes],
                "size_weights": rng.uniform(1, 5, len(sizes)).tolist(),
                "entry_log_std": float(rng.uniform(0.02, 0.08)),
            },
            scenario={"shock": -float(rng.uniform(0.05, 0.12)), "shock_start": 5, "shock_steps": 2},
            policy={
                "leverage_cap": float(rng.choice([10, 25, 125])),
                "leverage_cap_mode": str(rng.choice(["reduce_size", "add_margin"])),
                "dynamic_margin": float(rng.choice([0.0, 2.0])),
                "backstop_capacity_usd": float(rng.choice([0.0, 2e9])),
                "insurance_fund_usd": float(rng.choice([1e6, 2e8])),
                "adl_rule": str(rng.choice(["off", "queue"])),
                "breaker": breaker,
            },
        )
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_books_match_the_dense_kernel(seed):
    cfg = random_book(seed)
    params, static, dense_static = on_ladder(cfg)
    n = cfg.run.n_paths
    out = jax.device_get(rollout(params, seed, 0, n, static=static, n_paths=n)[0])
    out.pop("fallback_step")
    den = jax.device_get(rollout(params, seed, 0, n, static=dense_static, n_paths=n)[0])
    compare(out, den, cfg, f"random book {seed} ({static.n_cohorts} cohorts per asset)")
    assert np.any(out["liquidated_total"] > 0)


def test_ladder_groups_are_sorted_and_hold_every_live_cohort():
    cfg = random_book(1)
    params, static, _ = on_ladder(cfg)
    lad = jax.device_get(jax.jit(ladder.build_ladder, static_argnums=2)(params.book, params.policy, static))
    q = np.asarray(cap_leverage(params.book, params.policy)[0])
    for a in range(static.n_assets):
        assert np.all(np.diff(lad.u[a][lad.start[a, 0] : lad.end[a, 0]]) >= 0)
        live = sum(int(e - s) for s, e in zip(lad.start[a], lad.end[a]))
        assert live == int(np.sum(q[a] > 0))
        # the compensated prefix sums hold the book's total units (after the leverage cap)
        assert_close(lad.cum[a, -1, 0] + lad.cum[a, -1, 3], q[a].sum(), PARITY_RTOL)


def test_float32_distributions_agree_and_money_is_conserved():
    base = small_dict(run={"n_paths": 1024, "seed": 5, "steps": 48, "fan_points": 12, "tipping_paths": 0})
    base["book"]["entry_points"] = 24
    with jax.enable_x64(False):
        runs = {
            k: simulate(Config.model_validate({**base, "run": {**base["run"], "kernel": k}}))
            for k in ("ladder", "dense")
        }
    a, b = runs["ladder"], runs["dense"]
    for name in ("liquidated_total", "insurance_fund_draw", "trader_loss", "max_drawdown"):
        se = np.hypot(a[f"{name}_mc_se"].values, b[f"{name}_mc_se"].values)
        assert np.all(np.abs(a[f"{name}_mean"].values - b[f"{name}_mean"].values) <= 3 * se + 1e-9), name
    cfg = Config.model_validate({**base, "run": {**base["run"], "n_paths": 256}})
    with jax.enable_x64(False):
        params, static, _ = on_ladder(cfg)
        out = jax.device_get(rollout(params, 5, 0, 256, static=static, n_paths=256)[0])
    assert_close(
        out["trader_loss"],
        out["counterparty_gain"] + out["fund_inflow"] - out["shortfall"],
        F32_RTOL,
        usd_scale(cfg),
        "trader loss = counterparty gain + fund inflow - shortfall",
    )
