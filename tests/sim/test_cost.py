"""`engine.sim.cost`: device calls sized to about a second of work, and the kernel form named
with what forced it and what it costs."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import forms
from engine.config.schema import Config
from engine.model.params import Static
from engine.sim import cost
from engine.sim import simulate as S  # the module, not the function `engine.simulate`
from engine.sim.reduce import ATOM
from tests.conftest import small_dict

BOOK = Static(n_assets=2, n_cohorts=1024, steps=288, rounds=8, max_window=16, fan_stride=3, fan_points=96)


def test_path_step_cost_by_form_and_book():
    whole = dataclasses.replace(BOOK, whole_only=True)
    ladder = dataclasses.replace(whole, ladder=3)
    accounts = dataclasses.replace(BOOK, n_accounts=500)
    assert cost.path_step_seconds(ladder) == pytest.approx(2 * 4e-6)
    assert cost.path_step_seconds(whole) == pytest.approx(2 * (1e-6 + 1024 * 30e-9))
    assert cost.path_step_seconds(BOOK) == pytest.approx(2 * (1e-6 + 1024 * 200e-9))
    assert cost.path_step_seconds(accounts) == pytest.approx(2 * (1e-6 + 1024 * 200e-9 + 500 * 300e-9))
    derisk = dataclasses.replace(whole, derisk=True)
    assert cost.path_step_seconds(derisk) == pytest.approx(2 * (1e-6 + 1024 * 70e-9))
    assert cost.path_step_seconds(BOOK, accelerator=True) == cost.path_step_seconds(BOOK) / 100


def test_calls_do_about_a_second_of_work_in_even_segments():
    # 2 x 1,024 cohorts, general cascade: 0.412 ms per path-step; 256 paths: 0.105 s per step
    assert cost.call_steps(BOOK, 256) == 9  # at most 9 steps (0.95 s): 32 calls of 9
    assert cost.call_steps(dataclasses.replace(BOOK, steps=20), 256) == 7  # 3 calls of 7, not 9, 9, 2
    huge = dataclasses.replace(BOOK, n_cohorts=42_010, n_accounts=35_651)
    assert cost.call_steps(huge, 256) == 1  # a step of the chunk is over the target: one per call
    cheap = dataclasses.replace(BOOK, n_cohorts=8, whole_only=True, steps=5000)
    assert cost.call_steps(cheap, 64) == 1000  # at most SEGMENT_STEPS (1,024): 5 calls of 1,000
    assert cost.call_paths(huge) == 26


def test_chunks_hold_no_more_paths_than_a_call_takes():
    """On an accelerator (memory budget per device) a book of 300,000 account cohorts: 1.8 ms
    per path-step at the assumed 100x, 554 paths per second; 10x fewer accounts: the memory
    budget decides."""
    run = {**small_dict()["run"], "n_paths": 10_000, "memory_budget_mb": 100_000}
    cfg = Config.model_validate(small_dict(run=run))
    accounts = dataclasses.replace(BOOK, n_accounts=300_000)
    assert cost.call_paths(accounts, accelerator=True) == 554
    assert S.chunk_size(cfg, accounts, 2, per_device_budget=True) == 2 * ATOM
    fewer = dataclasses.replace(BOOK, n_accounts=30_000)
    # a call takes 21 atoms; 10,000 paths then run as two even chunks of 20, not 21 and a padded 19
    assert S.chunk_size(cfg, fewer, 2, per_device_budget=True) == 20 * ATOM


def _note(**sections) -> str:
    cfg = Config.model_validate(small_dict(**sections))
    return cost.kernel_note([forms.point_static(cfg)], [cfg])


def test_kernel_note_names_what_forces_the_dense_kernel():
    run = small_dict()["run"]
    assert _note(run={**run, "kernel": "ladder"}) == "kernel: ladder (positions closed whole, the fast path)"
    # the queue's ADL runs on the ladder; pro rata's paths go to the dense kernel, and the plan says so
    pro_rata = _note(run={**run, "kernel": "ladder"}, policy={"adl_rule": "pro_rata"})
    assert pro_rata == (
        "kernel: ladder (positions closed whole, the fast path; a path that needs pro-rata ADL is "
        "rerun on the dense kernel)"
    )
    assert _note(run={**run, "kernel": "dense"}).startswith(
        'kernel: dense, for run.kernel = "dense"; about 0.6x'
    )
    partial = _note(policy={"partial_liquidation": 0.5})
    assert partial.startswith(
        "kernel: dense general, for partial liquidation (policy.partial_liquidation = 0.5); "
    )
    assert "about 2.7x the cost per path-step of the ladder" in partial
    derisk = _note(market={**small_dict()["market"], "derisk": {"vol_rate_per_day": 1.0}})
    # voluntary closing runs on the ladder: a small run of it is dense for its size alone
    assert derisk.startswith("kernel: dense, for a small run") and "about 1.1x" in derisk
    # stop orders (book.stops) run on the ladder: only the run's size keeps this one off it
    accounts = dataclasses.replace(BOOK, n_accounts=500, n_collateral=1, stops=True)
    assert cost.kernel_note([accounts], [Config.model_validate(small_dict())]) == (
        "kernel: dense general, for a small run (the ladder pays from 5,000,000,000 paths x steps x cohorts; "
        'run.kernel = "ladder" forces it); about 89.0x the cost per path-step of the ladder '
        "(README: Kernel forms and their cost)"
    )
    on_ladder = dataclasses.replace(BOOK, n_accounts=500, n_collateral=1, ladder=2, ladder_cells=64)
    assert cost.kernel_note([on_ladder], [Config.model_validate(small_dict())]) == (
        "kernel: ladder (positions closed whole; 500 account cohorts in one shared table, the fast path)"
    )
    with_stops = dataclasses.replace(on_ladder, stops=True)
    assert cost.kernel_note([with_stops], [Config.model_validate(small_dict())]) == (
        "kernel: ladder (positions closed whole; stop orders in rung groups of their own; 500 account "
        "cohorts in one shared table, the fast path)"
    )


def test_the_plan_names_each_points_form_where_they_differ():
    cfg = Config.model_validate(small_dict(run={**small_dict()["run"], "kernel": "dense"}))
    partial = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"partial_liquidation": 0.2})})
    note = cost.kernel_note([forms.point_static(p) for p in (cfg, partial)], [cfg, partial])
    assert note.startswith('kernel: dense at point(s) 0, for run.kernel = "dense"; about ')
    assert (
        "; dense general at point(s) 1, for partial liquidation (policy.partial_liquidation = 0.2); " in note
    )
