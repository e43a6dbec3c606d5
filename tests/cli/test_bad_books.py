"""Positions files and liquidation maps that used to fail silently or with a traceback (issue
21): through the CLI each exits with code 2 and one message naming the file, the row and the
column (or the config field), and nothing is written."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine import cli
from tests.cli.test_bad_configs import BOOK_HEAD, BOOK_TOML, QUICK

MAP_TOML = f'base = "{QUICK}"\n[book]\nliquidation_map = "map.csv"\n'
MAP_HEAD = "asset,side,price,notional_usd\nBTC,long,95000,1e8\n"
PARQUET_TOML = BOOK_TOML.replace("book.csv", "book.parquet")
ONE = {"asset": ["BTC"], "side": ["long"], "notional_usd": [1e6], "entry_price": [1e5], "leverage": [10.0]}

# (case id, files to create {name: text, bytes or an Arrow table}, argv, text the message must contain)
CASES = [
    (
        "a row above its asset's whole open interest",
        {"c.toml": BOOK_TOML, "book.csv": BOOK_HEAD + "SOL,long,9e9,200,5\n"},
        ["validate", "c.toml"],
        (
            "book.csv: row 2, column notional_usd = 9e+09: above SOL's whole open interest ($8 B, "
            "market.assets.SOL.open_interest_usd); allowed: at most the open interest per position"
        ),
    ),
    (
        "misspelt margin_mode",
        {"c.toml": BOOK_TOML, "book.csv": "asset,side,notional_usd,entry_price,leverage,marginmode\n"},
        ["run", "c.toml"],
        "book.csv: column 'marginmode' is not a column of a positions file; did you mean margin_mode?",
    ),
    (
        "a BTC short entered at 1.0",
        {"c.toml": BOOK_TOML, "book.csv": BOOK_HEAD + "BTC,short,1e6,1.0,10\n"},
        ["validate", "c.toml"],
        (
            "book.csv: 99.99% of the book's notional at the starting prices ($100 B of $100 B) starts at or "
            "beyond its liquidation price and is liquidated in the first step (BTC: 1 row, $100 B, of which "
            "$100 B beyond bankruptcy, row 2); allowed up to book.max_underwater_share = 0.01"
        ),
    ),
    (
        "a row of 1e13 USD",
        {"c.toml": BOOK_TOML, "book.csv": BOOK_HEAD + "SOL,long,1e13,200,5\n"},
        ["run", "c.toml"],
        "book.csv: row 2, column notional_usd = 10000000000000.0: allowed a notional up to 1e+12 USD per row",
    ),
    (
        "a row of 1e300 USD",
        {"c.toml": BOOK_TOML, "book.csv": BOOK_HEAD + "SOL,long,1e300,200,5\n"},
        ["validate", "c.toml"],
        "book.csv: row 2, column notional_usd = 1e+300: allowed a notional up to 1e+12 USD per row",
    ),
    (
        "a Latin-1 byte",
        {"c.toml": BOOK_TOML, "book.csv": (BOOK_HEAD + "SOL,lông,1e5,200,5\n").encode("latin-1")},
        ["run", "c.toml"],
        "book.csv: row 2, column side = b'l\\xf4ng': allowed UTF-8 text",
    ),
    (
        "a list column",
        {"c.toml": PARQUET_TOML, "book.parquet": pa.table(ONE | {"side": [["long"]]})},
        ["run", "c.toml"],
        "book.parquet: row 1, column side = ['long']: allowed one number or one text per cell",
    ),
    (
        "an integer above 2^53",
        {"c.toml": PARQUET_TOML, "book.parquet": pa.table(ONE | {"notional_usd": [2**53 + 1]})},
        ["run", "c.toml"],
        "book.parquet: row 1, column notional_usd = 9007199254740993: allowed integers up to 2^53",
    ),
    (
        "map: misspelt notional_usd",
        {"c.toml": MAP_TOML, "map.csv": MAP_HEAD.replace("notional_usd", "notional")},
        ["run", "c.toml"],
        "map.csv: column 'notional' is not a column of a liquidation map; did you mean notional_usd?",
    ),
    (
        "map: a price of 1e300",
        {"c.toml": MAP_TOML, "map.csv": MAP_HEAD + "BTC,short,1e300,1e6\n"},
        ["validate", "c.toml"],
        "map.csv: row 2, column price = 1e+300: allowed 1e-12 to 1e+12 USD",
    ),
    (
        "map: a Latin-1 byte",
        {"c.toml": MAP_TOML, "map.csv": (MAP_HEAD + "BTC,lông,95000,1e6\n").encode("latin-1")},
        ["run", "c.toml"],
        "map.csv: row 2, column side = b'l\\xf4ng': allowed UTF-8 text",
    ),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("files, argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_book_exits_2_names_row_and_column_and_writes_nothing(
    tmp_path, monkeypatch, files, argv, needle
):
    for name, content in files.items():
        if isinstance(content, pa.Table):
            pq.write_table(content, tmp_path / name)
        else:
            (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert _tree(tmp_path) == before  # nothing written, no runs/ directory either
