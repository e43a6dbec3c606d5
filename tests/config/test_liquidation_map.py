"""Liquidation-level maps (`engine.config.liquidation_map`): every level becomes one cohort
liquidated exactly at its price, holding the map's notional; bad files are refused row by row;
a shock past a level liquidates that level and nothing else."""

from __future__ import annotations

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from engine.config import book, build, liquidation_map
from engine.config.errors import ConfigError
from engine.config.files import load_config
from engine.config.positions import BookFileError
from engine.config.schema import Config
from engine.model.margin import liquidation_price
from engine.sim.simulate import simulate
from tests.conftest import small_dict
from tests.helpers import EXACT_RTOL, assert_close

# BTC starts at 100,000, SOL at 200 (tests.conftest.SMALL). Rows 1 and 6 are one level.
MAP = """asset,side,price,notional_usd
BTC,long,95000,1e8
BTC,long,80000,5e8
BTC,short,110000,1e8
SOL,long,150,2e7
SOL,short,260,3e7
BTC,long,95000,5e7
"""
HEADER, FIRST = MAP.splitlines()[:2]
# (asset, side, price) -> notional USD of each level of MAP
LEVELS = {
    ("BTC", 1.0, 95000.0): 1.5e8,
    ("BTC", 1.0, 80000.0): 5e8,
    ("BTC", -1.0, 110000.0): 1e8,
    ("SOL", 1.0, 150.0): 2e7,
    ("SOL", -1.0, 260.0): 3e7,
}


def write(tmp_path, text: str, name: str = "map.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def config(path, **sections) -> Config:
    """The small scenario with the map at `path` as its book."""
    return Config.model_validate(small_dict(book={"liquidation_map": str(path)}, **sections))


def live_levels(c: book.Cohorts, cfg: Config) -> dict:
    """(asset, side, liquidation price) -> (notional at the level, positions) of the live cohorts."""
    p_liq = liquidation_price(c.side, c.bankrupt, c.mmr, c.maint_amount)
    out = {}
    for a, name in enumerate(cfg.market.assets):
        for j in np.flatnonzero(c.quantity[a] > 0):
            out[(name, c.side[a, j], p_liq[a, j])] = (c.quantity[a, j] * p_liq[a, j], c.positions[a, j])
    return out


def test_each_cohort_liquidates_at_its_level_and_holds_its_notional(tmp_path):
    cfg = config(write(tmp_path, MAP))
    c = build.cohorts(cfg)
    book.check_layout(c.side)
    assert (
        c.side.shape[1] == liquidation_map.map_cohorts_per_asset(cfg) == build.static_of(cfg).n_cohorts == 4
    )
    got = live_levels(c, cfg)
    assert len(got) == len(LEVELS)
    by_level = sorted(got.items())
    for (key, (notional, _)), (want_key, want) in zip(by_level, sorted(LEVELS.items())):
        assert key[:2] == want_key[:2]
        assert_close(key[2], want_key[2], EXACT_RTOL, what=str(want_key))
        assert_close(notional, want, EXACT_RTOL, what=str(want_key))
    assert np.all(c.leverage[c.quantity > 0] == cfg.book.map_leverage)
    assert np.all(c.mmr == cfg.exchange.tiers[0].mmr) and np.all(c.maint_amount == 0)


def test_notional_per_asset_and_side_is_the_maps_and_duplicates_sum(tmp_path):
    cfg = config(write(tmp_path, MAP))
    c = build.cohorts(cfg)
    p_liq = liquidation_price(c.side, c.bankrupt, c.mmr, c.maint_amount)
    notional = np.where(c.quantity > 0, c.quantity * p_liq, 0.0)
    for a, name in enumerate(cfg.market.assets):
        for s in (1.0, -1.0):
            want = sum(v for (n, side, _), v in LEVELS.items() if n == name and side == s)
            assert_close(notional[a][c.side[a] == s].sum(), want, EXACT_RTOL, what=f"{name} {s}")
    # rows 1 and 6 (95,000) are one cohort of their summed notional and two positions
    positions = {k[:2] + (round(k[2]),): n for k, (_, n) in live_levels(c, cfg).items()}
    assert positions[("BTC", 1.0, 95000)] == 2.0
    assert c.positions.sum() == 6.0  # one position per row


def test_parquet_reads_like_csv(tmp_path):
    csv_path = write(tmp_path, MAP)
    pq.write_table(pcsv.read_csv(csv_path), tmp_path / "map.parquet")
    a, b = build.cohorts(config(csv_path)), build.cohorts(config(tmp_path / "map.parquet"))
    for name, x, y in zip(a._fields, a, b):
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_a_changed_file_gives_a_new_book(tmp_path):
    path = write(tmp_path, MAP)
    cfg = config(path)
    before = build.cohorts(cfg).quantity.sum()
    path.write_text(MAP + "BTC,long,90000,2e8\n")  # another size: another file version
    assert build.cohorts(cfg).quantity.sum() > before


@pytest.mark.parametrize(
    "line, column, allowed",
    [
        ("DOGE,long,0.1,1e6", "asset", "BTC, SOL"),
        ("BTC,up,95000,1e6", "side", "long, short"),
        ("BTC,long,nan,1e6", "price", "a finite price > 0"),
        ("BTC,long,,1e6", "price", "a finite price > 0"),
        ("BTC,long,-5,1e6", "price", "a finite price > 0"),
        ("BTC,long,abc,1e6", "price", "numbers"),
        ("BTC,long,100000,1e6", "price", "0 < price < 100000 for a long level of BTC"),
        ("BTC,long,101000,1e6", "price", "0 < price < 100000 for a long level of BTC"),
        ("SOL,short,199,1e6", "price", "price > 200 for a short level of SOL"),
        ("BTC,long,95000,0", "notional_usd", "a finite number > 0"),
        ("BTC,long,95000,inf", "notional_usd", "a finite number > 0"),
        ("BTC,long,95000,", "notional_usd", "a finite number > 0"),
    ],
)
def test_a_bad_row_names_file_row_column_and_allowed_values(tmp_path, line, column, allowed):
    path = write(tmp_path, f"{HEADER}\n{FIRST}\n{FIRST}\n{line}\n{FIRST}\n")
    with pytest.raises(BookFileError) as e:
        build.static_of(config(path))
    msg = str(e.value)
    assert str(path) in msg and "row 3," in msg and f"column {column} " in msg and allowed in msg, msg


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("map.csv", "asset,side,notional_usd\nBTC,long,1e6\n", "column price is missing; required: asset"),
        ("map.csv", "asset,side,price\nBTC,long,95000\n", "column notional_usd is missing"),
        ("map.csv", "", "not a readable csv file"),
        ("map.csv", HEADER + "\n", "no levels"),
        ("map.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a readable csv file"),
        ("map.parquet", b"PAR1" + bytes(range(256)), "not a readable parquet file"),
        ("map.xlsx", MAP, "allowed: .csv, .parquet"),
    ],
)
def test_unreadable_files_are_refused_naming_the_file(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BookFileError) as e:
        build.cohorts(config(path))
    assert str(path) in str(e.value) and needle in str(e.value), str(e.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(BookFileError, match="book.liquidation_map = .*absent.csv.*no such file"):
        build.static_of(config(tmp_path / "absent.csv"))


@pytest.mark.parametrize("leverage", [1.0, 126.0])
def test_a_leverage_tier_0_does_not_allow_is_refused(tmp_path, leverage):
    cfg = config(write(tmp_path, MAP))
    cfg = cfg.model_copy(update={"book": cfg.book.model_copy(update={"map_leverage": leverage})})
    with pytest.raises(ConfigError, match=r"book.map_leverage = .*allowed above 1 and up to 125"):
        build.static_of(cfg)


def test_a_relative_map_is_found_beside_the_config(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", MAP)
    (tmp_path / "sub" / "c.toml").write_text('base = "quick"\n[book]\nliquidation_map = "map.csv"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config("sub/c.toml")
    assert cfg.book.liquidation_map == str((tmp_path / "sub" / "map.csv").resolve())
    assert build.static_of(cfg).n_cohorts == 4


def test_a_shock_past_a_level_liquidates_it_and_nothing_else(tmp_path):
    """A calm market (tiny volatility, no jumps, no price impact) with a -10% BTC shock at step 3:
    BTC's long level at 95,000 is liquidated whole at the shocked mark (100,000 e^-0.1 = 90,484),
    its level at 80,000, its shorts and SOL's levels never are."""
    quiet = {"vol_annual": 0.01, "impact_y": 0.0}
    sd = small_dict()
    assets = {name: {**a, **quiet} for name, a in sd["market"]["assets"].items()}
    cfg = config(
        write(tmp_path, MAP),
        run={"n_paths": 256, "steps": 12, "fan_points": 4, "dtype": "float64", "kernel": "dense"},
        market={"assets": assets, "jump_intensity_per_day": 0.0},
        scenario={"shock": 0.0, "shocks": [{"size": -0.1, "start_step": 3, "assets": ["BTC"]}]},
    )
    c = build.cohorts(cfg)
    p_liq = liquidation_price(c.side, c.bankrupt, c.mmr, c.maint_amount)
    level = (c.quantity[0] > 0) & np.isclose(p_liq[0], 95000.0)
    want = c.quantity[0][level].sum() * 100_000 * np.exp(-0.1)  # USD at the fill price
    out = simulate(cfg).isel(point=0)
    mean, se = out["liquidated_notional_mean"], out["liquidated_notional_mc_se"]
    btc_long = {"asset": "BTC", "side": "long"}
    # within 3 Monte Carlo standard errors (~$1.5 k); the 80,000 level would add ~$450 M
    assert abs(float(mean.sel(btc_long)) - want) <= 3 * float(se.sel(btc_long)), (mean.values, want)
    assert float(out["p_liquidated_notional_positive"].sel(btc_long)) == 1.0  # on every path
    assert float(mean.sel(asset="BTC", side="short")) == 0.0
    assert np.all(mean.sel(asset="SOL").values == 0.0)


@pytest.mark.parametrize(
    "line, column, allowed",
    [
        ("BTC,long,95000,1e13", "notional_usd", "up to 1e+12 USD per level"),
        ("BTC,long,95000,1e300", "notional_usd", "up to 1e+12 USD per level"),
        (
            "BTC,short,1e300,1e6",
            "price",
            "1e-12 to 1e+12 USD (beyond it the model's float32 arithmetic overflows)",
        ),
        ("BTC,long,1e-300,1e6", "price", "1e-12 to 1e+12 USD"),
    ],
)
def test_values_beyond_the_models_range_are_refused(tmp_path, line, column, allowed):
    path = write(tmp_path, f"{HEADER}\n{FIRST}\n{FIRST}\n{line}\n")
    with pytest.raises(BookFileError) as e:
        build.static_of(config(path))
    assert f"{path}: row 3, column {column} = " in str(e.value) and allowed in str(e.value), str(e.value)


def test_crossed_levels_are_counted_per_asset_in_the_refusal(tmp_path):
    """Three levels behind the starting price (BTC 100,000, SOL 200): the first is named, all are
    counted per asset with their notional and first rows."""
    extra = "BTC,long,101000,2e6\nBTC,short,99000,3e6\nSOL,long,300,1e6\n"
    path = write(tmp_path, MAP + extra)
    with pytest.raises(BookFileError) as e:
        build.static_of(config(path))
    want = (
        f"{path}: row 7, column price = 101000: allowed 0 < price < 100000 for a long level of BTC "
        "(market.assets.BTC.price = 100000; a level at or beyond the starting price is already crossed; "
        "crossed levels: BTC: 2 rows, $5 M, rows 7, 8; SOL: 1 row, $1 M, row 9)"
    )
    assert str(e.value) == want


def test_an_unknown_column_or_a_latin_1_byte_is_refused(tmp_path):
    path = write(tmp_path, MAP.replace("notional_usd", "notional"))
    with pytest.raises(
        BookFileError, match="column 'notional' is not a column of a liquidation map; did you mean"
    ):
        build.static_of(config(path))
    path.write_bytes(MAP.encode() + "BTC,lông,95000,1e6\n".encode("latin-1"))
    with pytest.raises(BookFileError, match=r"row 7, column side = b'l\\xf4ng': allowed UTF-8 text"):
        build.static_of(config(path))
    pq.write_table(
        pcsv.read_csv(write(tmp_path, MAP)).set_column(3, "notional_usd", [[[1.0]] * 6]),
        tmp_path / "m.parquet",
    )
    with pytest.raises(
        BookFileError, match=r"row 1, column notional_usd = \[1.0\]: allowed one number or one text"
    ):
        build.static_of(config(tmp_path / "m.parquet"))
