"""Run directories end to end: the cube and its metadata, the report, listing, and a run killed
with SIGKILL part-way and resumed, which must equal an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from engine import cli, runs

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "configs" / "quick.toml")
REQUIRED = (
    "liquidated_notional",
    "bad_debt",
    "insurance_fund_draw",
    "adl_notional",
    "trader_loss",
    "max_drawdown",
    "halted_steps",
)
LOSSES = ("liquidated_notional", "bad_debt", "insurance_fund_draw", "adl_notional", "trader_loss")


def invoke(*argv: str):
    result = CliRunner().invoke(cli.app, list(argv))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run of configs/quick.toml (two parts of two points)."""
    d = tmp_path_factory.mktemp("straight") / "run"
    invoke("run", QUICK, "--run-dir", str(d), "--no-progress")
    return d


def test_cube_has_every_variable_dimension_and_attribute(straight):
    cube = runs.load_cube(straight)  # time in minutes, with its CF units
    assert {"leverage_cap", "breaker_kind", "asset", "side", "quantile", "time"} <= set(cube.dims)
    assert list(cube.leverage_cap.values) == [20.0, 125.0]
    assert list(cube.breaker_kind.values) == ["none", "halt"]  # string axis, config order
    for name in REQUIRED:
        for var in (name, f"{name}_mean", f"{name}_mc_se"):
            assert var in cube.data_vars, var
            assert cube[var].dims[:2] == ("leverage_cap", "breaker_kind")
    assert cube["liquidated_notional"].dims == ("leverage_cap", "breaker_kind", "quantile", "asset", "side")
    for name in LOSSES:
        assert f"es99_{name}" in cube.data_vars
    assert "p_bad_debt" in cube.data_vars
    for var in list(cube.data_vars) + ["leverage_cap", "quantile", "time"]:
        assert "units" in cube[var].attrs and "long_name" in cube[var].attrs, var
    assert cube["liquidated_notional"].attrs["units"] == "USD"
    assert cube["max_drawdown"].attrs["units"] == "1"
    for key in ("Conventions", "title", "history", "source", "seed", "n_paths", "config"):
        assert key in cube.attrs, key
    assert cube.attrs["seed"] == 7 and cube.attrs["n_paths"] == 512
    assert 'name = "quick"' in cube.attrs["config"]
    point = cube.sel(leverage_cap=20, breaker_kind="halt")
    assert float(point.liquidated_notional_mean.sum()) > 0
    # the baseline's paired differences are zero, the others' are not
    base = cube.sel(leverage_cap=125, breaker_kind="none")
    assert float(base.liquidated_total_diff_mean) == 0.0
    assert float(point.liquidated_total_diff_mean) != 0.0


def test_manifest_records_run_and_parts(straight):
    m = json.loads((straight / "manifest.json").read_text())
    assert m["status"] == "complete" and m["seed"] == 7 and m["sweep"]["n_points"] == 4
    assert m["sweep"]["baseline_label"] == "leverage_cap=125, breaker_kind=none"
    assert {"jax", "xarray", "liqstress"} <= set(m["versions"])
    assert m["jax"]["backend"] and m["jax"]["devices"]
    assert "commit" in m["git"] and "dirty" in m["git"]
    assert all(p["status"] == "done" and (straight / p["file"]).is_file() for p in m["parts"])
    assert len(m["parts"]) == 2
    assert (straight / "config.toml").read_text().startswith('name = "quick"')


def test_report_and_plots_are_written(straight):
    text = (straight / "report.md").read_text()
    assert "Key metrics per policy" in text and "(baseline)" in text and "paired" in text
    for png in ("loss_distributions.png", "heatmap.png", "fan_charts.png"):
        f = straight / "plots" / png
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{png}" in text


def test_list_shows_the_run(straight):
    result = invoke("list", str(straight.parent))
    assert "quick" in result.output and "complete" in result.output and "2/2" in result.output


def test_compare_two_runs_marks_other_runs_unpaired(straight, tmp_path):
    result = invoke("compare", str(straight), str(straight / "cube.nc"), "--out", str(tmp_path / "cmp"))
    assert "liqstress compare" in result.output
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "unpaired" in text and (tmp_path / "cmp" / "plots" / "fan_charts.png").is_file()


def test_resume_of_a_complete_run_does_nothing(straight):
    before = (straight / "cube.nc").stat().st_mtime_ns
    result = invoke("run", "--resume", str(straight))
    assert "already complete" in result.output
    assert (straight / "cube.nc").stat().st_mtime_ns == before


def _wait_for(predicate, proc, deadline_s=300.0):
    """Poll until `predicate()`; fail if the process exits first (a deadline guards a hang)."""
    end = time.monotonic() + deadline_s
    while not predicate():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process exited"
        assert time.monotonic() < end, "the run did not reach the expected point"
        time.sleep(0.05)


def test_killed_and_resumed_run_equals_an_uninterrupted_one(straight, tmp_path):
    d = tmp_path / "killed"
    # one point per part and a different chunk size: neither may change the numbers
    argv = [
        sys.executable,
        "-m",
        "engine",
        "run",
        QUICK,
        "--run-dir",
        str(d),
        "--no-progress",
        "--set",
        "sweep.points_per_part=1",
        "--set",
        "run.chunk_size=256",
    ]
    env = {**os.environ, "LIQSTRESS_HOLD_PART": "1"}  # stop just before part 1's file is renamed
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:

        def part0_recorded_part1_in_flight():
            try:
                m = json.loads((d / "manifest.json").read_text())
            except (OSError, ValueError):
                return False
            return m["parts"][0]["status"] == "done" and any((d / "parts").glob(".part-0001.nc.*.tmp"))

        _wait_for(part0_recorded_part1_in_flight, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    m = json.loads((d / "manifest.json").read_text())
    assert [p["status"] for p in m["parts"]] == ["done", "pending", "pending", "pending"]
    assert not (d / "cube.nc").exists()
    info = {r.run_id: r for r in runs.list_runs(tmp_path)}["killed"]
    assert info.status == "interrupted"

    invoke("run", "--resume", str(d), "--no-progress")
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and len(m["sessions"]) == 2
    assert not list((d / "parts").glob(".*.tmp"))
    resumed, reference = xr.open_dataset(d / "cube.nc"), xr.open_dataset(straight / "cube.nc")
    assert set(resumed.data_vars) == set(reference.data_vars)
    for name in reference.data_vars:
        np.testing.assert_array_equal(resumed[name].values, reference[name].values, err_msg=name)
    xr.testing.assert_equal(resumed.coords.to_dataset(), reference.coords.to_dataset())


def test_runtime_failure_exits_1_keeps_finished_parts_and_resumes(straight, tmp_path, monkeypatch):
    from engine.errors import SimulationError

    real, calls = runs.simulate, []

    def failing_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SimulationError("non-finite values (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "simulate", failing_second_call)
    d = tmp_path / "failed"
    result = CliRunner().invoke(cli.app, ["run", QUICK, "--run-dir", str(d), "--no-progress", "--no-report"])
    assert result.exit_code == 1 and "injected" in result.output and "--resume" in result.output
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "failed" and [p["status"] for p in m["parts"]] == ["done", "pending"]
    monkeypatch.setattr(runs, "simulate", real)
    invoke("run", "--resume", str(d), "--no-progress", "--no-report")
    for name in ("liquidated_notional", "bad_debt_diff_mean", "mark_price_band"):
        np.testing.assert_array_equal(
            xr.open_dataset(d / "cube.nc")[name].values, xr.open_dataset(straight / "cube.nc")[name].values
        )
