"""Two processes joined by JAX's distributed runtime (CPU collectives over loopback) produce
the same cube as one process, and `liqstress run` across them writes one run directory from
process 0 only, resumes it alike on both and ends both with process 0's exit code."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from engine import cli, simulate
from engine.config.errors import SimulationError
from engine.config.schema import Config
from engine.sim import distributed
from tests.conftest import small_dict

ROOT = Path(__file__).resolve().parents[2]
# 600 paths: two chunks of 512 over 2 global devices, the second one padded.
CFG = small_dict(run={"n_paths": 600, "steps": 12, "fan_points": 4, "chunk_size": 512, "cascade_rounds": 4})
# The same sizes for `liqstress run`: configs/quick.toml's 2x2 grid in two parts.
RUN_ARGS = [str(ROOT / "configs" / "quick.toml"), "--paths", "600", "--no-progress", "--no-report"] + [
    a for s in ("run.chunk_size=512", "run.steps=12", "run.fan_points=4") for a in ("--set", s)
]
# Cube attributes that name the run or its sessions (directory, pids), not its numbers.
RUN_ATTRS = ("history", "run_id")

WORKER = """
import json, sys
from engine.sim import distributed
distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))
import jax
import engine
from engine.config.schema import Config
assert jax.process_count() == 2 and len(jax.devices()) == 2
ds = engine.simulate(Config.model_validate(json.loads(sys.argv[3])))
if distributed.is_writer():
    ds.to_netcdf(sys.argv[4])
distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(
    argv: Callable[[str, int], list[str]],
    cwd: Path,
    port: int | None = None,
    env_of: Callable[[str, int], dict] = lambda port, i: {},
) -> list[subprocess.Popen]:
    """Processes 0 and 1 (command `argv(port, i)`, extra environment `env_of(port, i)`) of one
    distributed runtime on a loopback port (`port`, or a free one), one CPU device each,
    started in `cwd`."""
    env = {
        **os.environ,
        "LIQSTRESS_CPU_DEVICES": "1",
        "LIQSTRESS_CACHE_DIR": str(cwd / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("XLA_FLAGS", None)
    port = str(port or _free_port())
    return [
        subprocess.Popen(
            argv(port, i),
            env={**env, **env_of(port, i)},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """Exit code, stdout and stderr of each process, killing them after 240 s."""
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, results)]


def _two_processes(argv, cwd: Path, port: int | None = None, env_of=lambda port, i: {}):
    """`_start_two` run to the end: exit code, stdout and stderr of processes 0 and 1."""
    return _finish(_start_two(argv, cwd, port, env_of))


def _liqstress_argv(args: list[str]) -> Callable[[str, int], list[str]]:
    """`liqstress run ARGS` as process i of a two-process run on `port`."""
    return lambda port, i: [
        sys.executable,
        "-m",
        "engine",
        "run",
        *args,
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
        "--process-id",
        str(i),
    ]


def _liqstress_run(args: list[str], cwd: Path) -> list[tuple[int, str, str]]:
    """`liqstress run ARGS` as processes 0 and 1 of a two-process run, to the end."""
    return _two_processes(_liqstress_argv(args), cwd)


def _assert_silent(out: str, err: str) -> None:
    """Process 1 printed none of what process 0 prints (summary, progress, errors)."""
    for text in ("run directory", "part", "error"):
        assert text not in out + err, out + err


def _assert_same_cube(path: Path, reference: Path) -> None:
    """Equal cubes, variables and attributes, but for the attributes naming the run."""
    with xr.open_dataset(path) as a, xr.open_dataset(reference) as b:
        for ds in (a, b):
            for key in RUN_ATTRS:
                ds.attrs.pop(key)
        xr.testing.assert_identical(a.load(), b.load())


def _files(run_dir: Path) -> set[str]:
    return {str(f.relative_to(run_dir)) for f in run_dir.rglob("*") if f.is_file()}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The run directory of a one-process `liqstress run RUN_ARGS`."""
    d = tmp_path_factory.mktemp("single") / "run"
    result = CliRunner().invoke(cli.app, ["run", *RUN_ARGS, "--run-dir", str(d)])
    assert result.exit_code == 0, result.output
    return d


# The ladder kernel with paths handed to the dense kernel (`engine.sim.fallback`: pro-rata ADL)
# across processes.
LADDER_CFG = {
    **CFG,
    "run": {**CFG["run"], "kernel": "ladder"},
    "policy": {**CFG["policy"], "insurance_fund_usd": 2e7, "adl_rule": "pro_rata"},
}


@pytest.mark.parametrize("cfg", [CFG, LADDER_CFG], ids=["dense", "ladder"])
def test_two_processes_equal_one(tmp_path, cfg):
    out = tmp_path / "cube.nc"
    results = _two_processes(
        lambda port, i: [sys.executable, "-c", WORKER, port, str(i), json.dumps(cfg), str(out)], tmp_path
    )
    for code, _, err in results:
        assert code == 0, err[-3000:]
    single = simulate(Config.model_validate(cfg))
    if cfg is LADDER_CFG:
        assert float(single["n_dense_fallback"].max()) > 0, "no path was handed to the dense kernel"
    with xr.open_dataset(out, decode_times=False) as multi:  # time in minutes, as simulate returns it
        xr.testing.assert_identical(multi.load(), single)


def test_two_process_run_writes_one_run_directory_from_process_0(single, tmp_path):
    d = tmp_path / "run"
    (code0, out0, err0), (code1, out1, err1) = _liqstress_run([*RUN_ARGS, "--run-dir", str(d)], tmp_path)
    assert (code0, code1) == (0, 0), err0[-3000:] + err1[-3000:]
    assert f"run directory: {d}" in out0
    _assert_silent(out1, err1)
    assert _files(d) == _files(single)  # one set of files: no second manifest's, part's or temporary
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and m["jax"]["process_count"] == 2 and len(m["jax"]["devices"]) == 2
    assert len(m["sessions"]) == 1 and [p["status"] for p in m["parts"]] == ["done", "done"]
    assert (d / "run.log").read_text().count("session start") == 1
    _assert_same_cube(d / "cube.nc", single / "cube.nc")


def test_two_process_resume_skips_the_same_parts_on_both(single, tmp_path, monkeypatch):
    real, calls = distributed.simulate, []

    def failing_second_part(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SimulationError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "simulate", failing_second_part)
    d = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["run", *RUN_ARGS, "--run-dir", str(d)])
    assert result.exit_code == 1 and "injected" in result.output

    (code0, _, err0), (code1, out1, err1) = _liqstress_run(
        ["--resume", str(d), "--no-progress", "--no-report"], tmp_path
    )
    assert (code0, code1) == (0, 0), err0[-3000:] + err1[-3000:]
    _assert_silent(out1, err1)
    assert "session start: 1 of 2 parts to run" in (d / "run.log").read_text()
    assert json.loads((d / "manifest.json").read_text())["status"] == "complete"
    assert _files(d) == _files(single)
    _assert_same_cube(d / "cube.nc", single / "cube.nc")


def test_a_failure_of_process_0_ends_both_with_its_exit_code(single, tmp_path):
    (code0, _, err0), (code1, out1, err1) = _liqstress_run([*RUN_ARGS, "--run-dir", str(single)], tmp_path)
    assert (code0, code1) == (2, 2)
    assert "exists and is not empty" in err0
    _assert_silent(out1, err1)


def _slurm_port() -> int:
    """A free loopback port in the range JAX's SLURM detection derives from the job id
    (61440 + job id mod 4096)."""
    start = os.getpid() % 4096
    for k in range(4096):
        port = 61440 + (start + k) % 4096
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free loopback port in 61440..65535 for the SLURM test")


def test_distributed_run_under_slurm_matches_one_process(single, tmp_path):
    """`liqstress run --distributed` as two SLURM tasks (the variables `srun` sets, on this
    host): JAX finds the coordinator, process count and id itself."""
    port = _slurm_port()
    slurm = lambda _, i: {
        "SLURM_JOB_ID": str(port - 61440 + 4096),
        "SLURM_STEP_NODELIST": "127.0.0.1",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": str(i),
        "SLURM_LOCALID": str(i),
        "SLURM_STEP_NUM_NODES": "1",
    }
    d = tmp_path / "run"
    argv = lambda *_: [sys.executable, "-m", "engine", "run", *RUN_ARGS, "--run-dir", str(d), "--distributed"]
    (code0, out0, err0), (code1, out1, err1) = _two_processes(argv, tmp_path, port, slurm)
    assert (code0, code1) == (0, 0), err0[-3000:] + err1[-3000:]
    assert f"run directory: {d}" in out0
    _assert_silent(out1, err1)
    assert json.loads((d / "manifest.json").read_text())["jax"]["process_count"] == 2
    _assert_same_cube(d / "cube.nc", single / "cube.nc")


def test_an_interrupt_does_not_split_a_message(monkeypatch):
    """A SIGTERM between the two collectives of `broadcast_json` (size, then text) is held until
    both have run, then interrupts: the processes' collectives stay paired."""
    calls = []

    def broadcast(x):
        calls.append(np.shape(x))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return x

    def interrupt(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed.multihost_utils, "broadcast_one_to_all", broadcast)
    monkeypatch.setattr(distributed, "is_writer", lambda: True)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            distributed.broadcast_json({"exit": 130})
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls == [(), (16,)]  # the padded size, then the 13-byte text padded to 16


def test_sigterm_to_process_0_ends_both_and_keeps_the_run_resumable(tmp_path):
    """SIGTERM (a scheduler's preemption) to process 0 while the processes simulate: it exits
    130 with the run marked interrupted, and process 1 does not hang in the collective."""
    d = tmp_path / "run"
    procs = _start_two(_liqstress_argv([*RUN_ARGS, "--set", "run.steps=2000", "--run-dir", str(d)]), tmp_path)
    log = d / "run.log"
    for _ in range(1200):  # until process 0 starts the parts (then it compiles and simulates)
        if log.exists() and "session start" in log.read_text():
            break
        time.sleep(0.1)
    time.sleep(1.0)
    procs[0].send_signal(signal.SIGTERM)
    (code0, _, err0), (code1, _, _) = _finish(procs)
    assert code0 == 130, err0[-3000:]
    assert code1 != 0  # aborted by JAX's runtime once process 0 left (no exit code to follow)
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "interrupted" and all(p["status"] != "done" for p in m["parts"])


FAIL_ON_PROCESS_1 = """
import sys
import jax
from engine import cli
from engine.config.errors import SimulationError
from engine.sim import distributed
real = distributed.simulate
def simulate(*args, **kwargs):
    if jax.process_index() == 1:
        raise SimulationError("injected on process 1")
    return real(*args, **kwargs)
distributed.simulate = simulate
sys.argv = ["liqstress", *sys.argv[1:]]
cli.app()
"""


def test_a_failure_of_process_1_inside_the_simulation_ends_both(tmp_path):
    """Process 1 fails where process 0 waits for it in a collective: both end (no wait for
    JAX's shutdown timeout), process 1 with 1 and its message, the run marked failed."""
    d = tmp_path / "run"
    liqstress = _liqstress_argv([*RUN_ARGS, "--run-dir", str(d)])
    (code0, _, err0), (code1, _, err1) = _two_processes(
        lambda port, i: [sys.executable, "-c", FAIL_ON_PROCESS_1, *liqstress(port, i)[3:]], tmp_path
    )
    assert code1 == 1 and "injected on process 1" in err1, err1[-3000:]
    assert "Traceback" not in err1  # the message alone
    assert code0 == 1, err0[-3000:]  # its collective failed: a failed simulation
    assert json.loads((d / "manifest.json").read_text())["status"] == "failed"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the ignored one
def test_a_sigterm_whose_interrupt_was_lost_stops_the_run_at_the_next_chunk():
    """A SIGTERM handled where Python ignores exceptions (a `__del__`, a GC callback) still
    interrupts: the progress callback of the next chunk raises."""

    interrupts = distributed.Interrupts()

    class Dying:
        def __del__(self):
            interrupts._terminate(signal.SIGTERM, None)  # its KeyboardInterrupt is ignored here

    seen = []
    with interrupts:
        report = interrupts.checked(seen.append)
        report("chunk 1")
        Dying()  # collected at once
        with pytest.raises(KeyboardInterrupt):
            report("chunk 2")
    assert seen == ["chunk 1", "chunk 2"]
    with interrupts:  # a new run starts clean
        interrupts.checked()("chunk")
