"""Synthetic positions files (`engine.config.synthetic`, `liqstress make-book`)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from engine import cli
from engine.config import build, synthetic
from engine.config.files import load_config
from engine.config.schema import Config
from tests.cli.test_bad_configs import QUICK
from tests.conftest import small_dict


def test_a_synthetic_book_holds_each_assets_open_interest_and_long_share():
    cfg = Config.model_validate(small_dict())
    t = synthetic.make_positions(cfg, 20_000, seed=1)
    names, side, notional = (
        t.column(c).to_numpy(zero_copy_only=False) for c in ("asset", "side", "notional_usd")
    )
    for name, spec in cfg.market.assets.items():
        longs = notional[(names == name) & (side == "long")].sum()
        shorts = notional[(names == name) & (side == "short")].sum()
        np.testing.assert_allclose(longs + shorts, spec.open_interest_usd, rtol=1e-9)
        np.testing.assert_allclose(longs / (longs + shorts), spec.long_share, rtol=1e-9)
    assert set(t.column("leverage").to_numpy()) <= set(cfg.book.leverage)
    assert synthetic.make_positions(cfg, 20_000, seed=1).equals(t)
    assert not synthetic.make_positions(cfg, 20_000, seed=2).equals(t)


def test_make_book_writes_a_file_that_runs_as_a_book(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["make-book", "book.parquet", "--config", QUICK, "--positions", "5000", "--seed", "3"]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "book.parquet").num_rows == 5000
    quick = load_config(QUICK)
    cfg = quick.model_copy(
        update={"book": quick.book.model_copy(update={"positions": str(tmp_path / "book.parquet")})}
    )
    c = build.cohorts(cfg)
    for a, spec in enumerate(cfg.market.assets.values()):
        np.testing.assert_allclose((c.quantity[a] * c.entry[a]).sum(), spec.open_interest_usd, rtol=1e-9)


def test_make_book_refuses_other_file_types_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["make-book", "book.xlsx", "--positions", "100"])
    assert result.exit_code == 2
    assert "allowed: .csv, .parquet" in result.output
    assert list(tmp_path.iterdir()) == []
