"""Top-level options of the command line: --version, and help that is whole at 80 columns."""

import re
from importlib import metadata

import pytest
import typer.main
from typer.testing import CliRunner

from engine import cli

COMMANDS = sorted(typer.main.get_command(cli.app).commands)


def _words(text: str) -> str:
    return " ".join(text.split())


def test_version_prints_the_installed_version_and_exits_0():
    result = CliRunner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"liqstress {metadata.version('liqstress')}"


def test_top_level_help_lists_every_command_summary_whole_at_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(cli.app, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80
    group = typer.main.get_command(cli.app)
    for name in COMMANDS:
        summary = _words(group.commands[name].help.split("\n\n")[0])
        assert summary in _words(result.output), name


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_help_is_whole_at_80_columns(monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(cli.app, [command, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert max(map(len, result.output.splitlines())) <= 80
    params = typer.main.get_command(cli.app).commands[command].params
    for p in params:
        if getattr(p, "help", None):
            assert _words(p.help) in _words(result.output), (command, p.name)
        for var in [p.envvar] if isinstance(getattr(p, "envvar", None), str) else []:
            assert re.search(rf"\b{var}\b", result.output), (command, var)
