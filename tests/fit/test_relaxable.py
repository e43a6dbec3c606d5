"""Calibration and optimisation refuse what the relaxed kernel does not simulate: accounts,
collateral and stop orders (`engine.fit.common.relaxable`, through `sized`)."""

from __future__ import annotations

import pytest

from engine.config.errors import ConfigError
from engine.config.schema import Config
from engine.fit.common import sized
from tests.conftest import small_dict

STOP = {"asset": "BTC", "side": "long", "price": 90_000.0, "notional_usd": 1e6}
CROSS = (
    "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id\nBTC,long,1e6,100000,10,cross,a\n"
)
STOPPED = "asset,side,notional_usd,entry_price,leverage,stop_price\nBTC,long,1e6,100000,10,95000\n"


@pytest.mark.parametrize(
    "sections, text, pattern",
    [
        ({"book": {"stops": [STOP]}}, None, "book.stops: .*relaxed kernel"),
        ({"collateral": {"USDe": {"haircut": 0.05}}}, None, "collateral: .*relaxed kernel"),
        ({}, CROSS, "book.positions = .*relaxed kernel.*cross-margin rows"),
        ({}, STOPPED, "book.positions = .*relaxed kernel.*stop prices"),
    ],
)
def test_a_book_the_relaxed_kernel_does_not_take_is_refused(tmp_path, sections, text, pattern):
    d = small_dict(**sections)
    if text is not None:
        (tmp_path / "book.csv").write_text(text)
        d["book"] = {**d["book"], "positions": str(tmp_path / "book.csv")}
    with pytest.raises(ConfigError, match=f"^{pattern}"):
        sized(Config.model_validate(d), 64, 12)


def test_an_isolated_book_without_stops_is_taken(tmp_path):
    (tmp_path / "book.csv").write_text(STOPPED.replace(",stop_price", "").replace(",95000", ""))
    d = small_dict()
    d["book"] = {**d["book"], "positions": str(tmp_path / "book.csv")}
    assert sized(Config.model_validate(d), 64, 12).run.n_paths == 64
