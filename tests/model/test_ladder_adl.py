"""The queue's ADL on the ladder (`engine.model.ladder_adl`), event by event against the dense
kernel's (`engine.model.stages.deleverage`), float64.

A ladder path keeps each event's mark, threshold and held shares instead of the cohorts it
closed. After every event of a sequence (several marks, both sides in deficit, held shares below
1, random levels), the open book the ladder rebuilds from its record equals the dense kernel's
units cohort by cohort, and the totals are the dense kernel's. A path with more events than the
record holds, and a level that passes a closed cohort, are flagged for the dense kernel. With
cross-margin accounts, the legs the queue closes are the dense kernel's too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.model import account_book, ladder_adl, ladder_kernel, policies, stages
from engine.model import ladder as L
from engine.model.ladder_kernel import FALLBACK_NEVER
from tests.helpers import EXACT_RTOL, assert_close
from tests.model.test_account_book import VARIANTS
from tests.model.test_account_book import book as account_book_case
from tests.model.test_ladder import on_ladder, random_book


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def _setup(seed):
    """(params prepared for the ladder, static, ladder state at t0, rng) of a random book with
    the queue rule."""
    cfg = random_book(seed)
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"adl_rule": "queue"})})
    params, static, _ = on_ladder(cfg)
    params = jax.jit(L.prepare, static_argnums=1)(params, static)
    return params, static, ladder_kernel.init_state(params, static), np.random.default_rng(seed)


def _open(params, state):
    """The ladder path's open units `[assets, cohorts]` in the book's order."""
    q0, b0 = policies.cap_leverage(params.book, params.policy)
    return ladder_adl.open_quantity(params, q0, b0, state.level, state.adl, state.held)


@pytest.mark.parametrize("seed", range(3))
def test_every_event_closes_what_the_dense_queue_closes(seed):
    params, static, state, rng = _setup(seed)
    lad = params.ladder
    _, b0 = policies.cap_leverage(params.book, params.policy)
    ladder_step = jax.jit(ladder_adl.deleverage)
    dense_step = jax.jit(stages.deleverage)
    open_interest = float(jnp.sum(jnp.sum(params.book.quantity, -1) * params.market.price0))
    closed_any = 0
    for t in range(5):
        # a new mark, some cohorts liquidated (levels only rise), voluntary closing's shares
        level = np.asarray(state.level)
        room = np.asarray(lad.end) - level
        level = level + (rng.uniform(0, 0.15, level.shape) * room).astype(np.int32)
        level = np.minimum(level, np.asarray(state.adl.first))  # a level past a closed cohort flags
        held = jnp.asarray(rng.uniform(0.6, 1.0, (static.n_assets, 2)))
        x_mark = jnp.asarray(rng.normal(0.0, 0.06, static.n_assets))
        deficit = jnp.asarray(rng.uniform(0, 0.02, (static.n_assets, 2)) * open_interest / static.n_assets)
        state = state._replace(level=jnp.asarray(level), held=held, x_mark=x_mark, deficit=deficit)
        before = _open(params, state)
        dense = stages.init_state(params, static)._replace(
            quantity=before, bankrupt=b0, x_mark=x_mark, deficit=deficit
        )
        want = dense_step(dense, params)
        totals = state.totals
        state = ladder_step(state, t, params)
        got = _open(params, state)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.quantity), f"event {t}")
        for name in ("adl_absorbed", "adl_notional", "bad_debt"):  # this event's, from zero in dense
            step = getattr(state.totals, name) - getattr(totals, name)
            assert_close(step, getattr(want.totals, name), EXACT_RTOL, open_interest, name)
        closed_any += int(np.sum((np.asarray(before) > 0) & (np.asarray(got) == 0)))
        # what later stages subtract: the closed cohorts' t0 units per group, all beyond the level
        q0 = np.asarray(policies.cap_leverage(params.book, params.policy)[0])
        was_open_t0 = np.asarray(L.liquidated(lad, state.level)) == 0
        shut = was_open_t0 & (np.asarray(got) == 0) & (q0 > 0)
        assert_close(np.sum(state.adl.units, -1), np.sum(np.where(shut, q0, 0.0), -1), 1e-12, 1.0)
    assert closed_any > 0 and int(state.adl.events) >= 3, "too few events closed cohorts"
    assert int(state.fallback) == FALLBACK_NEVER


def test_more_events_than_the_record_holds_flag_the_path():
    params, static, state, rng = _setup(0)
    step = jax.jit(ladder_adl.deleverage)
    open_interest = float(jnp.sum(jnp.sum(params.book.quantity, -1) * params.market.price0))
    t = 0
    while int(state.adl.events) <= ladder_adl.EVENTS and t < 200:
        x_mark = jnp.asarray(rng.normal(0.0, 0.08, static.n_assets))
        deficit = jnp.full((static.n_assets, 2), 1e-4 * open_interest)
        state = step(state._replace(x_mark=x_mark, deficit=deficit), t, params)
        if int(state.adl.events) <= ladder_adl.EVENTS:
            assert int(state.fallback) == FALLBACK_NEVER, f"flagged at event {int(state.adl.events)}"
        t += 1
    assert int(state.adl.events) == ladder_adl.EVENTS + 1
    assert int(state.fallback) == t - 1


def test_a_level_that_passes_a_closed_cohort_is_reached():
    params, _, state, _ = _setup(1)
    lad = params.ladder
    first = lad.start + (lad.end - lad.start) // 2
    rec = state.adl._replace(first=jnp.where(jnp.arange(first.shape[1]) == 0, first, lad.u.shape[1]))
    assert not bool(ladder_adl.reached(rec, lad.start))
    assert not bool(ladder_adl.reached(rec, first))  # up to the closed cohort, not past it
    assert bool(ladder_adl.reached(rec, first + 1))
    assert not bool(ladder_adl.reached(state.adl, lad.end))  # nothing closed yet


def test_the_open_book_past_closed_cohorts_sums_only_the_open_ones():
    """What a step whose cascade passes cohorts ADL closed runs on (`ladder_kernel._past_closed`):
    the ladder without them sums the open cohorts only, the closed ones between two levels are
    the rest, and the record's closed cohorts beyond a level are those `_queue` recorded."""
    params, static, state, rng = _setup(0)
    lad = params.ladder
    q0, b0 = policies.cap_leverage(params.book, params.policy)
    step = jax.jit(ladder_adl.deleverage)
    open_interest = float(jnp.sum(jnp.sum(params.book.quantity, -1) * params.market.price0))
    for t in range(4):
        x_mark = jnp.asarray(rng.normal(0.0, 0.06, static.n_assets))
        deficit = jnp.asarray(rng.uniform(0, 0.02, (static.n_assets, 2)) * open_interest / static.n_assets)
        state = step(state._replace(x_mark=x_mark, deficit=deficit), t, params)
    shut = ladder_adl.in_ladder_order(lad, jax.jit(ladder_adl.closed)(params, q0, b0, state.adl))
    open_q = np.asarray(ladder_adl.in_ladder_order(lad, _open(params, state)))
    q = np.asarray(lad.rows[..., 1])
    assert np.any(shut), "no cohort closed"
    lower, upper = state.level, lad.end
    on_open = L.without(lad, shut)
    got = np.asarray(L.between(L.cum_at(on_open, upper), L.cum_at(on_open, lower))[..., 0])
    got_closed = np.asarray(ladder_adl.closed_between(lad, shut, lower, upper))
    want = np.zeros_like(got)
    want_closed = np.zeros_like(got)
    for a in range(static.n_assets):
        for g in range(lad.start.shape[1]):
            span = slice(int(lower[a, g]), int(upper[a, g]))
            want[a, g] = open_q[a, span].sum()
            want_closed[a, g] = np.where(np.asarray(shut)[a, span], q[a, span], 0.0).sum()
    assert_close(got, want, 1e-12, float(q.max()), "open units on the open book")
    assert_close(got_closed, want_closed, 1e-12, float(q.max()), "closed units between the levels")
    whole = np.asarray(L.between(L.cum_at(lad, upper), L.cum_at(lad, lower))[..., 0])
    assert_close(got + got_closed, whole, 1e-12, float(q.max()), "open and closed make the book")
    first, units = ladder_adl.beyond_level(lad, shut, lower)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(state.adl.first))
    assert_close(units, state.adl.units, 1e-12, float(q.max()), "closed units beyond the level")
    first, units = ladder_adl.beyond_level(lad, shut, upper)  # a level past every closed cohort
    assert np.all(np.asarray(first) == lad.u.shape[1]) and np.all(np.asarray(units) == 0)


def test_pro_rata_and_accounts_are_flagged_not_taken():
    params, static, state, _ = _setup(2)
    deficit = jnp.ones((static.n_assets, 2)) * 1e6
    pro = params._replace(policy=params.policy._replace(adl_rule=jnp.asarray(2, jnp.int32)))
    out = jax.jit(ladder_adl.deleverage)(state._replace(deficit=deficit), 7, pro)
    assert int(out.fallback) == 7
    off = params._replace(policy=params.policy._replace(adl_rule=jnp.asarray(0, jnp.int32)))
    out = jax.jit(ladder_adl.deleverage)(state._replace(deficit=deficit), 7, off)
    assert int(out.fallback) == FALLBACK_NEVER
    assert_close(out.totals.bad_debt, float(jnp.sum(deficit)), EXACT_RTOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_account_legs_the_queue_closes_are_the_dense_kernels(seed):
    """A book with isolated cohorts and cross-margin accounts (tests/model/test_account_book.py):
    after each of several events, the legs the ladder's record says are held equal the dense
    kernel's, and so do the isolated units and the totals."""
    _, params, static, _ = account_book_case(VARIANTS["queue"], seed)
    params = jax.jit(L.prepare, static_argnums=1)(params, static)
    state = ladder_kernel.init_state(params, static)
    tab, rng = params.ladder.accounts, np.random.default_rng(seed)
    _, b0 = policies.cap_leverage(params.book, params.policy)
    open_interest = float(jnp.sum(jnp.sum(tab.legs, 0) * params.market.price0))
    dense_step, ladder_step = jax.jit(stages.deleverage), jax.jit(ladder_adl.deleverage)
    cut_legs = 0
    for t in range(4):
        alive = state.alive & jnp.asarray(rng.random(state.alive.shape) < 0.95)
        x_mark = jnp.asarray(rng.normal(0.0, 0.04, static.n_assets))
        deficit = jnp.asarray(rng.uniform(0, 0.01, (static.n_assets, 2)) * open_interest)
        state = state._replace(alive=alive, x_mark=x_mark, deficit=deficit)
        legs = jnp.where(alive[:, None], account_book.held_legs(tab, state.adl.cut), 0.0)
        dense = stages.init_state(params, static)._replace(
            quantity=_open(params, state), bankrupt=b0, accounts=legs, x_mark=x_mark, deficit=deficit,
            variance=state.variance, gap=state.gap,
        )  # fmt: skip
        want = dense_step(dense, params)
        totals = state.totals
        state = ladder_step(state, t, params)
        got = jnp.where(alive[:, None], account_book.held_legs(tab, state.adl.cut), 0.0)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.accounts), f"event {t}: legs")
        np.testing.assert_array_equal(np.asarray(_open(params, state)), np.asarray(want.quantity))
        for name in ("adl_absorbed", "adl_notional", "bad_debt"):
            step = getattr(state.totals, name) - getattr(totals, name)
            assert_close(step, getattr(want.totals, name), EXACT_RTOL, open_interest, name)
        cut_legs += int(np.sum((np.asarray(legs) > 0) & (np.asarray(got) == 0)))
    assert cut_legs > 0, "the queue closed no account leg"
    assert int(state.fallback) == FALLBACK_NEVER
