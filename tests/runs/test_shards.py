"""Sharded runs (`liqstress run --shard i/n`): slices of one run directory, run one after the
other or at the same time, assemble the same cube as an unsharded run; `combine` and bad usage."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
from typer.testing import CliRunner

from engine import cli
from engine.runs import execute, listing
from tests.runs.holding import held_argv

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quick.toml")
ONE_POINT_PARTS = ("--set", "sweep.points_per_part=1")  # four parts: two for each of two shards
QUIET = ("--no-progress", "--no-report")


def cli_run(*argv: str, code: int = 0):
    result = CliRunner().invoke(cli.app, list(argv))
    assert result.exit_code == code, result.output
    return result


def shard_argv(d: Path, shard: str) -> list[str]:
    return ["run", QUICK, "--run-dir", str(d), "--shard", shard, *ONE_POINT_PARTS, *QUIET]


def assert_same_cube(got: xr.Dataset, ref: xr.Dataset) -> None:
    """Identical values, coordinates and attributes, but for the run's own id and history."""
    got, ref = got.copy(), ref.copy()
    for ds in (got, ref):
        ds.attrs = {k: v for k, v in ds.attrs.items() if k not in ("history", "run_id")}
    xr.testing.assert_identical(got, ref)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory) -> xr.Dataset:
    d = tmp_path_factory.mktemp("unsharded") / "run"
    cli_run("run", QUICK, "--run-dir", str(d), *ONE_POINT_PARTS, *QUIET)
    return execute.load_cube(d)


def test_shards_run_one_after_the_other_and_the_last_writes_the_cube(unsharded, tmp_path):
    d = tmp_path / "run"
    first = cli_run(*shard_argv(d, "1/2"))
    assert "other shards' parts are not done" in first.output and not (d / "cube.nc").exists()
    m = json.loads((d / "manifest.json").read_text())
    assert [p["status"] for p in m["parts"]] == ["pending", "done", "pending", "done"]

    early = cli_run("combine", str(d), code=2)
    assert "parts [0, 2] of 4 are not done" in early.output and "shards [0] of 2" in early.output
    assert not (d / "cube.nc").exists()

    cli_run(*shard_argv(d, "0/2"))
    assert_same_cube(execute.load_cube(d), unsharded)
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and m["shards"] == 2
    assert [s["shard"] for s in m["sessions"]] == ["1/2", "0/2"]
    assert "shard 0/2 by pid" in execute.load_cube(d).attrs["history"]

    assert "already complete" in cli_run("combine", str(d)).output
    # every shard of a run has the same n and the same config
    assert "split into 2 shards" in cli_run(*shard_argv(d, "0/3"), code=2).output
    other = ["run", QUICK, "--run-dir", str(d), "--shard", "0/2", "--seed", "8", *ONE_POINT_PARTS]
    assert "different config" in cli_run(*other, code=2).output


def test_shards_started_together_build_one_cube(unsharded, tmp_path):
    d = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", *shard_argv(d, s)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for s in ("0/2", "1/2")
    ]
    for p in procs:
        out, _ = p.communicate(timeout=600)  # a guard against a hang, not a timing check
        assert p.returncode == 0, out
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and all(p["status"] == "done" and p["sha256"] for p in m["parts"])
    assert sorted(s["shard"] for s in m["sessions"]) == ["0/2", "1/2"]
    assert all("finished" in s for s in m["sessions"])
    assert (d / "run.log").read_text().count("cube written") == 1
    assert_same_cube(execute.load_cube(d), unsharded)


def test_a_running_shard_excludes_itself_and_unsharded_sessions(tmp_path):
    d = tmp_path / "run"
    # shard 0/2 stops before part 0 is in place
    proc = subprocess.Popen(held_argv(0, *shard_argv(d, "0/2")), cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 300  # a guard against a hang, not a timing check
        while not any((d / "parts").glob(".part-0000.nc.*.tmp")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < end, "shard 0/2 did not reach part 0"
            time.sleep(0.05)
        assert "shard 0/2 is already running" in cli_run(*shard_argv(d, "0/2"), code=2).output
        assert "another process" in cli_run("run", "--resume", str(d), *QUIET, code=2).output
        assert "not done" in cli_run("combine", str(d), code=2).output
        assert {r.run_id: r.status for r in listing.list_runs(tmp_path)}["run"] == "running"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("shard", ["3/2", "x/2", "-1/2", "0/0", "1"])
def test_bad_shard_is_a_usage_error_and_writes_nothing(tmp_path, shard):
    result = cli_run(*shard_argv(tmp_path / "run", shard), code=2)
    assert "--shard" in result.output
    assert not any(tmp_path.iterdir())


def test_shard_needs_a_run_dir(tmp_path):
    result = cli_run("run", QUICK, "--shard", "0/2", "--runs-root", str(tmp_path / "runs"), code=2)
    assert "--shard needs --run-dir" in result.output
    assert not any(tmp_path.iterdir())
