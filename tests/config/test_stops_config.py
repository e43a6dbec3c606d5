"""Stop orders (`engine.config.stops`, `stop_price` in positions files): their cohorts' fields,
the book's layout with them, how they group, and the stops that would trigger at once."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import book, build, forms, stops, synthetic
from engine.config.errors import ConfigError
from engine.config.layout import NO_STOP
from engine.config.positions import BookFileError
from engine.config.schema import Config
from tests.conftest import small_dict

# BTC starts at 100,000 and SOL at 200 (tests/conftest.py).
STOPS = [
    {"asset": "BTC", "side": "long", "price": 95_000.0, "notional_usd": 2e8},
    {"asset": "BTC", "side": "long", "price": 90_000.0, "notional_usd": 1e8},
    {"asset": "SOL", "side": "short", "price": 220.0, "notional_usd": 5e7},
]
HEAD = "asset,side,notional_usd,entry_price,leverage,stop_price\n"


def with_book(**fields) -> Config:
    return Config.model_validate(small_dict(book={**small_dict()["book"], **fields}))


def on_file(tmp_path, text: str, **fields) -> Config:
    path = tmp_path / "book.csv"
    path.write_text(text)
    return with_book(positions=str(path), **fields)


def test_stop_orders_become_cohorts_beside_the_parametric_book():
    cfg = with_book(stops=STOPS)
    plain = book.build_cohorts(cfg)
    c = stops.with_stops(cfg, plain)
    static = build.static_of(cfg)
    assert build.book_params(cfg).side.shape == c.side.shape
    book.check_layout(c.side)
    k = plain.side.shape[1] // 2
    assert stops.per_side(cfg) == 2 and c.side.shape[1] == 2 * (k + 2) == static.n_cohorts
    assert static.stops
    for f in book.Cohorts._fields[:-1]:  # the book's own cohorts keep their place and values
        np.testing.assert_array_equal(getattr(c, f)[:, :k], getattr(plain, f)[:, :k], err_msg=f)
        np.testing.assert_array_equal(
            getattr(c, f)[:, k + 2 : 2 * k + 2], getattr(plain, f)[:, k:], err_msg=f
        )
    np.testing.assert_array_equal(c.stop[:, :k], NO_STOP[1.0])
    np.testing.assert_array_equal(c.stop[:, k + 2 : 2 * k + 2], NO_STOP[-1.0])
    # BTC longs: the two stops; SOL shorts: one stop and one empty cohort
    btc = slice(k, k + 2)
    np.testing.assert_allclose(c.quantity[0, btc], [2e8 / 95_000, 1e8 / 90_000])
    np.testing.assert_allclose(c.entry[0, btc], [95_000, 90_000])
    np.testing.assert_allclose(c.stop[0, btc], [95_000, 90_000])
    np.testing.assert_allclose(c.bankrupt[0, btc], [0.0, 0.0])
    np.testing.assert_allclose(c.leverage[0, btc], 1.0)
    np.testing.assert_allclose(c.mmr[0, btc], cfg.exchange.tiers[0].mmr)
    np.testing.assert_allclose(c.maint_amount[0, btc], 0.0)
    np.testing.assert_allclose(c.positions[0, btc], 1.0)
    sol = slice(2 * k + 2, 2 * k + 4)
    np.testing.assert_allclose(c.quantity[1, sol], [5e7 / 220, 0.0])
    np.testing.assert_allclose(c.bankrupt[1, sol][0], 2 * 220.0)
    np.testing.assert_allclose(c.stop[1, sol], [220.0, np.inf])
    np.testing.assert_allclose(c.quantity[1, k : k + 2], 0.0)  # SOL has no long stop: padding


def test_no_stop_orders_leave_the_book_alone():
    cfg = with_book()
    c = book.build_cohorts(cfg)
    assert stops.with_stops(cfg, c) is c and stops.per_side(cfg) == 0
    assert build.book_params(cfg).stop is None and not build.static_of(cfg).stops


@pytest.mark.parametrize(
    "order, allowed",
    [
        ({"asset": "BTC", "side": "long", "price": 100_000.0, "notional_usd": 1e6}, "allowed: below 100000"),
        ({"asset": "SOL", "side": "short", "price": 150.0, "notional_usd": 1e6}, "allowed: above 200"),
    ],
)
def test_a_stop_order_that_would_trigger_at_once_is_refused(order, allowed):
    cfg = with_book(stops=[STOPS[0], order])
    with pytest.raises(ConfigError, match=rf"book\.stops\.1\.price = .*{allowed}"):
        build.build(cfg)


def test_stop_prices_split_cohorts_and_no_stop_is_its_own_key(tmp_path):
    rows = [
        "BTC,long,1e6,100000,10,95000",
        "BTC,long,1e6,100000,10,95000",  # the same stop: one cohort with the row above
        "BTC,long,1e6,100000,10,94000",  # another stop: its own cohort
        "BTC,long,1e6,100000,10,",  # no stop: its own cohort
        "BTC,long,1e6,100000,10,",
        "SOL,short,1e5,200,5,210",
    ]
    cfg = on_file(tmp_path, HEAD + "\n".join(rows) + "\n", entry_bin=0.0)
    c = build.cohorts(cfg)
    book.check_layout(c.side)
    k = c.side.shape[1] // 2
    live = c.quantity[0, :k] > 0
    got = sorted(zip(c.stop[0, :k][live], c.quantity[0, :k][live] * 100_000))
    assert got == [(0.0, pytest.approx(2e6)), (94_000, pytest.approx(1e6)), (95_000, pytest.approx(2e6))]
    assert c.stop[1, k] == 210 and np.all(c.stop[:, k:][c.quantity[:, k:] == 0] == np.inf)
    static = build.static_of(cfg)
    assert static.stops and static.n_cohorts == 2 * k
    forced = cfg.model_copy(update={"run": cfg.run.model_copy(update={"kernel": "ladder"})})
    refused = r"run\.kernel = 'ladder' cannot simulate stop prices on positions \(stop_price"
    with pytest.raises(ConfigError, match=refused):
        forms.specialise(static, [forced])
    fast = forms.specialise(static, [cfg])
    assert (fast.whole_only, fast.ladder, fast.ladder_cells) == (False, 0, 0)
    assert forms.form(fast) == "dense general"


def test_config_stops_join_a_file_book(tmp_path):
    cfg = on_file(tmp_path, HEAD + "BTC,long,1e6,100000,10,96000\nSOL,short,1e5,200,5,\n", stops=STOPS)
    c = build.book_params(cfg)
    book.check_layout(np.asarray(c.side))
    assert c.side.shape[1] == build.static_of(cfg).n_cohorts == 2 * (1 + 2)
    assert sorted(np.asarray(c.stop[0, :3])) == [90_000, 95_000, 96_000]


@pytest.mark.parametrize(
    "row, allowed",
    [
        ("BTC,long,1e6,100000,10,100000", "below BTC's starting price 100000 for a long"),
        ("SOL,short,1e5,200,5,199", "above SOL's starting price 200 for a short"),
        ("BTC,long,1e6,100000,10,-5", "a finite price > 0"),
    ],
)
def test_a_stop_price_that_would_trigger_at_once_is_refused(tmp_path, row, allowed):
    cfg = on_file(tmp_path, HEAD + "BTC,long,1e6,100000,10,\n" + row + "\n")
    with pytest.raises(BookFileError, match=rf"book\.csv: row 2, column stop_price = .*allowed {allowed}"):
        build.build(cfg)


def test_a_stop_on_a_cross_row_is_refused(tmp_path):
    text = "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id,stop_price\n"
    text += "BTC,long,1e6,100000,10,isolated,,95000\nBTC,long,1e6,100000,10,cross,a,95000\n"
    with pytest.raises(BookFileError, match="row 2, column stop_price = 95000.*stops on cross positions"):
        build.build(on_file(tmp_path, text))


def test_synthetic_stops_lie_on_the_safe_side_and_load(tmp_path):
    cfg = with_book()
    table = synthetic.make_positions(cfg, 5_000, seed=2, stop_share=0.5)
    stop = table.column("stop_price").to_numpy(zero_copy_only=False)
    side = np.where(table.column("side").to_numpy(zero_copy_only=False) == "long", 1.0, -1.0)
    price = np.array([cfg.market.assets[a].price for a in table.column("asset").to_pylist()])
    given = ~np.isnan(stop)
    assert 0.4 < given.mean() < 0.6
    assert np.all(side[given] * (price[given] - stop[given]) > 0)
    path = tmp_path / "book.parquet"
    synthetic.write_positions(table, path)
    assert build.static_of(with_book(positions=str(path))).stops
