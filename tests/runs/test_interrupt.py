"""Ctrl-C and SIGTERM stop a run within seconds, even inside a chunk that takes much longer: a
chunk runs as compiled calls of about a second each (`engine.sim.cost`), the forecast comes
after the second call, signals are honoured between calls, and `--resume` finishes the run."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import tomli_w
from typer.testing import CliRunner

from engine import cli
from engine.report.progress import share
from engine.sim import simulate as S  # the module, not the function `engine.simulate`
from tests.conftest import small_dict

# One chunk of 1,024 paths x 12,000 steps: 63 calls of 191 steps by the cost model
# (`cost.call_steps`), each well under a second on 2 cores (the model is cautious), so that the
# rest of the chunk outlasts the exit even where a warm cache makes the first call fast.
LONG = small_dict(
    run={**small_dict()["run"], "n_paths": 1024, "steps": 12_000, "fan_points": 4, "tipping_paths": 0}
)
# From the signal to the process's end: the call in flight and the next chunk's first call
# (about a second each, more on a busy machine), then the manifest and Python's exit.
EXIT_WITHIN_S = 6.0


def _interrupted_run(tmp_path, signum: int):
    """Start `liqstress run` of `LONG`, wait for its forecast, send `signum`; return the run
    directory, the forecast line and the seconds from the signal to the process's end."""
    (tmp_path / "long.toml").write_text(tomli_w.dumps(LONG))
    d = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "engine",
        "run",
        "long.toml",
        "--run-dir",
        str(d),
        "--no-progress",
        "--no-report",
    ]
    proc = subprocess.Popen(argv, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while "at that pace" not in (line := proc.stderr.readline()):
            assert line, "the run ended without a forecast:\n" + "".join(lines)
            lines.append(line)
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
        took = time.monotonic() - sent
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, "".join(lines) + line + rest
    assert "interrupted; finished parts are kept" in rest
    return d, line, took


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_a_long_chunk_stops_the_run_within_seconds(tmp_path, signum):
    plan = S.plan(LONG)
    assert plan.chunks == 1 and -(-plan.steps // plan.call_steps) >= 4  # one chunk of several calls
    d, forecast, took = _interrupted_run(tmp_path, signum)
    # the forecast counts calls, not the chunk: the first call does call_steps of 12,000 steps
    first = f"{share(plan.call_steps, 12_000)} of the work in "
    assert forecast.startswith(f"first call: {first}") and "the other " in forecast
    assert took < EXIT_WITHIN_S, f"{took:.1f} s from the signal to the end"
    # and well before the chunk would have ended
    left = re.search(r"at that pace: about ([\d.]+) (s|min)", forecast)
    assert left and float(left[1]) * (60 if left[2] == "min" else 1) > 2 * took, forecast
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["parts"][0]["status"] == "pending"
    if signum == signal.SIGINT:  # once is enough: resuming does not depend on the signal
        result = CliRunner().invoke(cli.app, ["run", "--resume", str(d), "--no-progress", "--no-report"])
        assert result.exit_code == 0, result.output
        m = json.loads((d / "manifest.json").read_text())
        assert m["status"] == "complete" and (d / "cube.nc").is_file()
