"""Cross-margin accounts from positions files (`engine.config.accounts`), collateral and depeg
parameters (`engine.config.build`): sums kept by the aggregation, one cohort per account at
`account_bin = 0`, leverage buckets, legs an account does not hold, and the error of binning."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine import cli
from engine.config import accounts, book, book_checks, book_file, build, forms, synthetic
from engine.config.book import maintenance_amounts, tier_index
from engine.config.files import load_config
from engine.config.positions import BookFileError
from engine.config.schema import Config
from tests.cli.test_bad_configs import QUICK
from tests.conftest import small_dict

COLLATERAL = {"USDe": {"haircut": 0.05}, "wBTC": {"price": 100_000.0, "tracks": "BTC", "haircut": 0.1}}
# Two accounts of BTC long and SOL short (one in USDe and USD), one of BTC long only, at 10x,
# 10.2x and 11x: the first two share a 0.05-wide bucket of log leverage, the third does not.
ROWS = """asset,side,notional_usd,entry_price,leverage,margin_mode,account_id,collateral,tier
BTC,long,100000,100000,10,cross,a,USD,
SOL,short,50000,200,10,cross,a,USDe,
BTC,long,60000,99000,10.2,cross,b,USD,
SOL,short,40000,210,10.2,cross,b,USDe,
BTC,long,30000,100000,11,cross,c,USD,
BTC,long,30000,102000,11,cross,c,USD,
BTC,long,20000,100000,5,isolated,,USD,
"""


def config(path, account_bin: float = 0.05, collateral=COLLATERAL, **sections) -> Config:
    """The small scenario with the positions file `path`, `collateral` and other `sections`."""
    return Config.model_validate(
        small_dict(
            book={"positions": str(path), "account_bin": account_bin}, collateral=collateral, **sections
        )
    )


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "book.csv"
    path.write_text(ROWS)
    return path


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory):
    """20,000 positions, 60% cross over 2,000 accounts, half of them in USDe or wBTC."""
    path = tmp_path_factory.mktemp("accounts") / "book.parquet"
    base = config(path)
    table = synthetic.make_positions(base, 20_000, seed=1, cross_share=0.6, accounts=2_000, stop_share=0.1)
    synthetic.write_positions(table, path)
    return path


def unit_value(cfg: Config) -> np.ndarray:
    """Margin value at t0 of one unit of each collateral asset (USD)."""
    return np.array([(1 - c.haircut) * c.price for c in cfg.collateral.values()])


def cross_rows(path) -> dict:
    """The cross rows of a positions file as NumPy columns, with their margin (USD)."""
    table = pq.read_table(path)
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    m = cols["margin_mode"] == "cross"
    out = {c: v[m] for c, v in cols.items()}
    out["margin"] = out["notional_usd"] / out["leverage"]
    return out


def test_an_account_is_the_sum_of_its_rows(rows_file):
    cfg = config(rows_file, account_bin=0.0)
    acc = accounts.account_cohorts(cfg)
    assert len(acc.weight) == 3 and np.array_equal(acc.weight, [1, 1, 1])
    # cohorts are ordered by key; find account a by its wallet (USD margin of its BTC row)
    a = int(np.argmin(np.abs(acc.wallet - 10_000)))
    np.testing.assert_allclose(acc.quantity[a], [1.0, 250.0])
    np.testing.assert_allclose(acc.entry[a], [100_000.0, 200.0])
    np.testing.assert_array_equal(acc.side[a], [1.0, -1.0])
    np.testing.assert_allclose(acc.collateral[a], [5_000 / 0.95, 0.0])
    np.testing.assert_allclose(acc.leverage[a], 150_000 / 15_000)
    tiers = cfg.exchange.tiers
    for j, notional in enumerate([100_000.0, 50_000.0]):
        t = int(tier_index(tiers, notional))
        assert acc.mmr[a, j] == tiers[t].mmr
        np.testing.assert_allclose(acc.maint_amount[a, j], maintenance_amounts(tiers)[t] / acc.quantity[a, j])
    c = int(np.argmin(np.abs(acc.wallet - 60_000 / 11)))
    np.testing.assert_allclose(acc.quantity[c, 0], 0.3 + 30_000 / 102_000)
    np.testing.assert_allclose(acc.entry[c, 0], 60_000 / acc.quantity[c, 0])
    np.testing.assert_allclose(acc.positions[c], [2.0, 0.0])


def test_a_leg_the_account_does_not_hold_is_empty_at_the_starting_price(rows_file):
    cfg = config(rows_file, account_bin=0.0)
    acc = accounts.account_cohorts(cfg)
    c = int(np.argmin(np.abs(acc.wallet - 60_000 / 11)))
    assert acc.quantity[c, 1] == 0 and acc.side[c, 1] == 1 and acc.maint_amount[c, 1] == 0
    assert acc.entry[c, 1] == cfg.market.assets["SOL"].price and acc.positions[c, 1] == 0
    assert acc.mmr[c, 1] == cfg.exchange.tiers[0].mmr


def test_the_tier_column_overrides_a_legs_tier(tmp_path):
    path = tmp_path / "book.csv"
    path.write_text(
        ROWS.replace("BTC,long,100000,100000,10,cross,a,USD,", "BTC,long,100000,100000,10,cross,a,USD,3")
    )
    cfg = config(path, account_bin=0.0)
    acc = accounts.account_cohorts(cfg)
    a = int(np.argmin(np.abs(acc.wallet - 10_000)))
    assert acc.mmr[a, 0] == cfg.exchange.tiers[3].mmr
    np.testing.assert_allclose(acc.maint_amount[a, 0], maintenance_amounts(cfg.exchange.tiers)[3] / 1.0)


def test_accounts_in_one_leverage_bucket_are_one_cohort(rows_file):
    """a (10x) and b (10.2x) hold the same legs, tiers and collateral within one 0.05 bucket of
    log leverage; c holds other legs. A wider bin merges nothing more, a zero bin splits a, b."""
    binned = accounts.account_cohorts(config(rows_file, account_bin=0.05))
    assert sorted(binned.weight) == [1, 2]
    ab = int(np.argmax(binned.weight))
    np.testing.assert_allclose(binned.leverage[ab], (150_000 + 100_000) / (15_000 + 100_000 / 10.2))
    np.testing.assert_allclose(binned.quantity[ab], [1.0 + 60_000 / 99_000, 250.0 + 40_000 / 210])
    np.testing.assert_allclose(binned.entry[ab, 0], 160_000 / binned.quantity[ab, 0])
    assert math.floor(math.log(binned.leverage[ab]) / 0.05) == math.floor(math.log(10.0) / 0.05)
    assert len(accounts.account_cohorts(config(rows_file, account_bin=0.0)).weight) == 3


def test_account_bin_zero_gives_one_cohort_per_account(synthetic_file):
    acc = accounts.account_cohorts(config(synthetic_file, account_bin=0.0))
    rows = cross_rows(synthetic_file)
    assert len(acc.weight) == len(set(rows["account_id"])) and np.all(acc.weight == 1)


@pytest.mark.parametrize("width", [0.0, 0.05, 0.5])
def test_aggregation_keeps_every_sum(synthetic_file, width):
    """Units per asset and side, notional, wallets, collateral value, margin, positions and the
    number of accounts are those of the cross rows, whatever the bin width."""
    cfg = config(synthetic_file, account_bin=width)
    acc = accounts.account_cohorts(cfg)
    rows = cross_rows(synthetic_file)
    assert acc.weight.sum() == len(set(rows["account_id"]))
    names = list(cfg.market.assets)
    for j, name in enumerate(names):
        for s, side in ((1.0, "long"), (-1.0, "short")):
            m = (rows["asset"] == name) & (rows["side"] == side)
            units = rows["notional_usd"][m] / rows["entry_price"][m]
            np.testing.assert_allclose(acc.quantity[acc.side[:, j] == s, j].sum(), units.sum(), rtol=1e-12)
            notional = (acc.quantity * acc.entry)[acc.side[:, j] == s, j].sum()
            np.testing.assert_allclose(notional, rows["notional_usd"][m].sum(), rtol=1e-12)
    np.testing.assert_allclose(
        acc.wallet.sum(), rows["margin"][rows["collateral"] == "USD"].sum(), rtol=1e-12
    )
    value = acc.collateral.sum(0) * unit_value(cfg)
    for c, name in enumerate(cfg.collateral):
        np.testing.assert_allclose(value[c], rows["margin"][rows["collateral"] == name].sum(), rtol=1e-12)
    margin = np.sum(acc.quantity * acc.entry, 1) / acc.leverage
    np.testing.assert_allclose(margin.sum(), rows["margin"].sum(), rtol=1e-12)
    np.testing.assert_allclose(acc.positions.sum(), len(rows["margin"]), rtol=1e-12)


def test_a_cohorts_leverage_lies_in_its_accounts_bucket(synthetic_file):
    """Every account of a cohort has the cohort's bucket of log leverage, so the cohort's
    leverage (summed notional over summed margin) lies in it too."""
    width = 0.05
    cfg = config(synthetic_file, account_bin=width)
    acc = accounts.account_cohorts(cfg)
    each = accounts.account_cohorts(config(synthetic_file, account_bin=0.0))
    buckets = np.floor(np.log(acc.leverage) / width)
    assert set(buckets) <= set(np.floor(np.log(each.leverage) / width))
    assert len(acc.weight) < 0.9 * len(each.weight)


def under_water_notional(acc, cfg: Config, move: float) -> float:
    """Notional (USD at the moved prices) of the accounts with equity at or below maintenance
    after every price moves by `move` (collateral that tracks an asset moves with it)."""
    price = np.array([a.price for a in cfg.market.assets.values()]) * (1 + move)
    coll = np.array(
        [(1 - c.haircut) * c.price * ((1 + move) if c.tracks else 1.0) for c in cfg.collateral.values()]
    )
    equity = acc.wallet + acc.collateral @ coll + np.sum(acc.side * acc.quantity * (price - acc.entry), 1)
    maintenance = np.sum(acc.quantity * (acc.mmr * price - acc.maint_amount), 1)
    hit = (acc.quantity.sum(1) > 0) & (equity <= maintenance)
    return float(np.sum((acc.quantity * price)[hit]))


@pytest.mark.parametrize("move", [-0.3, -0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2, 0.3])
def test_binning_moves_the_notional_under_water_little(synthetic_file, move):
    """The default bins (0.05) against one cohort per account, on the synthetic book of 2,000
    accounts (1,178 cohorts for 1,997 accounts, every account alive at the start): the notional
    under water after a uniform price move differs by at most 1.8% of the cross notional
    (measured over seeds 1-3 of the book: 1.77%, 1.62%, 1.31% at worst, at +10% or -20%; bound 2.5%)."""
    exact = accounts.account_cohorts(config(synthetic_file, account_bin=0.0))
    binned = accounts.account_cohorts(config(synthetic_file))
    cfg = config(synthetic_file)
    price = np.array([a.price for a in cfg.market.assets.values()]) * (1 + move)
    total = np.sum(exact.quantity * price)
    diff = under_water_notional(binned, cfg, move) - under_water_notional(exact, cfg, move)
    assert abs(diff) / total < 0.025


def test_collateral_parameters_and_the_depeg_schedule(rows_file):
    depegs = [
        {"collateral": "USDe", "gap": 0.2, "start_step": 5, "steps": 4},
        {"collateral": "USDe", "gap": 0.35, "start_step": 7, "steps": 3},
    ]
    coll = {**COLLATERAL, "USDe": {"haircut": 0.05, "depeg_per_day": 0.5, "recovery_halflife_steps": 6}}
    d = small_dict(book={"positions": str(rows_file)}, collateral=coll)
    d["scenario"] = {**d["scenario"], "depegs": depegs}
    cfg = Config.model_validate(d)
    cp = build.collateral_params(cfg)
    np.testing.assert_allclose(cp.price0, [1.0, 100_000.0])
    np.testing.assert_allclose(cp.haircut, [0.05, 0.1])
    np.testing.assert_array_equal(cp.track, [-1, 0])
    np.testing.assert_allclose(cp.depeg_prob, [1 - math.exp(-0.5 / 288), 0.0], rtol=1e-6)
    np.testing.assert_allclose(cp.depeg_size, [0.1, 0.1])
    np.testing.assert_allclose(cp.recovery, [0.5 ** (1 / 6), 0.5 ** (1 / 12)], rtol=1e-6)
    gap = np.asarray(build.build_schedule(cfg).depeg)
    want = np.zeros((cfg.run.steps, 2))
    want[5:9, 0] = 0.2
    want[7:10, 0] = 0.35
    np.testing.assert_allclose(gap, want)


def test_params_and_static_of_a_book_with_accounts(rows_file):
    cfg = config(rows_file, run={"kernel": "ladder"})
    params, static = build.build(cfg)
    assert static.n_accounts == 2 and static.n_collateral == 2 and not static.stops
    assert params.accounts.quantity.shape == (2, 2) and params.accounts.collateral.shape == (2, 2)
    assert params.collateral.price0.shape == (2,) and params.schedule.depeg.shape == (cfg.run.steps, 2)
    forced = forms.specialise(static, [cfg])  # accounts and collateral run on the ladder
    assert forms.form(forced) == "ladder" and not forced.whole_only
    auto = cfg.model_copy(update={"run": cfg.run.model_copy(update={"kernel": "auto"})})
    fast = forms.specialise(static, [auto])
    assert (fast.whole_only, fast.ladder, fast.ladder_cells) == (False, 0, 0)
    assert forms.form(fast) == "dense general"


def test_no_accounts_no_collateral_parameters(rows_file, tmp_path):
    isolated = tmp_path / "iso.csv"
    isolated.write_text(ROWS.splitlines()[0] + "\n" + ROWS.splitlines()[-1] + "\n")
    cfg = config(isolated)
    params, static = build.build(cfg)
    assert params.accounts is None and params.collateral is None and params.schedule.depeg is None
    assert static.n_accounts == static.n_collateral == 0
    in_usd = tmp_path / "usd.csv"
    in_usd.write_text(ROWS.replace("USDe", "USD"))
    no_coll = config(in_usd, collateral={})
    assert build.collateral_params(no_coll) is None and build.account_params(no_coll) is not None
    assert build.static_of(no_coll).n_collateral == 0


def test_a_file_of_cross_rows_only_gets_an_empty_isolated_book(tmp_path):
    path = tmp_path / "cross.csv"
    path.write_text("\n".join(ROWS.splitlines()[:-1]) + "\n")
    cfg = config(path)
    params, static = build.build(cfg)
    book.check_layout(np.asarray(params.book.side))
    assert params.book.side.shape == (2, 2) == (static.n_assets, static.n_cohorts)
    assert float(np.abs(params.book.quantity).sum()) == 0.0
    assert static.n_accounts == 2


def test_the_file_cache_follows_the_collateral(rows_file):
    a = accounts.account_cohorts(config(rows_file, account_bin=0.0))
    haircut = {**COLLATERAL, "USDe": {"haircut": 0.5}}
    b = accounts.account_cohorts(config(rows_file, account_bin=0.0, collateral=haircut))
    np.testing.assert_allclose(b.collateral.sum(0)[0], a.collateral.sum(0)[0] * 0.95 / 0.5)
    with pytest.raises(BookFileError, match="column collateral = 'USDe': allowed USD, wBTC"):
        accounts.account_cohorts(config(rows_file, collateral={"wBTC": COLLATERAL["wBTC"]}))


def test_make_book_writes_cross_accounts_and_stops_that_load(tmp_path, monkeypatch):
    """`liqstress make-book` with cross accounts and stops: the open interest and long share of
    each asset are kept, each account holds one side per asset, and the file builds."""
    monkeypatch.chdir(tmp_path)
    argv = ["make-book", "book.parquet", "--config", QUICK, "--positions", "5000", "--cross-share", "0.3"]
    argv += ["--accounts", "200", "--stop-share", "0.2"]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "book.parquet")
    mode = table.column("margin_mode").to_numpy(zero_copy_only=False)
    assert 0.25 < np.mean(mode == "cross") < 0.35
    quick = load_config(QUICK)
    cfg = quick.model_copy(
        update={"book": quick.book.model_copy(update={"positions": str(tmp_path / "book.parquet")})}
    )
    params, static = build.build(cfg)
    assert 0 < static.n_accounts <= 200 and static.stops
    assert params.accounts.quantity.shape == (static.n_accounts, 2)
    names, side = (table.column(c).to_numpy(zero_copy_only=False) for c in ("asset", "side"))
    notional = table.column("notional_usd").to_numpy()
    for name, spec in cfg.market.assets.items():
        longs = notional[(names == name) & (side == "long")].sum()
        np.testing.assert_allclose(notional[names == name].sum(), spec.open_interest_usd, rtol=1e-9)
        np.testing.assert_allclose(longs / spec.open_interest_usd, spec.long_share, rtol=1e-9)


def test_make_book_refuses_cross_positions_without_accounts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["make-book", "book.csv", "--config", QUICK, "--positions", "100", "--cross-share", "0.5"]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 2 and "--accounts 0: allowed 1 to 50" in result.output
    assert list(tmp_path.iterdir()) == []


def test_accounts_under_water_at_the_starting_prices(tmp_path):
    """Account x (100x BTC long bought at 101,000, USD margin 1,000): equity 1,000 - 0.990 x
    1,000 = 9.9 USD, under its maintenance 0.990 x 0.4% x 100,000 = 396 USD; account y (the
    same long plus a SOL short entered at 150, so its equity is negative) is beyond bankruptcy;
    account z (10x at the price) is safe. Every row of an account shares its verdict."""
    path = tmp_path / "book.csv"
    path.write_text(
        "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id\n"
        "BTC,long,1e5,101000,100,cross,x\nBTC,long,1e5,101000,100,cross,y\n"
        "SOL,short,1.5e4,150,10,cross,y\nBTC,long,1e5,100000,10,cross,z\nBTC,long,1e4,100000,10,isolated,\n"
    )
    cfg = config(path, collateral={})
    pos = book_file.read_positions(book_file.source_of(cfg))
    got = book_checks.beyond(pos, np.array([100_000.0, 200.0]), cfg.exchange.tiers, np.zeros(0))
    units = 1e5 / 101_000
    equity_x, maint_x = 1e3 + units * (100_000 - 101_000), units * 0.004 * 100_000
    equity_y = equity_x + 1.5e3 - 100.0 * (200 - 150)  # SOL short: 100 units, 50 USD each against it
    assert equity_x < maint_x and equity_x > 0 and equity_y < 0
    np.testing.assert_array_equal(got.liquidated, [True, True, True, False, False])
    np.testing.assert_array_equal(got.bankrupt, [False, True, True, False, False])
    np.testing.assert_allclose(got.notional, [units * 1e5, units * 1e5, 2e4, 1e5, 1e4])
