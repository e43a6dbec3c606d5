"""The command line's dispatch and small commands (no simulation here)."""

import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from engine import cli


def test_no_command_runs_the_default_scenario(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.run, "run", lambda **kw: calls.append(kw))  # the module cli.run, its command run
    result = CliRunner().invoke(cli.app, [])
    assert result.exit_code == 0 and len(calls) == 1


def test_validate_reports_the_grid():
    result = CliRunner().invoke(
        cli.app,
        [
            "validate",
            "quick",
            "--set",
            "sweep.policy.leverage_cap=[5, 10, 20]",
            "--set",
            "sweep.baseline.policy.leverage_cap=20",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "6 points in 3 parts" in result.output
    assert "baseline: leverage_cap=20, breaker_kind=none" in result.output


def test_list_of_an_empty_directory(tmp_path):
    result = CliRunner().invoke(cli.app, ["list", str(tmp_path)])
    assert result.exit_code == 0 and "no runs" in result.output


def test_python_dash_m_engine_is_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0
    for command in ("run", "compare", "list", "validate"):
        assert command in out.stdout


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_an_interrupt_outside_a_simulation_exits_130(monkeypatch, how):
    """Ctrl-C or SIGTERM while a command validates its config (no simulation running) ends with
    the documented 130 and a message, not click's "Aborted!" and 1, nor -15."""

    def interrupted(*args, **kwargs):
        if how == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.browse, "load_study", interrupted)
    result = CliRunner().invoke(cli.app, ["validate", "quick"])
    assert result.exit_code == 130 and "interrupted" in result.output
