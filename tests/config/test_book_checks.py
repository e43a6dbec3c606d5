"""The checks of a positions file against its scenario (`engine.config.book_checks.book_warnings`):
entries far from the price are named, a position larger than its market is refused."""

from __future__ import annotations

import pytest

from engine.config.files import load_study
from engine.config.positions import BookFileError
from tests.cli.test_bad_configs import BOOK_HEAD, BOOK_TOML


def study_of(tmp_path, rows: str):
    (tmp_path / "c.toml").write_text(BOOK_TOML)
    (tmp_path / "book.csv").write_text(BOOK_HEAD + rows)
    return load_study(tmp_path / "c.toml")


def test_entries_far_from_the_price_are_named_per_asset(tmp_path):
    """A long at 100 for BTC at 100,000 is deep in profit, not under water: only this says it."""
    s = study_of(tmp_path, "BTC,long,1e5,100,10\nBTC,short,1e5,2e6,10\nSOL,long,1e5,210,5\n")
    book = tmp_path / "book.csv"
    assert s.warnings == (
        (
            f"{book}: column entry_price: prices more than 10x away from the asset's starting price, in "
            "another unit? (BTC: 2 rows, $100 M, rows 2, 3)"
        ),  # notional at the starting price
    )


def test_a_book_with_entries_near_the_price_has_no_warning(tmp_path):
    assert study_of(tmp_path, "BTC,long,1e5,95000,10\nSOL,short,1e5,220,5\n").warnings == ()


@pytest.mark.parametrize("row", ["SOL,long,8.1e9,200,5", "BTC,long,5e10,100000,2"])
def test_a_position_larger_than_its_market_is_refused(tmp_path, row):
    with pytest.raises(BookFileError, match=r"row 2, column notional_usd = .*whole open interest"):
        study_of(tmp_path, row + "\n")


def test_a_book_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "book.csv").mkdir()
    (tmp_path / "c.toml").write_text(BOOK_TOML)
    with pytest.raises(BookFileError, match=r"book.positions = '.*book.csv': not a file \(allowed: a .csv"):
        load_study(tmp_path / "c.toml")
