"""Synthetic positions files (`engine.config.synthetic`, `liqstress make-book`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine import cli
from engine.config import book_checks, build, positions, synthetic
from engine.config.errors import ConfigError
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
    allowed = set(cfg.book.leverage) | {t.max_leverage for t in cfg.exchange.tiers}  # a level or its cap
    assert set(t.column("leverage").to_numpy()) <= allowed
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


# Peak resident memory of one make_positions call in a fresh process, above what the process
# held before it (bytes): Linux resets the peak (VmHWM) when "5" is written to clear_refs.
PEAK = """
import sys
from pathlib import Path
from engine.config import synthetic
from engine.config.files import load_config

def status(key):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) * 1024

cfg = load_config(sys.argv[1])
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS:")
synthetic.make_positions(cfg, 400_000, 1, cross_share=0.5, accounts=50_000, stop_share=0.5)
print(status("VmHWM:") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak memory reset")
def test_the_memory_estimate_bounds_the_measured_peak():
    config = str(Path(QUICK).parent / "oct10_2025_collateral.toml")
    run = subprocess.run([sys.executable, "-c", PEAK, config], capture_output=True, text=True, check=True)
    peak = int(run.stdout)
    cfg = load_config(config)
    estimate = synthetic.memory_needed(cfg, 400_000, cross_share=0.5, accounts=50_000, stop_share=0.5)
    # measured 149 MiB against 196 MiB: the estimate errs on the safe side, not far
    assert peak <= estimate <= 1.6 * peak, (peak, estimate)


def test_the_estimate_counts_columns_accounts_and_stops():
    cfg = Config.model_validate(small_dict())  # assets BTC and SOL, no collateral
    isolated = synthetic.memory_needed(cfg, 1000, cross_share=0.0, accounts=0, stop_share=0.0)
    # 10 numbers (80 B) and the texts asset (3), side (5), margin mode (8) at 5 B a character + 4
    assert isolated == synthetic.FIXED_BYTES + 1000 * (80 + 19 + 29 + 44)
    stops = synthetic.memory_needed(cfg, 1000, cross_share=0.0, accounts=0, stop_share=0.1)
    assert stops - isolated == 1000 * 32
    cross = synthetic.memory_needed(cfg, 1000, cross_share=0.5, accounts=100, stop_share=0.0)
    # ids "acct-99" (7), collateral "USD" (3), a second margin mode (32 B), 2 numbers; per
    # account 8 B times (2 sides x 2 assets + 2)
    assert cross - isolated == 1000 * (16 + 39 + 19 + 32) + 100 * 48
    assert synthetic.readable_bytes(cross) == "64.3 MiB" and synthetic.readable_bytes(512) == "512 B"


def test_a_request_beyond_the_memory_available_is_refused_before_allocating(monkeypatch):
    cfg = Config.model_validate(small_dict())
    fake = SimpleNamespace(available=synthetic.FIXED_BYTES + 172 * 10_000)  # room for 10,000 positions
    monkeypatch.setattr(synthetic.psutil, "virtual_memory", lambda: fake)
    assert synthetic.make_positions(cfg, 10_000).num_rows == 10_000
    with pytest.raises(ConfigError) as err:
        synthetic.make_positions(cfg, 100_000)
    assert str(err.value) == (
        "--positions 100,000: needs about 80.4 MiB of memory, more than the 65.6 MiB available; "
        "allowed: about 10,000 positions here"
    )


def test_accounts_must_hold_cross_positions():
    cfg = Config.model_validate(small_dict())
    with pytest.raises(
        ConfigError,
        match=r"--accounts 501: allowed 1 to 500, the cross positions \(--cross-share 0.5 of --positions 1,000\)",
    ):
        synthetic.make_positions(cfg, 1000, cross_share=0.5, accounts=501)
    t = synthetic.make_positions(cfg, 1000, cross_share=0.5, accounts=500)
    assert 0 < len(set(t.column("account_id").drop_null().to_pylist())) <= 500


@pytest.mark.parametrize("cross_share", [0.0, 0.5])
def test_every_position_of_a_synthetic_book_starts_alive(tmp_path, cross_share):
    """Entries are drawn among those the starting price leaves alive, leverage within the
    bracket (of the account leg for cross margin), margin after its collateral's haircut: the
    book's own check finds nothing at or beyond a liquidation price."""
    cfg = load_config("oct10_2025_collateral")  # collateral with haircuts; 125x at the top
    kwargs = {"cross_share": cross_share, "accounts": 300, "collateral_share": 1.0} if cross_share else {}
    table = synthetic.make_positions(cfg, 6_000, seed=4, **kwargs)
    path = tmp_path / "book.parquet"
    synthetic.write_positions(table, path)
    names = tuple(cfg.market.assets)
    pos = positions.load_positions(path, names, len(cfg.exchange.tiers), collateral=tuple(cfg.collateral))
    unit_value = np.array([(1.0 - c.haircut) * c.price for c in cfg.collateral.values()])
    prices = np.array([a.price for a in cfg.market.assets.values()])
    assert not book_checks.beyond(pos, prices, cfg.exchange.tiers, unit_value).liquidated.any()
    top = {t.max_notional_usd: t.max_leverage for t in cfg.exchange.tiers}
    notional = table.column("notional_usd").to_numpy()
    assert table.column("leverage").to_numpy()[notional > min(top)].max() < max(top.values())
