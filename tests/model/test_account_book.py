"""Cross-margin accounts and collateral on the ladder (`engine.model.account_book`) against the
dense general kernel on the same draws.

float64, seeded random books: 4 assets of isolated cohorts, 24 account cohorts of 1 to 4 legs
(both sides, three maintenance tiers, wallets and two collateral assets, one tracking SOL, with
random depegs and a scheduled one), under policies that make halts, dynamic margin, the
leverage cap both ways, the backstop, bands and both ADL rules act. Every per-path output of
the ladder equals the dense kernel's to `PARITY_RTOL`. The queue's ADL, accounts' legs
included, runs on the ladder (`engine.model.ladder_adl`); paths that need pro-rata ADL, or
whose cascade later reaches an isolated cohort the queue closed, are handed to the dense kernel
(`engine.sim.fallback`). Each variant asserts that what it exercises acted, so that the parity
is not vacuous. Stop orders (`book.stops`) stand beside the accounts in the parity test. Money
is conserved on every ladder path, and a path's state does not grow with accounts x assets.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from jax import export

from engine.config import build, forms, synthetic
from engine.config.schema import Config
from engine.model import kernel, ladder
from engine.model.ladder_kernel import FALLBACK_NEVER
from engine.sim.rollout import rollout, rollout_chunk
from engine.sim.simulate import simulate
from tests.conftest import small_dict
from tests.helpers import PARITY_RTOL, UNITLESS, assert_close, usd_scale
from tests.model.test_reference_accounts import account_params, collateral_params

N_PATHS, STEPS, N_ACCOUNTS = 16, 30, 24
SOL = 1
ASSETS = {
    "ETH": {"price": 4_000.0, "vol_annual": 0.7, "impact_y": 0.5, "daily_volume_usd": 20e9},
    "XRP": {"price": 2.5, "vol_annual": 0.9, "impact_y": 0.6, "daily_volume_usd": 5e9},
}
HALT = {"kind": "halt", "threshold": 0.03, "window": 4, "duration": 6}
# name -> policy; each variant's assertion of what acted is in `ACTED`
VARIANTS = {
    "adl_off": {"adl_rule": "off"},
    "halt_dynamic_margin": {"adl_rule": "off", "breaker": HALT, "dynamic_margin": 2.0},
    "cap_add_margin_backstop": {
        "adl_rule": "off",
        "leverage_cap": 12.0,
        "leverage_cap_mode": "add_margin",
        "backstop_capacity_usd": 2e9,
        "backstop_discount": 0.02,
    },
    "cap_reduce_band": {
        "adl_rule": "off",
        "leverage_cap": 10.0,
        "leverage_cap_mode": "reduce_size",
        "breaker": {"kind": "band", "band": 0.01},
    },
    "queue": {"adl_rule": "queue"},
    "pro_rata": {"adl_rule": "pro_rata"},
}
HANDED_OVER = {"pro_rata"}
QUEUE_ON_LADDER = {"queue"}
# stop orders beside the accounts in the parity test (`book.stops`; on the ladder, rung groups of
# their own): BTC starts at 100,000, SOL at 200 (tests/conftest.py)
STOPS = (
    {"asset": "BTC", "side": "long", "price": 97_000.0, "notional_usd": 4e8},
    {"asset": "BTC", "side": "long", "price": 95_000.0, "notional_usd": 2e8},
    {"asset": "BTC", "side": "short", "price": 104_000.0, "notional_usd": 3e8},
    {"asset": "SOL", "side": "long", "price": 192.0, "notional_usd": 8e7},
    {"asset": "SOL", "side": "short", "price": 205.0, "notional_usd": 5e7},
)


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def config(policy: dict, seed: int, stops: tuple = ()) -> Config:
    base = small_dict()["market"]
    assets = {
        **base["assets"],
        **{k: {**v, "open_interest_usd": 5e9, "long_share": 0.6} for k, v in ASSETS.items()},
    }
    corr = np.full((4, 4), 0.7) + 0.3 * np.eye(4)
    return Config.model_validate(
        small_dict(
            run={
                "n_paths": N_PATHS,
                "seed": seed,
                "steps": STEPS,
                "cascade_rounds": 8,
                "max_window": 16,
                "fan_points": 6,
                "dtype": "float64",
            },
            market={**base, "assets": assets, "correlation": corr.tolist()},
            policy={"insurance_fund_usd": 3e6, **policy},
            scenario={"shock": -0.07, "shock_start": 6, "shock_steps": 2},
            book={**small_dict()["book"], "stops": list(stops)},
        )
    )


def random_accounts(rng: np.random.Generator, price0: np.ndarray, maint: np.ndarray):
    """`N_ACCOUNTS` rows for `account_params`: 1 to 4 legs each on random assets and sides,
    0.2-2 B USD per leg entered within 3% of the price, wallets for 3-30x, collateral on a
    third of them."""
    cp = collateral_params()
    rows = []
    for _ in range(N_ACCOUNTS):
        assets = rng.choice(4, size=rng.integers(1, 5), replace=False)
        spec = {
            int(a): (
                float(rng.choice([1.0, -1.0])),
                float(rng.uniform(0.2e9, 2e9)),
                float(rng.uniform(0.97, 1.03)),
            )
            for a in assets
        }
        notional = sum(usd for _, usd, _ in spec.values())
        margin = notional / rng.uniform(3, 30)
        coll = np.zeros(2)
        if rng.random() < 1 / 3:
            c = int(rng.integers(2))
            coll[c] = 0.7 * margin / float(cp.price0[c])
            margin *= 0.3
        rows.append(
            (spec, margin, coll, float(rng.integers(50, 1000)), float(rng.choice([0.005, 0.01, 0.025])))
        )
    return account_params(price0, maint, rows, np.asarray(cp.price0), np.asarray(cp.haircut)), cp


def book(policy: dict, seed: int, stops: tuple = ()):
    """(config, params, ladder static, dense general static) of a random book with accounts
    (and the stop orders `stops`, as `book.stops`)."""
    cfg = config(policy, seed, stops)
    params, static = build.build(cfg)
    rng = np.random.default_rng(seed)
    price0 = np.asarray(params.market.price0)
    acc, cp = random_accounts(rng, price0, float(np.asarray(params.book.maint_amount)[0, 0]))
    depeg = np.zeros((STEPS, 2))
    depeg[12:16, 0] = 0.4
    params = params._replace(
        accounts=acc, collateral=cp, schedule=params.schedule._replace(depeg=jnp.asarray(depeg))
    )
    dense = dataclasses.replace(static, n_accounts=N_ACCOUNTS, n_collateral=2, whole_only=False, ladder=0)
    stop = None if params.book.stop is None else np.asarray(params.book.stop)
    rates, cells = ladder.layout(np.asarray(params.book.side), np.asarray(params.book.mmr), stop)
    return cfg, params, dataclasses.replace(dense, ladder=rates, ladder_cells=cells), dense


def run(params, static, seed):
    return jax.device_get(rollout(params, seed, 0, N_PATHS, static=static, n_paths=N_PATHS)[0])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_accounts_on_the_ladder_match_the_dense_kernel(variant, seed):
    cfg, params, lad, dense = book(VARIANTS[variant], seed, STOPS)
    out, den = run(params, lad, seed), run(params, dense, seed)
    flagged = out.pop("fallback_step") < FALLBACK_NEVER
    for name, value in den.items():
        scale = 1.0 if name in UNITLESS else usd_scale(cfg) + 1e3 * N_ACCOUNTS
        assert_close(out[name], value, PARITY_RTOL, scale, f"{variant} seed {seed}: {name}")
    assert np.any(den["accounts_liquidated"] > 0)
    if "add_margin" not in variant:  # margin added to the wallets outweighs the depeg there
        assert np.any(den["collateral_liquidated"] > 0), f"{variant}: the depeg liquidated no account"
    assert np.any(den["liquidated_entry_by_mode"][:, 0] > 0), "no isolated cohort liquidated"
    assert np.any(den["stop_notional"] > 0), "no stop order triggered"
    adl = den["adl_notional"] > 0
    if variant in HANDED_OVER:
        assert flagged.any(), f"{variant}: no path needed ADL, the hand-over was not exercised"
    elif variant in QUEUE_ON_LADDER:
        assert np.any(adl & ~flagged), f"{variant}: no path's ADL ran on the ladder"
        # the ladder's ADL closed account legs on some path it computed to the end
        assert np.any(den["adl_notional"][~flagged] > 0)
    else:
        assert not flagged.any(), f"{variant}: paths handed over with ADL off"


def test_money_is_conserved_on_every_ladder_path():
    """trader loss = fund inflow - shortfall + counterparty gain + collateral markdown."""
    cfg, params, lad, _ = book(VARIANTS["cap_add_margin_backstop"], 3)
    out = run(params, lad, 3)
    rhs = out["fund_inflow"] - out["shortfall"] + out["counterparty_gain"] + out["collateral_markdown"]
    assert_close(out["trader_loss"], rhs, PARITY_RTOL, usd_scale(cfg))
    assert np.all(out["trader_loss"] > 0)


def test_accounts_on_the_ladder_lower_for_cuda():
    _, params, lad, _ = book(VARIANTS["halt_dynamic_margin"], 0)
    exported = export.export(rollout_chunk, platforms=["cuda"])(params, 1, 0, 16, static=lad, n_paths=16)
    assert exported.platforms == ("cuda",)


def test_a_paths_state_does_not_grow_with_accounts_times_assets():
    _, params, lad, _ = book(VARIANTS["adl_off"], 0)
    state = jax.jit(kernel.init_state, static_argnums=1)(params, lad)
    sizes = {jax.tree_util.keystr(k): np.size(v) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert sizes[".alive"] == N_ACCOUNTS
    # the legs ADL closed: one byte of bits per account cohort, not a leg per asset
    assert sizes[".adl.cut"] == N_ACCOUNTS and state.adl.cut.dtype.itemsize == 1
    assert all(size != N_ACCOUNTS * 4 for size in sizes.values()), sizes


@pytest.fixture(scope="module")
def book_file(tmp_path_factory):
    """4,000 positions, 60% cross over 400 accounts, some in USDe or a token tracking BTC."""
    path = tmp_path_factory.mktemp("accounts") / "book.parquet"
    table = synthetic.make_positions(run_config(path), 4_000, seed=2, cross_share=0.6, accounts=400)
    synthetic.write_positions(table, path)
    return path


def run_config(path, **run) -> Config:
    collateral = {"USDe": {"haircut": 0.05}, "wBTC": {"price": 100_000.0, "tracks": "BTC", "haircut": 0.1}}
    d = small_dict(
        run={
            "n_paths": 192,
            "seed": 5,
            "steps": 24,
            "fan_points": 6,
            "tipping_paths": 32,
            "kernel": "ladder",
            **run,
        },
        book={"positions": str(path), "account_bin": 0.0},
        collateral=collateral,
        scenario={
            "shock": -0.08,
            "shock_start": 4,
            "shock_steps": 2,
            "depegs": [{"collateral": "USDe", "gap": 0.3, "start_step": 5, "steps": 4}],
        },
        policy={"insurance_fund_usd": 2e7, "adl_rule": "queue"},
    )
    return Config.model_validate(d)


def test_a_run_with_accounts_does_not_depend_on_chunks_or_devices(book_file, monkeypatch):
    """Bitwise: one chunk of 192 paths on one device, and chunks of 128 on 2 devices (the
    ladder's batches of busy paths, its ADL batches and the devices all differ)."""
    monkeypatch.setenv("LIQSTRESS_DEVICES", "1")
    whole = simulate(run_config(book_file, tipping_paths=0))
    assert forms.form(forms.point_static(run_config(book_file))) == "ladder"
    assert float(whole["accounts_liquidated_mean"].max()) > 0
    monkeypatch.setenv("LIQSTRESS_DEVICES", "2")
    xr.testing.assert_identical(simulate(run_config(book_file, chunk_size=128, tipping_paths=0)), whole)
