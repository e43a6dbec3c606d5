"""Bad liquidation maps (`book.liquidation_map`) through the CLI: exit code 2, a message that
names the file's column (or the config field) and what is allowed, nothing written."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import cli

QUICK = str(Path(__file__).resolve().parents[2] / "configs" / "quick.toml")
MAP_TOML = f'base = "{QUICK}"\n[book]\nliquidation_map = "map.csv"\n'
HEAD = "asset,side,price,notional_usd\nBTC,long,95000,1e8\n"

# (case id, files to create {name: text}, argv, text the message must contain)
CASES = [
    (
        "bad side",
        {"map.csv": HEAD + "SOL,up,150,1e6\n"},
        ["run", "c.toml"],
        "map.csv: row 2, column side = 'up': allowed long, short",
    ),
    (
        "unknown asset",
        {"map.csv": HEAD + "DOGE,long,0.1,1e6\n"},
        ["run", "c.toml"],
        "row 2, column asset = 'DOGE': allowed BTC, SOL",
    ),
    (
        "long level above the starting price",
        {"map.csv": HEAD + "BTC,long,105000,1e6\n"},
        ["run", "c.toml"],
        "row 2, column price = 105000: allowed 0 < price < 100000 for a long level of BTC",
    ),
    ("NaN price", {"map.csv": HEAD + "BTC,long,nan,1e6\n"}, ["validate", "c.toml"], "row 2, column price"),
    (
        "text for a number",
        {"map.csv": HEAD + "BTC,long,95000,lots\n"},
        ["run", "c.toml"],
        "row 2, column notional_usd = 'lots': allowed numbers",
    ),
    (
        "missing column",
        {"map.csv": "asset,side,notional_usd\nBTC,long,1e6\n"},
        ["run", "c.toml"],
        "column price is missing",
    ),
    ("empty file", {"map.csv": ""}, ["run", "c.toml"], "map.csv: not a readable csv file"),
    ("missing file", {}, ["run", "c.toml"], "map.csv': no such file"),
    (
        "leverage above tier 0",
        {"map.csv": HEAD},
        ["run", "c.toml", "--set", "book.map_leverage=200"],
        "book.map_leverage = 200: allowed above 1 and up to 125",
    ),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("files, argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_map_exits_2_names_the_column_and_writes_nothing(tmp_path, monkeypatch, files, argv, needle):
    for name, text in {"c.toml": MAP_TOML, **files}.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 2, result.output
    assert needle in result.output.replace("\n", " "), result.output
    assert _tree(tmp_path) == before  # nothing written, no runs/ directory either
    assert not os.path.exists(tmp_path / "runs")
