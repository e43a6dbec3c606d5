"""The command line's dispatch and small commands (no simulation here)."""

import subprocess
import sys

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
