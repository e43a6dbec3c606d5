"""Books from positions files (`engine.config.book_file`): a file written from the parametric
book is the same book, cohort for cohort, and the same simulation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import book, book_checks, book_file, build, files
from engine.config.positions import BookFileError
from engine.config.schema import Config
from engine.sim.simulate import simulate
from tests.conftest import small_dict


def parametric_rows(cfg: Config) -> pa.Table:
    """One row per live cohort of the parametric book, as many positions of its representative
    size (`positions` = notional / size)."""
    c = book.build_cohorts(cfg)
    sizes = np.asarray(cfg.book.position_sizes_usd)
    size = np.broadcast_to(sizes[np.arange(c.side.shape[1]) % len(sizes)], c.side.shape)
    live = c.quantity > 0
    names = np.broadcast_to(np.array(list(cfg.market.assets))[:, None], c.side.shape)
    notional = c.quantity * c.entry
    return pa.table(
        {
            "asset": names[live],
            "side": np.where(c.side[live] > 0, "long", "short"),
            "quantity": c.quantity[live],
            "entry_price": c.entry[live],
            "leverage": c.leverage[live],
            "positions": (notional / size)[live],
        }
    )


def by_key(c: book.Cohorts) -> dict:
    """Quantity per (asset, side, entry, bankrupt, mmr, maintenance per unit), rounded to 12
    significant digits, of the live cohorts."""
    out: dict = {}
    for a in range(c.side.shape[0]):
        for j in np.flatnonzero(c.quantity[a] > 0):
            key = (a,) + tuple(
                float(f"{x:.12g}")
                for x in (c.side[a, j], c.entry[a, j], c.bankrupt[a, j], c.mmr[a, j], c.maint_amount[a, j])
            )
            out[key] = out.get(key, 0.0) + c.quantity[a, j]
    return out


@pytest.fixture
def pair(tmp_path):
    """(parametric config, the same book from a Parquet file)."""
    cfg = Config.model_validate(
        small_dict(run={"n_paths": 256, "steps": 24, "dtype": "float64", "kernel": "dense"})
    )
    path = tmp_path / "book.parquet"
    pq.write_table(parametric_rows(cfg), path)
    on_file = cfg.model_copy(update={"book": cfg.book.model_copy(update={"positions": str(path)})})
    return cfg, on_file


def test_the_file_book_is_the_parametric_book(pair):
    cfg, on_file = pair
    want, got = by_key(book.build_cohorts(cfg)), by_key(build.cohorts(on_file))
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
    c = build.cohorts(on_file)
    book.check_layout(c.side)
    assert c.side.shape[1] == book_file.cohorts_per_asset(on_file) == build.static_of(on_file).n_cohorts


def test_the_file_book_simulates_like_the_parametric_book(pair):
    cfg, on_file = pair
    a, b = simulate(cfg), simulate(on_file)
    assert a["liquidated_total_mean"].values.min() > 0  # the scenario liquidates: not 0 = 0
    for name in ("liquidated_total", "insurance_fund_draw", "max_drawdown"):
        np.testing.assert_allclose(b[f"{name}_mean"].values, a[f"{name}_mean"].values, rtol=1e-9)


def random_book(cfg: Config, path, n: int = 20_000, seed: int = 0):
    """n isolated positions over the scenario's assets: log-normal sizes, entries within a few
    percent of the price, the usual leverage levels."""
    rng = np.random.default_rng(seed)
    assets = list(cfg.market.assets)
    a = rng.integers(0, len(assets), n)
    price = np.array([cfg.market.assets[x].price for x in assets])[a]
    table = pa.table(
        {
            "asset": np.array(assets)[a],
            "side": rng.choice(["long", "short"], n, p=[0.6, 0.4]),
            "notional_usd": rng.lognormal(10, 1.5, n),
            "entry_price": price * np.exp(rng.normal(-0.02, 0.03, n)),
            "leverage": rng.choice([2.0, 3, 5, 10, 20, 25, 50, 100], n),
        }
    )
    pq.write_table(table, path)
    return table


@pytest.mark.parametrize("width, tolerance, share", [(0.001, 0.002, 0.8), (0.01, 0.01, 0.3)])
def test_entry_buckets_keep_the_sums_and_move_liquidations_little(tmp_path, width, tolerance, share):
    """Binning entries keeps every position's quantity, notional and maintenance margin in the
    book's sums, cuts the cohorts (to less than `share`), and moves the simulated mean liquidations by less than
    `tolerance` (relative) against the exact groups on the same draws (float64)."""
    base = Config.model_validate(
        small_dict(run={"n_paths": 256, "steps": 24, "dtype": "float64", "kernel": "dense"})
    )
    random_book(base, tmp_path / "b.parquet", n=5_000)
    with_bin = lambda w: base.model_copy(
        update={
            "book": base.book.model_copy(update={"positions": str(tmp_path / "b.parquet"), "entry_bin": w})
        }
    )
    exact, binned = with_bin(0.0), with_bin(width)
    ce, cb = build.cohorts(exact), build.cohorts(binned)
    assert cb.side.shape[1] < share * ce.side.shape[1]
    for name, f in [("quantity", lambda c: c.quantity), ("notional", lambda c: c.quantity * c.entry),
                    ("maintenance", lambda c: c.quantity * c.maint_amount)]:  # fmt: skip
        np.testing.assert_allclose(f(cb).sum(1), f(ce).sum(1), rtol=1e-9, err_msg=name)
    a, b = simulate(exact), simulate(binned)
    got, want = b["liquidated_total_mean"].values, a["liquidated_total_mean"].values
    assert want.min() > 0
    rel = np.abs(got / want - 1.0)
    assert rel.max() < tolerance, rel


# One BTC long 10x at 100,000 (safe), one bought at 111,000 (bankruptcy 99,900: beyond its
# liquidation price, not its bankruptcy price), and the short entered at 1.0 (a price
# in the wrong unit: 1,000 units, beyond both), with BTC starting at 100,000.
UNDER = """asset,side,notional_usd,entry_price,leverage
BTC,long,1e6,100000,10
BTC,long,1.11e6,111000,10
BTC,short,1000,1.0,10
SOL,long,1e5,200,5
"""


def under_config(path, share: float | None = None) -> Config:
    extra = {} if share is None else {"max_underwater_share": share}
    return Config.model_validate(small_dict(book={"positions": str(path), **extra}))


def test_rows_beyond_their_liquidation_and_bankruptcy_price(tmp_path):
    """Against the margin arithmetic written out (`engine.model.margin`), at the default tiers;
    notional at the starting prices."""
    path = tmp_path / "b.csv"
    path.write_text(UNDER)
    cfg = under_config(path)
    pos = book_file.read_positions(book_file.source_of(cfg))
    got = book_checks.beyond(pos, np.array([100_000.0, 200.0]), cfg.exchange.tiers, np.zeros(0))
    # row 2: b = 111,000 (1 - 1/10) = 99,900; tier of 1.11e6 is 3 (mmr 2.5%, amount 16,300 USD)
    amounts = book.maintenance_amounts(cfg.exchange.tiers)
    p_liq = (99_900 - amounts[3] / 10) / (1 - 0.025)
    assert p_liq > 100_000
    np.testing.assert_array_equal(got.liquidated, [False, True, True, False])
    np.testing.assert_array_equal(got.bankrupt, [False, False, True, False])
    np.testing.assert_allclose(got.notional, [1e6, 1e6, 1e8, 1e5])


def test_the_parametric_book_starts_with_nothing_beyond(pair):
    """The parametric book drops what the starting price has liquidated: its file has no such row."""
    _, on_file = pair
    pos = book_file.read_positions(book_file.source_of(on_file))
    got = book_checks.beyond(pos, np.array([100_000.0, 200.0]), on_file.exchange.tiers, np.zeros(0))
    assert len(pos.asset) > 50 and not got.liquidated.any()


def test_a_book_mostly_beyond_its_liquidation_price_is_refused(tmp_path):
    """The issue's short at 1.0 and the long at 111,000: 1.01e8 of the 1.021e8 USD book (98.92%,
    at the starting prices) would be liquidated at once."""
    path = tmp_path / "b.csv"
    path.write_text(UNDER)
    with pytest.raises(BookFileError) as e:
        book_checks.underwater_warnings(under_config(path))
    assert str(e.value) == (
        f"{path}: 98.92% of the book's notional at the starting prices ($101 M of $102 M) starts at or "
        "beyond its liquidation price and is liquidated in the first step (BTC: 2 rows, $101 M, of which "
        "$100 M beyond bankruptcy, rows 2, 3); allowed up to book.max_underwater_share = 0.01 of the "
        "notional: check those rows' entry_price (a price in the wrong unit does this) and leverage, or "
        "raise book.max_underwater_share"
    )


def test_within_the_allowed_share_it_is_a_warning_of_the_study(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text(UNDER.replace("BTC,short,1000,1.0,10\n", "").replace("1.11e6", "1.11e4"))
    (tmp_path / "c.toml").write_text('base = "quick"\n[book]\npositions = "b.csv"\n')
    study = files.load_study(str(tmp_path / "c.toml"))
    want = (
        f"{path}: 0.90% of the book's notional at the starting prices ($10 k of $1.11 M) starts at or beyond "
        "its liquidation price and is liquidated in the first step (BTC: 1 row, $10 k, row 2), within "
        "book.max_underwater_share = 0.01"
    )
    assert study.warnings == (want,)
    path.write_text(UNDER.replace("BTC,short,1000,1.0,10\n", "").replace("111000", "100000"))
    assert files.load_study(str(tmp_path / "c.toml")).warnings == ()
    assert book_checks.underwater_warnings(under_config(path, share=0.0)) == []
