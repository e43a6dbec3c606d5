"""Bad input: each mistake exits with code 2, names the field and writes nothing."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import cli

QUICK = str(Path(__file__).resolve().parent.parent / "configs" / "quick.toml")
THREE_ASSETS_NON_PSD = """
name = "bad"
[market]
correlation = [[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]
[market.assets.A]
price = 1.0
vol_annual = 0.5
[market.assets.B]
price = 1.0
vol_annual = 0.5
[market.assets.C]
price = 1.0
vol_annual = 0.5
"""

# (case id, files to create {name: text}, argv, text the message must contain)
CASES = [
    ("unknown top-level key", {"c.toml": f'base = "{QUICK}"\nsweepp = 1\n'}, ["run", "c.toml"], "sweepp"),
    ("unknown nested key", {}, ["run", QUICK, "--set", "policy.levrage_cap=5"], "policy.levrage_cap"),
    ("wrong type", {}, ["run", QUICK, "--set", "run.n_paths=abc"], "run.n_paths"),
    ("out of range", {}, ["run", QUICK, "--set", "policy.leverage_cap=0"], "policy.leverage_cap"),
    ("not an allowed value", {}, ["run", QUICK, "--set", "policy.adl_rule=fifo"], "pro_rata"),
    ("NaN", {}, ["run", QUICK, "--set", "market.assets.BTC.vol_annual=nan"], "market.assets.BTC.vol_annual"),
    (
        "empty sweep axis",
        {},
        ["run", QUICK, "--set", "sweep.policy.leverage_cap=[]"],
        "sweep.policy.leverage_cap",
    ),
    ("unknown sweep path", {}, ["run", QUICK, "--set", "sweep.policy.nope=[1, 2]"], "sweep.policy.nope"),
    ("sweep over run settings", {}, ["run", QUICK, "--set", "sweep.run.steps=[10, 20]"], "sweep.run.steps"),
    (
        "sweep changes a shape",
        {},
        ["run", QUICK, "--set", "sweep.book.entry_points=[2, 3]"],
        "sweep.book.entry_points",
    ),
    (
        "sweep value out of range",
        {},
        ["run", QUICK, "--set", "sweep.policy.leverage_cap=[0, 5]"],
        "sweep.policy.leverage_cap",
    ),
    (
        "sweep axis not a list",
        {},
        ["run", QUICK, "--set", "sweep.policy.leverage_cap=5"],
        "sweep.policy.leverage_cap",
    ),
    (
        "repeated sweep values",
        {},
        ["run", QUICK, "--set", "sweep.policy.leverage_cap=[5, 5.0]"],
        "sweep.policy.leverage_cap",
    ),
    (
        "mixed sweep types",
        {},
        ["run", QUICK, "--set", 'sweep.policy.leverage_cap=[5, "x"]'],
        "sweep.policy.leverage_cap",
    ),
    (
        "sweep over a table",
        {},
        ["run", QUICK, "--set", "sweep.policy.breaker=[1, 2]"],
        "sweep.policy.breaker",
    ),
    (
        "baseline off the axis",
        {},
        ["run", QUICK, "--set", "sweep.baseline.policy.leverage_cap=7"],
        "sweep.baseline.policy.leverage_cap",
    ),
    (
        "baseline not an axis",
        {},
        ["run", QUICK, "--set", "sweep.baseline.policy.dynamic_margin=1"],
        "sweep.baseline.policy.dynamic_margin",
    ),
    ("points per part zero", {}, ["run", QUICK, "--set", "sweep.points_per_part=0"], "sweep.points_per_part"),
    ("non-PSD correlation", {"c.toml": THREE_ASSETS_NON_PSD}, ["run", "c.toml"], "positive semi-definite"),
    (
        "correlation of the wrong size",
        {},
        ["run", QUICK, "--set", "market.correlation=[[1.0]]"],
        "correlation",
    ),
    (
        "breaker window beyond the ring buffer",
        {},
        ["run", QUICK, "--set", "policy.breaker.window=20"],
        "policy.breaker.window",
    ),
    ("non-stationary GARCH", {}, ["run", QUICK, "--set", "market.garch_alpha=0.2"], "garch_alpha"),
    (
        "flow on an unknown asset",
        {},
        ["run", QUICK, "--set", 'scenario.flows=[{usd=1e9, asset="DOGE", start_step=1}]'],
        "scenario.flows.0.asset",
    ),
    ("unreadable file", {}, ["run", "missing.toml"], "missing.toml"),
    ("invalid TOML", {"c.toml": "name = \n"}, ["run", "c.toml"], "not valid TOML"),
    ("missing base file", {"c.toml": 'base = "nothere.toml"\n'}, ["run", "c.toml"], "nothere.toml"),
    ("override without a value", {}, ["run", QUICK, "--set", "policy.leverage_cap"], "--set"),
    ("zero paths", {}, ["run", QUICK, "--paths", "0"], "--paths"),
    ("run dir exists and is not empty", {"out/x.txt": "x"}, ["run", QUICK, "--run-dir", "out"], "--run-dir"),
    ("resume of a non-run directory", {"out/x.txt": "x"}, ["run", "--resume", "out"], "--resume"),
    ("resume of a missing directory", {}, ["run", "--resume", "nothere"], "--resume"),
    ("resume with a config", {"out/x.txt": "x"}, ["run", QUICK, "--resume", "out"], "--resume"),
    (
        "validate: bad value",
        {},
        ["validate", QUICK, "--set", "policy.partial_liquidation=2"],
        "policy.partial_liquidation",
    ),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("files, argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_names_the_field_and_writes_nothing(tmp_path, monkeypatch, files, argv, needle):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert _tree(tmp_path) == before  # nothing written, no runs/ directory either
    assert not os.path.exists(tmp_path / "runs")


def test_there_are_at_least_twenty_distinct_cases():
    assert len({c[0] for c in CASES}) >= 20
