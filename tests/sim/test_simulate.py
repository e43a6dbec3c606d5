"""`engine.simulate`: chunking does not change numbers, seeds decide them, sweeps do not recompile."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from engine import simulate
from engine.config import build, forms
from engine.config.schema import Config
from engine.sim import simulate as simulate_module
from engine.sim.rollout import rollout, rollout_chunk
from tests.conftest import small_dict

RUN = {"n_paths": 700, "seed": 5, "steps": 24, "cascade_rounds": 6, "max_window": 16, "fan_points": 6}


def config(**run) -> Config:
    return Config.model_validate(small_dict(run={**RUN, **run}, policy={"insurance_fund_usd": 2e8}))


def test_chunk_size_does_not_change_any_number():
    """256 (3 chunks, last padded), 512 and auto (one chunk of 768): bitwise equal Datasets."""
    runs = [simulate(config(chunk_size=c)) for c in (256, 512, 0)]
    for ds in runs[1:]:
        xr.testing.assert_identical(ds, runs[0])


def test_calls_of_any_number_of_steps_give_the_same_numbers_and_report_each_call(monkeypatch):
    """The run in calls of 5 steps (the last of its 5 calls overrunning the 24 steps) and in
    calls sized by the cost model (one call of 24 here): bitwise equal Datasets; progress
    comes after every call, counting path-points by the share of steps done."""
    cfg = config(n_paths=256, tipping_paths=0)
    whole = simulate(cfg)
    events = []
    monkeypatch.setattr(simulate_module.cost, "call_steps", lambda static, n, accelerator: 5)
    xr.testing.assert_identical(simulate(cfg, progress=events.append), whole)
    assert [e.paths_done for e in events] == [256 * min(t, 24) / 24 for t in (5, 10, 15, 20, 25)]
    assert {e.paths_total for e in events} == {256}


def test_same_seed_same_numbers_other_seed_other_numbers():
    a, b, c = (simulate(config(n_paths=256, seed=s)) for s in (5, 5, 6))
    xr.testing.assert_identical(a, b)
    assert not np.array_equal(a.liquidated_total_mean.values, c.liquidated_total_mean.values)
    assert not np.array_equal(a.mark_price_band.values, c.mark_price_band.values)


def test_other_policy_values_do_not_recompile():
    cfg = config(n_paths=256)
    params, static = build.build(cfg)
    rollout(params, 5, 0, 256, static=static, n_paths=256)
    before = rollout_chunk._cache_size()
    for policy in (
        {"leverage_cap": 20.0, "leverage_cap_mode": "add_margin", "adl_rule": "pro_rata"},
        {"breaker": {"kind": "halt"}, "partial_liquidation": 0.5, "dynamic_margin": 1.0},
        {"breaker": {"kind": "band"}, "backstop_capacity_usd": 1e9, "insurance_fund_usd": 0.0},
    ):
        other = Config.model_validate(small_dict(run={**RUN, "n_paths": 256}, policy=policy))
        p, s = build.build(other)
        assert s == static
        rollout(p, 6, 256, 256, static=s, n_paths=256)
    # a value that bypassed validation (model_copy with an int) gives the same leaf types
    unvalidated = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"leverage_cap": 20})})
    rollout(build.build(unvalidated)[0], 6, 256, 256, static=static, n_paths=256)
    assert rollout_chunk._cache_size() == before


def test_kernel_forms_are_chosen_per_point(monkeypatch):
    """`simulate` runs `run_cascade_whole` for a point that closes whole positions and the
    general cascade for one that liquidates partially, in the same call."""
    seen = []
    real = simulate_module.Rollout

    def spy(params, seed, start, n_valid, static, *args):
        seen.append(static.whole_only)
        return real(params, seed, start, n_valid, static, *args)

    monkeypatch.setattr(simulate_module, "Rollout", spy)
    cfg = config(n_paths=256)
    partial = Config.model_validate(
        small_dict(
            run={**RUN, "n_paths": 256}, policy={"insurance_fund_usd": 2e8, "partial_liquidation": 0.5}
        )
    )
    simulate(cfg, [cfg, partial])
    assert seen == [True, False] * 2  # the run, then the tipping probe's rerun


@pytest.mark.parametrize("kernel", ["auto", "ladder"])
def test_each_point_runs_the_form_the_plan_names_and_the_cube_records(monkeypatch, kernel):
    """The form every point ran in (seen in the compiled calls, the ladder's dense reruns of the
    paths it hands over aside) is the one the run plan names for it and `kernel_form` records:
    a form that changed in silence fails here."""
    ran: dict[int, set[str]] = {}
    real = simulate_module.Rollout

    def spy(params, seed, start, n_valid, static, n, mesh, steps, nudge, offsets=None, count_from=None):
        if offsets is None:  # not a fallback rerun
            ran.setdefault(float(params.policy.partial_fraction), set()).add(forms.form(static))
        return real(params, seed, start, n_valid, static, n, mesh, steps, nudge, offsets, count_from)

    monkeypatch.setattr(simulate_module, "Rollout", spy)
    run = {**RUN, "n_paths": 256, "kernel": kernel}
    whole = Config.model_validate(small_dict(run=run, policy={"insurance_fund_usd": 2e8}))
    points = [whole]
    if kernel == "auto":  # a small run: dense for the whole point, the general cascade for the other
        points.append(
            whole.model_copy(update={"policy": whole.policy.model_copy(update={"partial_liquidation": 0.5})})
        )
    want = ["ladder"] if kernel == "ladder" else ["dense", "dense general"]
    ds = simulate(whole, points)
    assert [ran[float(p.policy.partial_liquidation)] for p in points] == [{f} for f in want]
    flags = ds["kernel_form"].attrs["flag_meanings"].split()
    assert [flags[int(v)].replace("_", " ") for v in ds["kernel_form"].values] == want
    note = simulate_module.plan(whole, points).kernel
    for i, f in enumerate(want):
        assert (f"{f} at point(s) {i}," if len(want) > 1 else f"kernel: {f} ") in note, note


def test_a_points_numbers_do_not_depend_on_the_other_points_of_the_call():
    """The baseline alone, and next to a point with a non-integer dof (gamma draws) and one
    with partial liquidation: the same statistics (what a sweep split into parts relies on)."""
    cfg = config(n_paths=256)
    others = [
        Config.model_validate(
            small_dict(
                run={**RUN, "n_paths": 256}, market={"tail_dof": 3.5}, policy={"insurance_fund_usd": 2e8}
            )
        ),
        Config.model_validate(
            small_dict(
                run={**RUN, "n_paths": 256}, policy={"insurance_fund_usd": 2e8, "partial_liquidation": 0.5}
            )
        ),
    ]
    alone = simulate(cfg)
    mixed = simulate(cfg, [cfg, *others])
    xr.testing.assert_identical(alone.isel(point=0), mixed.isel(point=0))
    assert not np.array_equal(mixed.liquidated_total_mean.values[0], mixed.liquidated_total_mean.values[1])
