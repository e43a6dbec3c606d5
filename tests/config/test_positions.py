"""Positions files (`engine.config.positions`): validation row by row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import positions as P

ASSETS = ("BTC", "ETH")
ROWS = """asset,side,notional_usd,entry_price,leverage,margin_mode,account_id,tier
BTC,long,10000,100000,10,isolated,,
BTC,long,5000,100000,10,isolated,,
BTC,short,20000,101000,20,isolated,,2
ETH,long,3000,4000,5,cross,acc-1,
ETH,long,3000,4000,5,cross,acc-2,
BTC,long,10000,100000,10,isolated,,
"""


def write(tmp_path, text: str, name: str = "book.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_valid_file_reads_every_field(tmp_path):
    pos = P.load_positions(write(tmp_path, ROWS), ASSETS, n_tiers=5)
    np.testing.assert_array_equal(pos.asset, [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(pos.side, [1, 1, -1, 1, 1, 1])
    np.testing.assert_allclose(pos.quantity, [0.1, 0.05, 20000 / 101000, 0.75, 0.75, 0.1])
    np.testing.assert_array_equal(pos.tier, [-1, -1, 2, -1, -1, -1])
    np.testing.assert_array_equal(pos.cross, [False, False, False, True, True, False])
    assert list(pos.account) == ["", "", "", "acc-1", "acc-2", ""]


def test_parquet_reads_like_csv_and_margin_gives_leverage(tmp_path):
    table = pa.table(
        {
            "asset": ["ETH", "BTC"],
            "side": ["short", "long"],
            "quantity": [2.0, 0.5],
            "entry_price": [4000.0, 100000.0],
            "margin_usd": [800.0, 2500.0],
        }
    )
    path = tmp_path / "book.parquet"
    pq.write_table(table, path)
    pos = P.load_positions(path, ASSETS, n_tiers=5)
    np.testing.assert_allclose(pos.leverage, [10.0, 20.0])
    np.testing.assert_allclose(pos.quantity, [2.0, 0.5])
    np.testing.assert_array_equal(pos.side, [-1, 1])


@pytest.mark.parametrize(
    "line, column, allowed",
    [
        ("SOL,long,1000,100,5,isolated,,", "asset", "BTC, ETH"),
        ("BTC,up,1000,100,5,isolated,,", "side", "long, short"),
        ("BTC,long,-5,100,5,isolated,,", "notional_usd", "> 0"),
        ("BTC,long,1000,0,5,isolated,,", "entry_price", "> 0"),
        ("BTC,long,1000,100,0.5,isolated,,", "leverage", "1 to 1000"),
        ("BTC,long,1000,100,5,portfolio,,", "margin_mode", "isolated, cross"),
        ("BTC,long,1000,100,5,cross,,", "account_id", "account id"),
        ("BTC,long,1000,100,5,isolated,,7", "tier", "0 to 4"),
        ("BTC,long,1000,100,5,isolated,,1.5", "tier", "0 to 4"),
    ],
)
def test_a_bad_row_names_file_row_column_and_allowed_values(tmp_path, line, column, allowed):
    header, first = ROWS.splitlines()[:2]
    path = write(tmp_path, f"{header}\n{first}\n{first}\n{line}\n{first}\n")
    with pytest.raises(P.BookFileError) as e:
        P.load_positions(path, ASSETS, n_tiers=5)
    msg = str(e.value)
    assert str(path) in msg and "row 3," in msg and f"column {column} " in msg and allowed in msg


def test_missing_or_ambiguous_columns_and_file_types(tmp_path):
    with pytest.raises(P.BookFileError, match="column entry_price is missing"):
        P.load_positions(write(tmp_path, "asset,side,notional_usd,leverage\nBTC,long,1,2\n"), ASSETS, 5)
    both = "asset,side,notional_usd,quantity,entry_price,leverage\nBTC,long,1,1,1,2\n"
    with pytest.raises(P.BookFileError, match="exactly one of the columns notional_usd or quantity"):
        P.load_positions(write(tmp_path, both), ASSETS, 5)
    with pytest.raises(P.BookFileError, match="allowed: .csv, .parquet"):
        P.load_positions(write(tmp_path, ROWS, "book.xlsx"), ASSETS, 5)
    with pytest.raises(P.BookFileError, match="no such file"):
        P.load_positions(tmp_path / "absent.csv", ASSETS, 5)
