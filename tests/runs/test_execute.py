"""Run directories end to end: the cube and its metadata, the report, listing, and a run killed
with SIGKILL part-way and resumed, which must equal an uninterrupted run."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from engine import cli
from engine.config.errors import ConfigError
from engine.config.files import load_study
from engine.report import compare
from engine.runs import execute, listing, rundir
from engine.sim import distributed
from tests.runs.holding import held_argv

ROOT = Path(__file__).resolve().parents[2]
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
QUIET = ("--no-progress", "--no-report")
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
    cube = execute.load_cube(straight)  # time in minutes, with its CF units
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
    argv = held_argv(  # stopped just before part 1's file is renamed
        1,
        "run",
        QUICK,
        "--run-dir",
        str(d),
        "--no-progress",
        "--set",
        "sweep.points_per_part=1",
        "--set",
        "run.chunk_size=256",
    )
    proc = subprocess.Popen(argv, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
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
    info = {r.run_id: r for r in listing.list_runs(tmp_path)}["killed"]
    assert info.status == "interrupted"
    # the killed session's time counts, up to its last finished part
    assert m["timings"]["elapsed_s"] == m["sessions"][0]["elapsed_s"] >= m["parts"][0]["elapsed_s"] > 0
    # as if killed while writing the cube or the manifest
    stale = [d / f".cube.nc.{proc.pid}.tmp", d / f".manifest.json.{proc.pid}.tmp"]
    for f in stale:
        f.write_bytes(b"torn")

    invoke("run", "--resume", str(d), "--no-progress")
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and len(m["sessions"]) == 2
    assert not list((d / "parts").glob(".*.tmp")) and not any(f.exists() for f in stale)
    t, sessions = m["timings"], m["sessions"]
    assert t["elapsed_s"] == pytest.approx(sum(s["elapsed_s"] for s in sessions), abs=0.01)
    assert t["compute_s"] == pytest.approx(sum(p["elapsed_s"] for p in m["parts"]), abs=0.01)
    assert t["elapsed_s"] >= t["compute_s"]
    resumed, reference = xr.open_dataset(d / "cube.nc"), xr.open_dataset(straight / "cube.nc")
    assert set(resumed.data_vars) == set(reference.data_vars)
    for name in reference.data_vars:
        np.testing.assert_array_equal(resumed[name].values, reference[name].values, err_msg=name)
    xr.testing.assert_equal(resumed.coords.to_dataset(), reference.coords.to_dataset())


def test_runtime_failure_exits_1_keeps_finished_parts_and_resumes(straight, tmp_path, monkeypatch):
    from engine.config.errors import SimulationError

    real, calls = distributed.simulate, []

    def failing_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SimulationError("non-finite values (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "simulate", failing_second_call)
    d = tmp_path / "failed"
    result = CliRunner().invoke(cli.app, ["run", QUICK, "--run-dir", str(d), "--no-progress", "--no-report"])
    assert result.exit_code == 1 and "injected" in result.output and "--resume" in result.output
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "failed" and [p["status"] for p in m["parts"]] == ["done", "pending"]
    monkeypatch.setattr(distributed, "simulate", real)
    invoke("run", "--resume", str(d), "--no-progress", "--no-report")
    for name in ("liquidated_notional", "bad_debt_diff_mean", "mark_price_band"):
        np.testing.assert_array_equal(
            xr.open_dataset(d / "cube.nc")[name].values, xr.open_dataset(straight / "cube.nc")[name].values
        )


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*lock"))
    return dst


def edit_manifest(d: Path, change) -> None:
    m = json.loads((d / "manifest.json").read_text())
    change(m)
    (d / "manifest.json").write_text(json.dumps(m))


def snapshot(d: Path) -> dict:
    """Every file under `d` with its bytes: to check that nothing was written."""
    return {f.relative_to(d): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def test_list_shows_damaged_manifests_as_unreadable(straight, tmp_path):
    copy_run(straight, tmp_path / "good")
    for name, text in [("array", "[1, 2]"), ("partial", '{"format": 1, "parts": []}'), ("torn", '{"form')]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / ".good.0123.new").mkdir()  # a run directory being created
    shutil.copy(straight / "manifest.json", tmp_path / ".good.0123.new")
    status = {r.path.name: r.status for r in listing.list_runs(tmp_path)}
    bad = {"array": "unreadable", "partial": "unreadable", "torn": "unreadable"}
    assert status == {"good": "complete", **bad}
    out = invoke("list", str(tmp_path)).output
    assert out.count("unreadable") == 3 and "complete" in out


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda m: m["parts"][0].pop("points"), "parts.0.points"),
        (lambda m: m["timings"].pop("elapsed_s"), "timings.elapsed_s"),
        (lambda m: m.pop("sessions"), "sessions"),
        (lambda m: m["parts"][1].update(index=0), "parts.1 must have index 1"),
        (lambda m: m.update(parts={"0": 1}), "parts"),
    ],
)
def test_resume_of_a_damaged_manifest_exits_2_naming_the_key(straight, tmp_path, change, named):
    d = copy_run(straight, tmp_path / "run")
    edit_manifest(d, change)
    before = snapshot(d)
    result = CliRunner().invoke(cli.app, ["run", "--resume", str(d), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "manifest.json is damaged" in result.output and named in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert snapshot(d) == before


def test_a_run_directory_filled_meanwhile_is_not_overwritten(tmp_path, monkeypatch):
    """The claim step alone: a second run whose check passed before the first one existed."""
    d = tmp_path / "run"
    d.mkdir()  # an existing empty --run-dir is fine
    first = rundir.create_run(load_study(QUICK, ["run.n_paths=256"]), d, source="a", command="a")
    assert first.path == d and json.loads((d / "manifest.json").read_text())["n_paths"] == 256
    before = snapshot(d)
    monkeypatch.setattr(rundir, "check_new_run_dir", lambda path: None)  # both passed the check
    with pytest.raises(ConfigError, match="another process wrote there"):
        rundir.create_run(load_study(QUICK, []), d, source="b", command="b")
    assert snapshot(d) == before
    assert [f.name for f in tmp_path.iterdir()] == ["run"]  # the loser's temporary is gone


def test_runs_started_together_in_one_directory_leave_one_consistent_run(tmp_path, monkeypatch):
    """Two threads race to create each of 8 directories: exactly one wins each, the loser
    writes nothing, and the directory holds the winner's config and manifest."""
    check = rundir.check_new_run_dir

    def slow_check(path):  # as on a loaded machine: both see the directory empty
        check(path)
        time.sleep(0.05)

    monkeypatch.setattr(rundir, "check_new_run_dir", slow_check)
    studies = [load_study(QUICK, [f"run.n_paths={n}"]) for n in (256, 512)]
    for k in range(8):
        d = tmp_path / f"run{k}"
        start, outcome = threading.Barrier(2), {}

        def create(study, d=d, start=start, outcome=outcome):
            start.wait()
            try:
                rundir.create_run(study, d, source="race", command="race")
                outcome[study.config.run.n_paths] = "won"
            except ConfigError as err:
                outcome[study.config.run.n_paths] = str(err)

        threads = [threading.Thread(target=create, args=(s,)) for s in studies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [n for n, o in outcome.items() if o == "won"]
        assert len(winners) == 1, outcome
        m = json.loads((d / "manifest.json").read_text())
        assert m["n_paths"] == winners[0] and f"n_paths = {winners[0]}" in (d / "config.toml").read_text()
        assert sorted(f.name for f in d.iterdir()) == ["config.toml", "manifest.json", "parts"]
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"run{k}" for k in range(8)]


def test_two_cli_runs_into_one_new_directory(tmp_path):
    """The issue's case end to end: one run completes consistently, the other exits 2."""
    d = tmp_path / "run"
    one_point = ("--set", "sweep.policy.leverage_cap=[125]", "--set", 'sweep.policy.breaker.kind=["none"]')
    argv = [sys.executable, "-m", "engine", "run", QUICK, "--run-dir", str(d), *one_point, *QUIET]
    procs = [
        subprocess.Popen(
            [*argv, "--paths", n],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in ("256", "512")
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]  # a guard against a hang
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)]
    assert "--run-dir" in loser and "Traceback" not in loser
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and len(m["sessions"]) == 1
    assert int(execute.load_cube(d).attrs["n_paths"]) == m["n_paths"]


def _same_cube(d: Path, reference: Path) -> None:
    got, ref = xr.open_dataset(d / "cube.nc"), xr.open_dataset(reference / "cube.nc")
    assert set(got.data_vars) == set(ref.data_vars)
    for name in ref.data_vars:
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)


@pytest.mark.parametrize("command", ["resume", "combine"])
def test_a_truncated_cube_is_rebuilt_from_the_parts(straight, tmp_path, command):
    d = copy_run(straight, tmp_path / "run")
    f = d / "cube.nc"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    argv = ["run", "--resume", str(d), "--no-progress"] if command == "resume" else ["combine", str(d)]
    result = invoke(*argv, "--no-report")
    assert "cube.nc is missing or damaged; rebuilding it from the parts" in result.output
    _same_cube(d, straight)
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and m["cube_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert "cube rebuilt from the parts" in (d / "run.log").read_text()
    assert "already complete" in invoke(*argv, "--no-report").output  # intact now: left alone


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_report_exits_130_and_resume_finishes_it(straight, tmp_path, monkeypatch, signum):
    d = copy_run(straight, tmp_path / "run")
    shutil.rmtree(d / "plots")
    (d / "report.md").unlink()
    (d / "cube.nc").unlink()  # `--resume` rebuilds it, then writes the report

    def interrupted(cubes, out):
        (out / "plots").mkdir()
        os.kill(os.getpid(), signum)  # a real signal, as from Ctrl-C or `kill`
        time.sleep(30)

    def unhandled(*_):  # SIGTERM not handled by the CLI: fail the test, not pytest
        raise AssertionError("SIGTERM reached the default handler")

    monkeypatch.setattr(compare, "write_report", interrupted)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        result = CliRunner().invoke(cli.app, ["run", "--resume", str(d), "--no-progress"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 130, result.output
    assert "interrupted while writing the report" in result.output and "--resume" in result.output
    assert json.loads((d / "manifest.json").read_text())["report"] == "pending"

    monkeypatch.undo()
    result = invoke("run", "--resume", str(d), "--no-progress")
    assert "already complete" in result.output and "writing it" in result.output
    assert json.loads((d / "manifest.json").read_text())["report"] == "done"
    assert (d / "report.md").read_text() == (straight / "report.md").read_text()  # both runs are "run"
    assert {f.name for f in (d / "plots").iterdir()} == {f.name for f in (straight / "plots").iterdir()}
    assert "writing it" not in invoke("run", "--resume", str(d), "--no-progress").output


def test_an_interrupt_between_the_cube_and_the_report_leaves_it_pending(straight, tmp_path, monkeypatch):
    """The cube is complete and the report not begun (here: the summary is being printed): the
    manifest already says the report is pending, so `--resume` writes it."""
    d = copy_run(straight, tmp_path / "run")
    shutil.rmtree(d / "plots")
    (d / "report.md").unlink()
    (d / "cube.nc").unlink()

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.run, "show_summary", interrupted)
    result = CliRunner().invoke(cli.app, ["run", "--resume", str(d), "--no-progress"])
    assert result.exit_code == 130, result.output
    assert json.loads((d / "manifest.json").read_text())["report"] == "pending"
    monkeypatch.undo()
    result = invoke("run", "--resume", str(d), "--no-progress")
    assert "writing it" in result.output and (d / "report.md").is_file()


def test_a_full_disk_is_named_cleaned_up_and_resumed(straight, tmp_path, monkeypatch):
    real = xr.Dataset.to_netcdf

    def disk_full_at_part_1(ds, path, *args, **kwargs):
        if Path(path).name.startswith(".part-0001.nc."):
            Path(path).write_bytes(b"\x89HDF\r\n" + bytes(4096))  # netCDF's partial file
            raise RuntimeError("NetCDF: HDF error")
        return real(ds, path, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", disk_full_at_part_1)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    d = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["run", QUICK, "--run-dir", str(d), "--no-progress", "--no-report"])
    assert result.exit_code == 1 and "no space left on device" in result.output, result.output
    log = (d / "run.log").read_text()
    assert "no space left on device" in log and "HDF error" not in log
    assert not list((d / "parts").glob(".*.tmp"))  # removed at once
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "failed" and [p["status"] for p in m["parts"]] == ["done", "pending"]

    # Temporaries of killed processes hold the last of the space: the resume's first manifest
    # write fails unless they are removed before it.
    monkeypatch.undo()
    stale = [d / ".cube.nc.99999999.tmp", d / ".manifest.json.99999999.tmp", d / ".config.toml.99999999.tmp"]
    stale.append(d / "parts" / ".part-0001.nc.99999999.tmp")
    for f in stale:
        f.write_bytes(bytes(1024))
    real_write = rundir.write_text_atomic

    def full_while_stale(path, text):
        if any(f.exists() for f in stale):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, text)

    monkeypatch.setattr(rundir, "write_text_atomic", full_while_stale)
    invoke("run", "--resume", str(d), "--no-progress", "--no-report")
    assert not any(f.exists() for f in stale)
    _same_cube(d, straight)
