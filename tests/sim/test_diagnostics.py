"""Kernel limits that bit (a cascade out of rounds, a truncated jump count) are counted per
point in the cube and surfaced as warnings in the terminal and the report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import simulate
from engine.cli.run import show_summary
from engine.config import build
from engine.config.schema import Config
from engine.report import compare as R
from tests.conftest import small_dict

RUN = {"n_paths": 256, "seed": 3, "steps": 24, "cascade_rounds": 1, "max_window": 16, "fan_points": 6}
CALM = {"shock": 0.0, "shock_start": 4, "shock_steps": 1}
# P(more than JUMP_MAX jumps in a step) of about 2%: a third of the paths see one in 24 steps
JUMPS_PER_STEP = 1.5


def point(scenario: dict, jumps_per_day: float = 0.0, vol: float = 0.05) -> Config:
    d = small_dict(run=RUN, scenario=scenario)
    d["market"]["jump_intensity_per_day"] = jumps_per_day
    for a in d["market"]["assets"].values():
        a.update(vol_annual=vol, jump_mean=0.0, jump_std=0.001)
    return Config.model_validate(d)


@pytest.fixture(scope="module")
def cube():
    """Points: a big shock with one cascade round; a calm market; a calm market with many jumps."""
    shocked = point({"shock": -0.15, "shock_start": 4, "shock_steps": 1}, vol=0.5)
    calm = point(CALM)
    jumpy = point(CALM, jumps_per_day=JUMPS_PER_STEP * calm.steps_per_day)
    return simulate(shocked, [shocked, calm, jumpy]), jumpy


def test_counts_reach_the_cube_as_float64_with_units(cube):
    ds, _ = cube
    for name in ("n_cascade_unconverged", "n_jump_truncated"):
        assert ds[name].dtype == np.float64 and ds[name].dims == ("point",)
        assert ds[name].attrs["units"] == "1" and ds[name].attrs["long_name"]
    unconverged = ds.n_cascade_unconverged.values
    assert unconverged[0] > 0 and unconverged[1] == 0
    # the count is the number of paths with residual notional left when the rounds ran out
    np.testing.assert_array_equal(unconverged, np.rint(ds.p_residual_notional_positive.values * 256))


def test_truncated_jump_counts_match_the_poisson_tail(cube):
    ds, jumpy = cube
    p_step = build.jump_truncation(jumpy)
    assert 0.005 < p_step < 0.05
    q = 1.0 - (1.0 - p_step) ** RUN["steps"]  # P(a path has at least one truncated step)
    n = RUN["n_paths"]
    assert list(ds.n_jump_truncated.values[:2]) == [0, 0]
    assert abs(int(ds.n_jump_truncated[2]) - n * q) < 4 * math.sqrt(n * q * (1 - q))


def test_terminal_and_report_warn_with_path_counts_and_the_fix(cube, capsys, tmp_path):
    ds, _ = cube
    one = ds.isel(point=0).assign_attrs(n_paths=RUN["n_paths"])
    n = int(one.n_cascade_unconverged)
    show_summary(one, "shocked")
    err = capsys.readouterr().err
    assert f"warning: {n} paths ran out of cascade rounds" in " ".join(err.split())
    assert "raise `run.cascade_rounds`" in " ".join(err.split())
    text = R.write_report([("shocked", one)], tmp_path).read_text()
    assert "## Warnings" in text and f"shocked: {n} of 256" in text and "run.cascade_rounds" in text
    calm = ds.isel(point=1).assign_attrs(n_paths=RUN["n_paths"])
    show_summary(calm, "calm")
    assert "warning" not in capsys.readouterr().err
    assert "## Warnings" not in R.write_report([("calm", calm)], tmp_path / "calm").read_text()
