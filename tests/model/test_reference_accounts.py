"""Stops, cross-margin account cohorts and collateral: the JAX kernel against the NumPy reference
(`engine.sim.reference`, `engine.sim.reference_accounts`) on the same draws, money conservation,
and limiting cases through the kernel.

Small books in float64: 2 assets with 6 isolated cohorts each (some with stop orders), 6
account cohorts (one or two legs; USD wallets, a stablecoin and a staked token that tracks SOL
as collateral; a scheduled depeg beside random ones), built by hand on `engine.config.build`'s
parameters. A -6% two-step shock with SOL at 1.5x beta and a thin insurance fund make accounts,
stops and ADL act; each parity case asserts that they did, so that the parity is not vacuous.
Tolerances: `PARITY_RTOL` (kernel vs reference, and kernel vs kernel where two set-ups are
the same model written twice) of tests/helpers.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.config import build
from engine.config.schema import Config
from engine.model import kernel
from engine.model.params import AccountParams, CollateralParams
from engine.sim import reference
from engine.sim.rollout import rollout
from tests.conftest import small_dict
from tests.helpers import PARITY_RTOL, UNITLESS, assert_close, engine_draws, usd_scale

N_PATHS, SEED, STEPS = 8, 11, 30
BTC, SOL = 0, 1
STABLE, STAKED = 0, 1  # collateral: a USD stablecoin and a token that tracks SOL's mark
LONG_5X, LONG_20X, LONG_50X, SHORT_5X = 0, 1, 2, 3  # cohort columns (leverage 5, 20, 50 per side)
UNITS = ("positions_liquidated", "accounts_liquidated")
UNITLESS_TOTALS = {
    f"totals.{n}" for n in ("halted_steps", "max_rounds", "max_drawdown", "nonfinite", "jump_truncated")
}
ADL_ON_LEGS = {"queue", "pro_rata"}  # variants where ADL must close some account leg

# name -> policy overrides; every variant runs with accounts, collateral and stops
VARIANTS = {
    "queue": {"adl_rule": "queue"},
    "pro_rata": {"adl_rule": "pro_rata"},
    # long halts over the scheduled depeg: accounts under water wait for their markets to open
    "halt": {"breaker": {"kind": "halt", "threshold": 0.03, "window": 4, "duration": 8}},
    "partial_cap_reduce": {
        "partial_liquidation": 0.5,
        "leverage_cap": 15.0,
        "leverage_cap_mode": "reduce_size",
    },
    "cap_add_margin_backstop": {
        "leverage_cap": 15.0,
        "leverage_cap_mode": "add_margin",
        "backstop_capacity_usd": 2e9,
        "backstop_discount": 0.02,
    },
}


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def jax_step():
    # params are traced: one compilation per `Static`
    return jax.jit(jax.vmap(kernel.step, in_axes=(0, 0, None, None, None, None, None)), static_argnums=6)


def config(policy: dict, fund: float = 3e6) -> Config:
    return Config.model_validate(
        small_dict(
            run={
                "n_paths": N_PATHS,
                "seed": SEED,
                "steps": STEPS,
                "cascade_rounds": 8,
                "max_window": 16,
                "fan_points": 6,
                "dtype": "float64",
            },
            book={
                "leverage": [5, 20, 50],
                "leverage_weights": [40, 40, 20],
                "entry_points": 1,
                "position_sizes_usd": [1e6],
                "size_weights": [1],
            },
            policy={"insurance_fund_usd": fund, **policy},
            scenario={
                "shock": -0.06,
                "shock_start": 6,
                "shock_steps": 2,
                "flows": [{"usd": 1e9, "asset": "BTC", "start_step": 4, "steps": 4}],
            },
        )
    )


def legs(price0, spec: dict, n_assets: int = 2):
    """Per-asset arrays `[assets]` (side, entry, units, positions) of one account cohort from
    {asset: (side, notional USD at entry, entry / price0)}, for `weight` accounts."""
    side, entry, units = np.ones(n_assets), np.array(price0, float), np.zeros(n_assets)
    for a, (s, usd, moved) in spec.items():
        side[a], entry[a] = s, price0[a] * moved
        units[a] = usd / entry[a]
    return side, entry, units


def account_params(price0, maint, rows, coll_price=None, haircut=None) -> AccountParams:
    """`AccountParams` from rows (legs spec, wallet USD, collateral units, weight, mmr); the
    leverage is the notional at entry over the margin at t0 (wallet and collateral after
    haircuts)."""
    n_c = 0 if coll_price is None else len(coll_price)
    out = {k: [] for k in AccountParams._fields}
    for spec, wallet, coll, weight, mmr in rows:
        s, e, q = legs(price0, spec, len(price0))
        c0 = 0.0 if n_c == 0 else float(np.dot(coll, (1 - np.asarray(haircut)) * coll_price))
        out["side"].append(s)
        out["entry"].append(e)
        out["quantity"].append(q)
        out["mmr"].append(np.full(len(price0), mmr))
        out["maint_amount"].append(np.where(q > 0, maint, 0.0))
        out["positions"].append(np.where(q > 0, weight, 0.0))
        out["wallet"].append(wallet)
        out["collateral"].append(np.asarray(coll, float).reshape(n_c))
        out["weight"].append(weight)
        out["leverage"].append(np.sum(q * e) / (wallet + c0))
    return AccountParams(*(jnp.asarray(np.array(v, float)) for v in out.values()))


def collateral_params() -> CollateralParams:
    """A stablecoin (2% haircut, random 10% depegs) and a staked token tracking SOL (10%
    haircut, random 5% depegs); gaps recover by 0.8 and 0.9 per step."""
    return CollateralParams(
        price0=jnp.asarray([1.0, 200.0]),
        haircut=jnp.asarray([0.02, 0.10]),
        track=jnp.asarray([-1, SOL], jnp.int32),
        depeg_prob=jnp.asarray([0.03, 0.02]),
        depeg_size=jnp.asarray([0.10, 0.05]),
        recovery=jnp.asarray([0.8, 0.9]),
    )


def detailed(policy: dict, fund: float = 3e6):
    """(config, params, static) of a parity book: the config's cohorts with stop orders, six
    account cohorts and two collateral assets with a scheduled stablecoin depeg."""
    cfg = config(policy, fund)
    params, static = build.build(cfg)
    bk, mp = params.book, params.market
    price0, maint = np.asarray(mp.price0), np.asarray(bk.maint_amount)[:, 0]
    side, entry = np.asarray(bk.side), np.asarray(bk.entry)
    stop = np.where(side > 0, 0.0, np.inf)
    stop[:, LONG_5X] = 0.95 * entry[:, LONG_5X]
    stop[:, SHORT_5X] = 1.003 * entry[:, SHORT_5X]
    # tight, on a cohort cut to 1%: rounds that only stop; below the liquidation price: a gap
    # through both liquidates (a stop only closes what is not being liquidated)
    stop[SOL, LONG_20X] = 0.997 * entry[SOL, LONG_20X]
    small = jnp.ones_like(bk.quantity).at[SOL, LONG_20X].set(0.01)
    stop[:, LONG_50X] = 0.97 * entry[:, LONG_50X]
    cp = collateral_params()
    c_price = np.asarray(cp.price0)
    rows = [
        # legs {asset: (side, notional USD, entry / price0)}, wallet, collateral, weight, mmr
        ({BTC: (1, 1.0e9, 1.0), SOL: (1, 0.5e9, 1.01)}, 75e6, [0.0, 0.0], 900.0, 0.01),
        ({BTC: (1, 2.0e9, 1.0), SOL: (-1, 1.0e9, 0.99)}, 3e8, [0.0, 0.0], 400.0, 0.01),
        # beta-neutral, high tier, on stablecoins: the scheduled depeg liquidates it
        ({BTC: (-1, 1.5e9, 1.0), SOL: (1, 1.0e9, 1.0)}, 0.0, [2.1e8, 0.0], 700.0, 0.06),
        ({SOL: (1, 1.6e9, 1.0)}, 20e6, [0.0, 1e6], 300.0, 0.005),
        ({BTC: (-1, 2.0e9, 1.02), SOL: (-1, 0.5e9, 1.0)}, 2.5e8, [20e6, 0.0], 500.0, 0.01),
        ({BTC: (-1, 0.8e9, 0.995)}, 20e6, [0.0, 0.0], 200.0, 0.01),
    ]
    acc = account_params(price0, maint, rows, c_price, np.asarray(cp.haircut))
    depeg = np.zeros((STEPS, 2))
    depeg[12:16, STABLE] = 0.45
    params = params._replace(
        book=bk._replace(
            stop=jnp.asarray(stop), quantity=bk.quantity * small, positions=bk.positions * small
        ),
        accounts=acc,
        collateral=cp,
        schedule=params.schedule._replace(depeg=jnp.asarray(depeg)),
    )
    static = dataclasses.replace(
        static, n_accounts=len(rows), n_collateral=2, stops=True, whole_only=False, ladder=0
    )
    return cfg, params, static


def field_scale(name: str, cfg: Config, params) -> float:
    """Natural size of a state field (the tolerance rule of tests/helpers.py)."""
    accounts = params.accounts or AccountParams(*[np.zeros(0)] * len(AccountParams._fields))
    if name in ("quantity", "accounts") or name.startswith("backstop_qty"):
        return float(max(np.max(params.book.quantity), np.max(accounts.quantity, initial=0.0)))
    if name == "bankrupt":
        return float(np.max(params.book.entry))
    if name in UNITLESS_TOTALS:
        return 1.0
    if name.startswith(("totals.tally.positions", "totals.tally.accounts")):
        return float(np.sum(params.book.positions) + np.sum(accounts.weight))
    if name in ("fund", "deficit", "backstop_left", "backstop_cash", "queue") or name.startswith("totals."):
        return usd_scale(cfg)
    return 1.0


def output_scale(name: str, cfg: Config, params) -> float:
    if name in UNITLESS:
        return 1.0
    if name in UNITS:
        return field_scale("totals.tally.positions", cfg, params)
    return usd_scale(cfg)


def batch(one, n: int = N_PATHS):
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), one)


def as_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def run_kernel(params, static, jax_step, watch=None):
    """All steps of the kernel on `N_PATHS` paths; returns the final state and, if `watch`
    (state -> `[paths]`) is given, its value after every step `[steps, paths]`."""
    draws = engine_draws(params, static, SEED, N_PATHS)
    state = batch(kernel.init_state(params, static))
    seen = []
    for t in range(static.steps):
        sched = params.schedule
        state = jax_step(state, draws(t), t, sched.shock[t], sched.flow[t], params, static)
        if watch is not None:
            seen.append(np.asarray(watch(state)))
    return state, np.array(seen)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_step_and_path_matches_reference(variant, jax_step):
    """Each step from the kernel's state: every state field (legs, gap, tally) of every path."""
    cfg, params, static = detailed(VARIANTS[variant])
    p_np = reference.to_numpy(params)
    draws = engine_draws(params, static, SEED, N_PATHS)
    state = batch(kernel.init_state(params, static))
    ref0 = reference.init_state(p_np, static, N_PATHS)
    names = [jax.tree_util.keystr(k).lstrip(".") for k, _ in jax.tree_util.tree_flatten_with_path(ref0)[0]]
    for name, a, b in zip(names, jax.tree_util.tree_leaves(as_numpy(state)), jax.tree_util.tree_leaves(ref0)):
        assert_close(a, b, PARITY_RTOL, field_scale(name, cfg, p_np), f"{variant} t0 {name}")
    adl_on_legs = False
    for t in range(static.steps):
        d = draws(t)
        sched = params.schedule
        new = jax_step(state, d, t, sched.shock[t], sched.flow[t], params, static)
        ref = reference.step_paths(
            as_numpy(state), d, t, np.asarray(sched.shock[t]), np.asarray(sched.flow[t]), p_np, static
        )
        got, want = jax.tree_util.tree_leaves(as_numpy(new)), jax.tree_util.tree_leaves(ref)
        assert len(got) == len(want) == len(names)
        for name, a, b in zip(names, got, want):
            assert_close(a, b, PARITY_RTOL, field_scale(name, cfg, p_np), f"{variant} step {t} {name}")
        # a leg that shrank while its account still holds legs was deleveraged, not liquidated
        before, after = np.asarray(state.accounts), ref.accounts
        adl_on_legs |= np.any((after < before) & (after.sum(-1, keepdims=True) > 0))
        state = new
    if variant in ADL_ON_LEGS:
        assert adl_on_legs, f"{variant}: ADL never took from an account leg"


@pytest.fixture(scope="module")
def runs():
    """variant -> (config, params, rollout outputs, reference outputs of whole paths)."""
    out = {}
    for variant, policy in VARIANTS.items():
        cfg, params, static = detailed(policy)
        got = jax.device_get(rollout(params, SEED, 0, N_PATHS, static=static, n_paths=N_PATHS)[0])
        draws = engine_draws(params, static, SEED, N_PATHS)
        want = reference.run_paths(reference.to_numpy(params), static, N_PATHS, draws)
        out[variant] = (cfg, params, got, want)
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_whole_paths_match_reference_and_the_detail_acted(variant, runs):
    """`rollout` (scan, ADL under cond, extract) against `run_paths`, every output and path."""
    cfg, params, got, want = runs[variant]
    assert set(got) == set(want)
    for name in want:
        assert_close(
            got[name], want[name], PARITY_RTOL, output_scale(name, cfg, params), f"{variant}: {name}"
        )
    for acted in ("accounts_liquidated", "stop_notional", "adl_absorbed", "collateral_markdown"):
        assert np.any(np.abs(want[acted]) > 0), f"{variant}: {acted} is 0 on every path"
    assert np.any(want["trader_loss_by_mode"][:, 1] > 0) and np.any(want["collateral_liquidated"] > 0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_money_is_conserved_on_every_path(variant, runs):
    """trader loss = fund inflow - shortfall + counterparty gain + collateral markdown."""
    _, _, got, want = runs[variant]
    for out in (got, want):
        rhs = out["fund_inflow"] - out["shortfall"] + out["counterparty_gain"] + out["collateral_markdown"]
        assert_close(rhs, out["trader_loss"], PARITY_RTOL, 0.0, variant)
        assert_close(out["trader_loss_by_mode"].sum(-1), out["trader_loss"], PARITY_RTOL, 0.0, variant)
        assert_close(out["trader_loss_by_leverage"].sum(-1), out["trader_loss"], PARITY_RTOL, 0.0, variant)


# ---- limiting cases through the kernel ----


def outputs_of(state, params, static) -> dict:
    """Per-path outputs `{name: [paths, ...]}` of final kernel states."""
    f = kernel.form(static)
    return as_numpy(jax.vmap(lambda s: f.extract(s, params, static))(state))


def first_step(alive: np.ndarray) -> np.ndarray:
    """Per path `[paths]`, the first step at which `alive` `[steps, paths]` is False (inf: never)."""
    gone = ~alive
    return np.where(gone.any(0), np.argmax(gone, 0), np.inf)


def no_detail(policy: dict, fund: float):
    """(config, params, static) of the parity book without accounts, collateral or stops."""
    cfg = config(policy, fund)
    params, static = build.build(cfg)
    return cfg, params, dataclasses.replace(static, whole_only=False, ladder=0)


def test_one_leg_account_is_the_isolated_position(jax_step):
    """(a) The BTC 50x long cohort as a cross account of one leg (same units, entry, margin,
    tier; weight = its positions): same liquidation step, and the same totals."""
    cfg, params, static = no_detail({"adl_rule": "queue"}, 3e6)
    bk = params.book
    a, k = BTC, 2
    q, e, lev = (float(x[a, k]) for x in (bk.quantity, bk.entry, bk.leverage))
    n = float(bk.positions[a, k])
    one = AccountParams(
        side=jnp.asarray([[1.0, 1.0]]),
        entry=jnp.asarray([[e, float(params.market.price0[SOL])]]),
        quantity=jnp.asarray([[q, 0.0]]),
        mmr=jnp.asarray([[float(bk.mmr[a, k])] * 2]),
        maint_amount=jnp.asarray([[float(bk.maint_amount[a, k]), 0.0]]),
        positions=jnp.asarray([[n, 0.0]]),
        wallet=jnp.asarray([q * e / lev]),
        collateral=jnp.zeros((1, 0)),
        weight=jnp.asarray([n]),
        leverage=jnp.asarray([lev]),
    )
    cross = params._replace(book=bk._replace(quantity=bk.quantity.at[a, k].set(0.0)), accounts=one)
    cross_static = dataclasses.replace(static, n_accounts=1)
    iso_state, iso_alive = run_kernel(params, static, jax_step, lambda s: s.quantity[:, a, k] > 0)
    x_state, x_alive = run_kernel(cross, cross_static, jax_step, lambda s: s.accounts[:, 0, a] > 0)
    assert np.isfinite(first_step(iso_alive)).any(), "the cohort never liquidated"
    np.testing.assert_array_equal(first_step(x_alive), first_step(iso_alive))
    iso, x = outputs_of(iso_state, params, static), outputs_of(x_state, cross, cross_static)
    assert np.all(x["accounts_liquidated"][np.isfinite(first_step(x_alive))] == n)
    assert np.all(x["accounts_liquidated_by_asset"][np.isfinite(first_step(x_alive)), a] == n)
    for name in iso:
        if name in ("liquidated_entry_by_mode", "trader_loss_by_mode", "accounts_liquidated"):
            iso[name], x[name] = np.sum(iso[name], -1), np.sum(x[name], -1)
            if name == "accounts_liquidated":
                continue
        if name == "accounts_liquidated_by_asset":
            continue
        assert_close(x[name], iso[name], PARITY_RTOL, output_scale(name, cfg, params), name)


def test_collateral_at_par_is_cash(jax_step):
    """(b) Collateral that cannot depeg and tracks nothing counts as its margin value in USD."""
    cfg, params, static = detailed(VARIANTS["queue"])
    cp = params.collateral._replace(
        track=jnp.asarray([-1, -1], jnp.int32), depeg_prob=jnp.zeros(2), depeg_size=jnp.zeros(2)
    )
    pinned = params._replace(
        collateral=cp, schedule=params.schedule._replace(depeg=jnp.zeros_like(params.schedule.depeg))
    )
    acc = params.accounts
    cash = acc.wallet + acc.collateral @ ((1.0 - cp.haircut) * cp.price0)
    as_cash = params._replace(
        accounts=acc._replace(wallet=cash, collateral=jnp.zeros((len(cash), 0))),
        collateral=None,
        schedule=params.schedule._replace(depeg=None),
    )
    cash_static = dataclasses.replace(static, n_collateral=0)
    got = outputs_of(run_kernel(pinned, static, jax_step)[0], pinned, static)
    want = outputs_of(run_kernel(as_cash, cash_static, jax_step)[0], as_cash, cash_static)
    assert np.any(want["accounts_liquidated"] > 0)
    assert not np.any(got["collateral_markdown"]) and not np.any(got["collateral_liquidated"])
    for name in want:
        assert_close(got[name], want[name], PARITY_RTOL, output_scale(name, cfg, params), name)


def test_a_stop_never_reached_changes_nothing(jax_step):
    """(c) Stops beyond any price the paths reach give the numbers of a book without stops."""
    cfg, params, static = detailed(VARIANTS["pro_rata"])
    bk = params.book
    far = jnp.where(bk.side > 0, 1e-9 * bk.entry, 1e9 * bk.entry)
    with_far = params._replace(book=bk._replace(stop=far))
    without = params._replace(book=bk._replace(stop=None))
    got = outputs_of(run_kernel(with_far, static, jax_step)[0], with_far, static)
    want = outputs_of(run_kernel(without, static, jax_step)[0], without, static)
    assert np.any(want["liquidated_total"] > 0) and not np.any(got["stop_notional"])
    for name in want:
        assert_close(got[name], want[name], PARITY_RTOL, output_scale(name, cfg, params), name)


def add_cohort(book, side: float, asset: int, usd: float, lev: float, price0):
    """`book` with one more cohort column of `side`: `usd` notional at `lev` in `asset` (at
    price0), nothing in the other assets; rates and amounts of the first cohort's tier."""
    n_a = book.side.shape[0]
    q = np.zeros(n_a)
    q[asset] = usd / price0[asset]
    entry = np.asarray(price0, float)
    col = {
        "side": np.full(n_a, side),
        "leverage": np.full(n_a, lev),
        "entry": entry,
        "quantity": q,
        "bankrupt": entry * (1.0 - side / lev),
        "mmr": np.asarray(book.mmr[:, 0]),
        "maint_amount": np.asarray(book.maint_amount[:, 0]),
        "positions": np.where(q > 0, 100.0, 0.0),
    }
    grown = {k: jnp.concatenate([getattr(book, k), jnp.asarray(v)[:, None]], 1) for k, v in col.items()}
    return book._replace(**grown)


def test_cross_margin_never_liquidates_before_isolated_with_a_profitable_hedge(jax_step):
    """(d) A BTC long (losing in the crash) with a SOL short hedge (gaining: SOL falls 1.5x as
    much) in one account, margin the sum of the two isolated margins, against the two as
    isolated positions: the account is never liquidated before the isolated BTC long, and
    later on some path. No ADL (a fund that covers everything), so nothing else differs."""
    _, params, static = no_detail({}, 1e12)
    price0 = np.asarray(params.market.price0)
    (btc_usd, btc_lev), (sol_usd, sol_lev) = (0.5e9, 20.0), (0.3e9, 10.0)
    book = add_cohort(
        add_cohort(params.book, 1.0, BTC, btc_usd, btc_lev, price0), -1.0, SOL, sol_usd, sol_lev, price0
    )
    iso = params._replace(book=book)
    iso_static = dataclasses.replace(static, n_cohorts=static.n_cohorts + 2)
    mmr, maint = float(params.book.mmr[0, 0]), np.asarray(params.book.maint_amount)[:, 0]
    rows = [
        (
            {BTC: (1, btc_usd, 1.0), SOL: (-1, sol_usd, 1.0)},
            btc_usd / btc_lev + sol_usd / sol_lev,
            [],
            100.0,
            mmr,
        )
    ]
    cross = params._replace(accounts=account_params(price0, maint, rows))
    cross_static = dataclasses.replace(static, n_accounts=1)
    n_c = static.n_cohorts
    _, iso_alive = run_kernel(iso, iso_static, jax_step, lambda s: s.quantity[:, BTC, n_c] > 0)
    _, seen = run_kernel(
        cross, cross_static, jax_step, lambda s: jnp.stack([s.accounts[:, 0, BTC] > 0, s.x_mark[:, SOL] < 0])
    )
    x_alive, hedge_gains = seen[:, 0].astype(bool), seen[:, 1].astype(bool)
    t_iso, t_cross = first_step(iso_alive), first_step(x_alive)
    assert np.isfinite(t_iso).all(), "the isolated long survived the crash"
    # the hedge is in profit (SOL below its entry) from the isolated liquidation on
    steps = np.arange(static.steps)[:, None]
    assert np.all(hedge_gains | (steps < t_iso) | (steps > t_cross))
    assert np.all(t_cross >= t_iso) and np.any(t_cross > t_iso)
