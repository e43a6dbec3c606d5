"""Bad input: each mistake exits with code 2, names the field and writes nothing."""

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from engine import cli
from engine.config import sweep
from engine.config.errors import ConfigError

QUICK = str(Path(__file__).resolve().parents[2] / "configs" / "quick.toml")
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
BOOK_TOML = f'base = "{QUICK}"\n[book]\npositions = "book.csv"\n'
BOOK_HEAD = "asset,side,notional_usd,entry_price,leverage\nBTC,long,1e6,100000,10\n"

CASES = [
    ("unknown top-level key", {"c.toml": f'base = "{QUICK}"\nsweepp = 1\n'}, ["run", "c.toml"], "sweepp"),
    (
        "positions file: bad side",
        {"c.toml": BOOK_TOML, "book.csv": BOOK_HEAD + "SOL,up,1e6,200,5\n"},
        ["run", "c.toml"],
        "book.csv: row 2, column side = 'up': allowed long, short",
    ),
    (
        "positions file: unknown asset",
        {"c.toml": BOOK_TOML, "book.csv": BOOK_HEAD + "DOGE,long,1e6,0.2,5\n"},
        ["run", "c.toml"],
        "row 2, column asset = 'DOGE': allowed BTC, SOL",
    ),
    (
        "positions file: an account with mixed margin modes",
        {
            "c.toml": BOOK_TOML,
            "book.csv": "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id\n"
            "BTC,long,1e6,100000,10,cross,a1\nSOL,long,1e5,200,5,isolated,a1\n",
        },
        ["run", "c.toml"],
        (
            "book.csv: row 2, column margin_mode = 'isolated': allowed 'cross', as on row 1 of the same account "
            "(an account with mixed margin modes"
        ),
    ),
    ("positions file: missing", {"c.toml": BOOK_TOML}, ["run", "c.toml"], "book.csv': no such file"),
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
    (
        "broken TOML in --set",
        {},
        ["run", QUICK, "--set", "policy.leverage_cap=[20,"],
        "--set 'policy.leverage_cap=[20,'",
    ),
    (
        "two words unquoted in --set",
        {},
        ["validate", QUICK, "--set", "description=two words"],
        "not a TOML value",
    ),
    (
        "boolean for a number",
        {"c.toml": f'base = "{QUICK}"\n[policy]\nleverage_cap = true\n'},
        ["run", "c.toml"],
        "policy.leverage_cap: must be a number, not true or false",
    ),
    (
        "boolean in a list of numbers",
        {},
        ["validate", QUICK, "--set", "book.leverage=[5, true, 50]"],
        "book.leverage",
    ),
    (
        "headline shock after the last step",
        {},
        ["run", QUICK, "--set", "scenario.shock_start=48"],
        "scenario.shock_start = 48: it covers steps 48 to 49, past the last step 47",
    ),
    (
        "headline shock running past the last step",
        {},
        ["validate", QUICK, "--set", "scenario.shock_start=47"],
        "allowed start steps for its 2 step(s): 0 to 46",
    ),
    (
        "extra shock after the last step",
        {},
        ["run", QUICK, "--set", "scenario.shocks=[{size=-0.1, start_step=100}]"],
        "scenario.shocks.0.start_step",
    ),
    (
        "300-character name",
        {"c.toml": f'base = "{QUICK}"\nname = "{"n" * 300}"\n'},
        ["validate", "c.toml"],
        "name: at most 180 bytes (got 300)",
    ),
    (
        "300-character name in a run",
        {},
        ["run", QUICK, "--set", f"name={'n' * 300}"],
        "at most 180 bytes",
    ),
    (
        "ragged correlation",
        {},
        ["validate", QUICK, "--set", "market.correlation=[[1.0, 0.5], [0.5]]"],
        "market.correlation: must be 2x2: 2 rows of 2 numbers, one per asset in the order of market.assets (BTC, SOL)",
    ),
    ("seed beyond the range", {}, ["run", QUICK, "--seed", str(2**63)], "--seed 9223372036854775808"),
    (
        "compare on a text file",
        {"notes.txt": "not a cube\n"},
        ["compare", "notes.txt"],
        "notes.txt: cannot read it as netCDF",
    ),
    *[
        (f"positions file: {why}", {"c.toml": BOOK_TOML, "book.csv": text}, ["run", "c.toml"], needle)
        for why, text, needle in [
            (
                "missing column",
                "asset,side,notional_usd,leverage\nBTC,long,1e6,10\n",
                "book.csv: column entry_price is missing; required: asset, side, entry_price",
            ),
            (
                "negative notional",
                BOOK_HEAD + "SOL,long,-5e5,200,5\n",
                "book.csv: row 2, column notional_usd = -500000.0: allowed a finite number > 0",
            ),
            (
                "leverage below 1",
                BOOK_HEAD + "SOL,long,5e5,200,0.5\n",
                "book.csv: row 2, column leverage = 0.5: allowed 1 to 1000",
            ),
            (
                "NaN",
                BOOK_HEAD + "SOL,long,5e5,NaN,5\n",
                "book.csv: row 2, column entry_price = None: allowed a finite price > 0 (USD)",
            ),
            ("empty file", "", "book.csv: not a readable csv file"),
            ("header only", BOOK_HEAD.splitlines()[0] + "\n", "book.csv: no positions"),
            (
                "duplicate position id",
                (
                    "asset,side,notional_usd,entry_price,leverage,position_id\n"
                    "BTC,long,1e6,100000,10,p1\nSOL,long,1e5,200,5,p2\nSOL,long,1e5,200,5,p1\n"
                ),
                "book.csv: row 3, column position_id = 'p1': allowed an id not used before (row 1 has it)",
            ),
            (
                "unknown collateral",
                (
                    "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id,collateral\n"
                    "BTC,long,1e6,100000,10,cross,a1,USDe\n"
                ),
                "book.csv: row 1, column collateral = 'USDe': allowed USD",
            ),
            (
                "stop on a cross row",
                (
                    "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id,stop_price\n"
                    "BTC,long,1e6,100000,10,cross,a1,95000\n"
                ),
                (
                    "book.csv: row 1, column stop_price = 95000: allowed empty on cross rows (stops on cross "
                    "positions are not simulated"
                ),
            ),
            (
                "stop that triggers at once",
                "asset,side,notional_usd,entry_price,leverage,stop_price\nSOL,short,1e5,200,5,190\n",
                "book.csv: row 1, column stop_price = 190: allowed above SOL's starting price 200 for a short",
            ),
            (
                "hedge-mode account",
                (
                    "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id\n"
                    "BTC,long,1e6,100000,10,cross,a1\nBTC,short,1e5,100000,5,cross,a1\n"
                ),
                (
                    "book.csv: row 2, column side = 'short': allowed 'long', as on row 1 of the same account and "
                    "asset (hedge mode is not simulated"
                ),
            ),
        ]
    ],
    (
        "positions file: binary",
        {"c.toml": BOOK_TOML.replace("book.csv", "book.parquet"), "book.parquet": "PAR1\x00\x01binary"},
        ["run", "c.toml"],
        "book.parquet: not a readable parquet file",
    ),
    (
        "positions file: unknown collateral of the config",
        {
            "c.toml": BOOK_TOML + "[collateral.USDe]\nhaircut = 0.05\n",
            "book.csv": "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id,collateral\n"
            "BTC,long,1e6,100000,10,cross,a1,stETH\n",
        },
        ["run", "c.toml"],
        "book.csv: row 1, column collateral = 'stETH': allowed USD, USDe",
    ),
    (
        "positions file: collateral on an isolated row",
        {
            "c.toml": BOOK_TOML + "[collateral.USDe]\nhaircut = 0.05\n",
            "book.csv": "asset,side,notional_usd,entry_price,leverage,collateral\n"
            "BTC,long,1e6,100000,10,USD\nSOL,long,1e5,200,5,USDe\n",
        },
        ["run", "c.toml"],
        "book.csv: row 2, column collateral = 'USDe': allowed USD on isolated rows",
    ),
    (
        "stop order that triggers at once",
        {},
        ["run", QUICK, "--set", 'book.stops=[{asset="BTC", side="long", price=1e6, notional_usd=1e6}]'],
        (
            "book.stops.0.price = 1e+06: a long stop on the wrong side of the starting price of BTC (100000) "
            "triggers at once; allowed: below 100000"
        ),
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


@pytest.mark.parametrize(
    "argv, named, not_named",
    [
        (["validate", QUICK, "--set", "policy.leverage_cap=0"], "--set policy.leverage_cap=0:", QUICK),
        (
            ["run", QUICK, "--set", "policy.adl_rule=fifo", "--set", "policy.dynamic_margin=1"],
            "--set policy.adl_rule=fifo:",
            "dynamic_margin",
        ),
        (
            ["validate", QUICK, "--set", "sweep.policy.leverage_cap=[0, 5]"],
            "--set sweep.policy.leverage_cap=[0, 5]:",
            QUICK,
        ),
        (["run", QUICK, "--paths", "20000000000"], "--paths 20000000000:\nrun.n_paths", "--set"),
        (["run", "c.toml", "--set", "policy.dynamic_margin=1"], "c.toml:\npolicy.leverage_cap", "--set"),
    ],
)
def test_errors_name_the_option_that_caused_them(tmp_path, monkeypatch, argv, named, not_named):
    """A problem the config file alone does not have names the `--set` item (or `--paths`,
    `--seed`) that causes it, not the file; a problem of the file names the file."""
    (tmp_path / "c.toml").write_text(f'base = "{QUICK}"\n[policy]\nleverage_cap = 0.5\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 2, result.output
    assert named in result.output and not_named not in result.output, result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "text, value",
    [
        ("queue", "queue"),
        (" pro_rata ", "pro_rata"),
        ("BTC-PERP.v2", "BTC-PERP.v2"),
        ("2025_oct", "2025_oct"),
        ('"two words"', "two words"),
        ("[5, 10]", [5, 10]),
        ("1e3", 1000.0),
        ("true", True),
    ],
)
def test_set_values_are_toml_or_one_bare_word(text, value):
    assert sweep.parse_override(f"k={text}") == ("k", value)


@pytest.mark.parametrize("text", ["[20,", '"x', "1.2.3", "two words", "", "{a=1", "5 x"])
def test_other_set_values_are_refused(text):
    with pytest.raises(ConfigError, match=r"--set .*not a TOML value"):
        sweep.parse_override(f"k={text}")


def _netcdf_files(tmp_path: Path) -> dict[str, Path]:
    """A netCDF file that is not a cube, the same cut in half, and an empty `.nc`."""
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"a": ("x", np.arange(100.0))}, attrs={"title": "temperatures"}).to_netcdf(foreign)
    data = foreign.read_bytes()
    (tmp_path / "truncated.nc").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.nc").write_bytes(b"")
    return {name: tmp_path / f"{name}.nc" for name in ("foreign", "truncated", "empty")}


@pytest.mark.parametrize(
    "which, why",
    [
        ("foreign", "not a liqstress cube"),
        ("truncated", "cannot read it as netCDF"),
        ("empty", "cannot read it as netCDF"),
    ],
)
def test_compare_refuses_files_that_are_not_cubes(tmp_path, monkeypatch, which, why):
    files = _netcdf_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    result = CliRunner().invoke(cli.app, ["compare", str(files[which]), "--out", "report"])
    assert result.exit_code == 2, result.output
    assert f"{files[which]}: {why}" in result.output.replace("\n", "")
    assert _tree(tmp_path) == before
