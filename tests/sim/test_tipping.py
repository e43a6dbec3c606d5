"""`engine.sim.tipping`: the share of paths that a rounding-sized change of the draws flips."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from pydantic import ValidationError

from engine import simulate
from engine.config import build, forms
from engine.config.schema import Config
from engine.sim import devices
from engine.sim.rollout import sharded_rollout
from engine.sim.simulate import chunk_size
from engine.sim.tipping import NUDGE_ULPS, TIPPING_RTOL, TippingProbe, summary_line, tips
from tests.conftest import small_dict
from tests.helpers import F32_RTOL, assert_close

N_PATHS, SAMPLE = 256, 200


def near_threshold(**policy) -> dict:
    """A book on the edge: no insurance fund (every shortfall goes to ADL, whose queue order
    is decided by near ties), thin depth and five times the volatility, a -3% shock."""
    d = small_dict(
        run={"n_paths": N_PATHS, "tipping_paths": SAMPLE},
        scenario={"shock": -0.03, "shock_start": 6, "shock_steps": 2},
        policy={"insurance_fund_usd": 0.0, **policy},
    )
    for a in d["market"]["assets"].values():
        a["daily_volume_usd"] *= 0.3
        a["vol_annual"] *= 5
    return d


def calm() -> dict:
    """No shock, low leverage: no path comes near a liquidation."""
    d = near_threshold()
    d["scenario"] = {"shock": 0.0}
    d["book"]["leverage"] = [2, 3, 4, 5]
    for a in d["market"]["assets"].values():
        a["vol_annual"] /= 5
    return d


def test_tips_flags_relative_changes_beyond_the_tolerance():
    base = np.array([0.0, 1e9, 1e9, 1e9, 5.0, 0.0])
    moved = np.array([0.0, 1e9 * (1 + 0.5 * TIPPING_RTOL), 1e9 * (1 + 2 * TIPPING_RTOL), 0.0, 4.0, 1e-3])
    np.testing.assert_array_equal(tips(base, moved), [False, False, True, True, True, True])


def test_probe_joins_chunks_and_stops_at_the_sample():
    """A sample of 5 paths: the run's chunks hold 3 paths, the probe's 4 (its own size)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 2, 9)
    nudged = base.copy()
    nudged[[1, 4, 5]] *= 1.01  # paths 1 and 4 tip; path 5 is beyond the sample
    probe = TippingProbe(5, 1)
    assert probe.chunk(20, 2) == 6 and probe.chunk(12, 2) == 12  # its own, or the run's if not 2x
    for start in (0, 3, 6):
        probe.keep(0, start, {"liquidated_total": base[start : start + 3]})
    assert list(probe.starts(4)) == [0, 4]
    for start in probe.starts(4):
        probe.compare(0, start, {"liquidated_total": nudged[start : start + 4]})
    r = probe.result(0)
    assert r["tipping_sampled"] == 5
    assert_close(r["tipping_share"], 2 / 5, F32_RTOL)
    assert r["tipping_sampled"].dtype == np.int32
    assert TippingProbe(0, 1).result(0) == {}


@pytest.fixture(scope="module")
def points() -> list[Config]:
    return [Config.model_validate(d) for d in (near_threshold(), near_threshold(adl_rule="pro_rata"), calm())]


@pytest.fixture(scope="module")
def run(points) -> xr.Dataset:
    return simulate(points[0], points)


def test_share_is_positive_near_a_threshold_zero_when_calm_and_lower_without_the_adl_queue(run):
    share = run["tipping_share"].values
    assert share[0] > 0  # the ADL queue: which positions it closes flips with the draws
    assert share[1] < share[0]  # pro-rata ADL has no order to flip
    assert share[2] == 0.0
    np.testing.assert_array_equal(run["tipping_sampled"].values, SAMPLE)
    assert run["tipping_sampled"].dtype == np.int32


def test_share_is_that_of_the_kernel_rerun_with_nudged_draws(run, points):
    """Parity with the definition: the same compiled chunk, as drawn and nudged by hand."""
    mesh = devices.path_mesh()
    for i, cfg in enumerate(points):
        params, static = build.build(cfg)
        static = forms.specialise(static, [cfg])
        size = chunk_size(cfg, static, mesh.size)
        out = [
            np.asarray(
                sharded_rollout(
                    params, cfg.run.seed, 0, N_PATHS, static=static, n_paths=size, mesh=mesh, nudge=nudge
                )[0]["liquidated_total"]
            )[:SAMPLE]
            for nudge in (0.0, NUDGE_ULPS)
        ]
        assert float(run["tipping_share"][i]) == np.mean(tips(*out))


def test_same_run_same_share_and_zero_turns_the_probe_off(run, points):
    again = simulate(points[0], points)
    np.testing.assert_array_equal(again["tipping_share"].values, run["tipping_share"].values)
    off = [p.model_copy(update={"run": p.run.model_copy(update={"tipping_paths": 0})}) for p in points]
    ds = simulate(off[0], off)
    assert "tipping_share" not in ds and "tipping_sampled" not in ds
    xr.testing.assert_identical(ds["liquidated_total"], run["liquidated_total"])  # the run itself unchanged
    assert summary_line(ds) == ""


def test_summary_line_names_the_range_and_the_point_with_the_highest_share():
    cube = xr.Dataset(
        {"tipping_share": ("kind", [0.0, 0.025]), "tipping_sampled": ("kind", np.int32([200, 200]))},
        coords={"kind": ["none", "halt"]},
    )
    line = summary_line(cube)
    assert line.endswith("0.0% to 2.5% of 200 sampled, highest at kind=halt"), line
    assert summary_line(cube.isel(kind=[0])).endswith(": 0.0% of 200 sampled")


def test_sample_is_at_most_the_run_and_a_negative_count_is_refused(points):
    cfg = points[0].model_copy(update={"run": points[0].run.model_copy(update={"tipping_paths": 10**6})})
    ds = simulate(cfg)
    assert int(ds["tipping_sampled"][0]) == N_PATHS
    assert 0 < float(ds["tipping_share"][0]) < 1
    with pytest.raises(ValidationError, match="tipping_paths"):
        Config.model_validate(near_threshold() | {"run": {"tipping_paths": -1}})
