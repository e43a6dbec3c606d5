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


@pytest.mark.parametrize(
    "column, closest",
    [("marginmode", "did you mean margin_mode?"), ("stop", "did you mean stop_price?"), ("timestamp", "")],
)
def test_an_unknown_column_is_refused_naming_the_closest_known_one(tmp_path, column, closest):
    """`marginmode` would turn cross rows isolated, `stop` would drop every stop: neither is read."""
    header, first = ROWS.splitlines()[:2]
    path = write(tmp_path, f"{header},{column}\n{first},cross\n")
    with pytest.raises(P.BookFileError) as e:
        P.load_positions(path, ASSETS, n_tiers=5)
    msg = str(e.value)
    assert f"{path}: column '{column}' is not a column of a positions file; {closest}" in msg, msg
    assert "allowed: asset, side, notional_usd, quantity, entry_price" in msg


@pytest.mark.parametrize(
    "column, value, allowed",
    [
        ("notional_usd", "1e13", "a notional up to 1e+12 USD per row"),
        ("notional_usd", "1e300", "a notional up to 1e+12 USD per row"),
        ("entry_price", "1e300", "1e-12 to 1e+12 USD (beyond it the model's float32 arithmetic overflows)"),
        ("entry_price", "1e-300", "1e-12 to 1e+12 USD"),
        ("leverage", "1e300", "1 to 1000"),
        ("tier", "1e300", "an integer from 0 to 4"),
    ],
)
def test_values_beyond_the_models_range_are_refused(tmp_path, column, value, allowed):
    cells = dict(zip(ROWS.splitlines()[0].split(","), ROWS.splitlines()[1].split(",")), **{column: value})
    path = write(tmp_path, ROWS + ",".join(cells.values()) + "\n")
    with pytest.raises(P.BookFileError) as e:
        P.load_positions(path, ASSETS, n_tiers=5)
    assert f"{path}: row 7, column {column} = {float(value)!r}: allowed {allowed}" in str(e.value), str(
        e.value
    )


def test_quantity_stop_price_and_positions_are_bounded_too(tmp_path):
    head = "asset,side,quantity,entry_price,leverage,stop_price,positions\n"
    cases = [
        (
            "BTC,long,1e8,100000,10,,1",
            "quantity = 100000000.0: allowed a notional (quantity x entry_price) up to 1e+12",
        ),
        ("BTC,long,1,100000,10,1e-300,1", "stop_price = 1e-300: allowed 1e-12 to 1e+12 USD"),
        ("BTC,long,1,100000,10,,1e300", "positions = 1e+300: allowed 0 to 1e+12 positions"),
    ]
    for line, needle in cases:
        with pytest.raises(P.BookFileError) as e:
            P.load_positions(write(tmp_path, head + line + "\n"), ASSETS, n_tiers=5)
        assert f"row 1, column {needle}" in str(e.value), str(e.value)


def test_a_latin_1_byte_is_refused_naming_row_and_column(tmp_path):
    """A spreadsheet's CSV in Latin-1: pyarrow reads the column as bytes."""
    path = tmp_path / "book.csv"
    path.write_bytes(ROWS.encode() + "BTC,lông,1000,100000,10,isolated,,\n".encode("latin-1"))
    with pytest.raises(P.BookFileError) as e:
        P.load_positions(path, ASSETS, n_tiers=5)
    assert f"{path}: row 7, column side = b'l\\xf4ng': allowed UTF-8 text" in str(e.value), str(e.value)
    path.write_bytes("asset,sidé,notional_usd\nBTC,long,1\n".encode("latin-1"))
    with pytest.raises(P.BookFileError, match="the header row is not UTF-8 text"):
        P.load_positions(path, ASSETS, n_tiers=5)


def parquet(tmp_path, **columns) -> str:
    """A Parquet file of one BTC long (10x, 1,000 USD at 100,000) with `columns` replaced."""
    base = {
        "asset": ["BTC"],
        "side": ["long"],
        "notional_usd": [1e3],
        "entry_price": [1e5],
        "leverage": [10.0],
    }
    path = tmp_path / "book.parquet"
    pq.write_table(pa.table(base | columns), path)
    return path


def test_parquet_cells_pyarrow_cannot_hold_as_one_value_are_refused(tmp_path):
    path = parquet(tmp_path, side=pa.array([["long"]]))
    with pytest.raises(P.BookFileError) as e:
        P.load_positions(path, ASSETS, n_tiers=5)
    msg = f"{path}: row 1, column side = ['long']: allowed one number or one text per cell (the column holds list"
    assert msg in str(e.value), str(e.value)
    path = parquet(tmp_path, notional_usd=pa.array([2**53 + 1], pa.int64()))
    with pytest.raises(P.BookFileError) as e:
        P.load_positions(path, ASSETS, n_tiers=5)
    msg = f"{path}: row 1, column notional_usd = 9007199254740993: allowed integers up to 2^53 = 9007199254740992"
    assert msg in str(e.value), str(e.value)


@pytest.mark.parametrize("values", [pa.array([2**63 + 5], pa.uint64()), pa.array([-(2**63)], pa.int64())])
def test_integers_at_the_ends_of_their_type_are_refused_not_a_traceback(tmp_path, values):
    path = parquet(tmp_path, notional_usd=values)
    with pytest.raises(P.BookFileError, match=r"row 1, column notional_usd = .*allowed integers up to 2\^53"):
        P.load_positions(path, ASSETS, n_tiers=5)


def test_categorical_text_and_large_integer_ids_still_read(tmp_path):
    """A pandas categorical (dictionary) column is its values; an id beyond 2^53 is text, not a number."""
    path = parquet(tmp_path, asset=pa.array(["BTC"]).dictionary_encode(), position_id=pa.array([2**60]))
    pos = P.load_positions(path, ASSETS, n_tiers=5)
    np.testing.assert_array_equal(pos.asset, [0])
    np.testing.assert_allclose(pos.quantity, [0.01])
