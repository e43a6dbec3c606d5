"""`liqstress calibrate` and `liqstress optimise`: exit codes and what they write."""

from __future__ import annotations

import json

import pytest
import tomli_w

from engine.cli import main
from engine.config.files import packaged_configs_dir, read_toml, resolve_config_path
from engine.fit.event_setup import load_joint
from tests.conftest import small_dict

TINY_RUN = {"n_paths": 16, "steps": 12, "seed": 1, "cascade_rounds": 3, "max_window": 16, "fan_points": 4}


def calibration_file(tmp_path, **change) -> str:
    data = {
        "kind": "calibration",
        "scenario": small_dict(run=TINY_RUN),
        "calibration": {"n_paths": 16, "iterations": 2, "seeds": [0]},
        "params": [{"path": "scenario.shock", "lower": -0.2, "upper": -0.01}],
        "targets": [{"statistic": "max_drawdown.BTC", "value": 0.1, "tolerance": 0.02}],
        **change,
    }
    p = tmp_path / "cal.toml"
    p.write_text(tomli_w.dumps(data))
    return str(p)


def run_cli(args) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code


def test_calibrate_writes_its_outputs_and_flags_targets_outside_tolerance(tmp_path, capsys):
    out = tmp_path / "cal_run"
    targets = [
        {"statistic": "max_drawdown.BTC", "value": 0.1, "tolerance": 0.02},
        {"statistic": "long_share", "value": 0.0, "tolerance": 0.01},
    ]  # the book is long-heavy
    assert run_cli(["calibrate", calibration_file(tmp_path, targets=targets), "--run-dir", str(out)]) in (
        0,
        None,
    )
    for name in ("fitted.json", "loss_curve.png", "report.md", "fitted_scenario.toml"):
        assert (out / name).is_file()
    captured = capsys.readouterr()
    fitted = json.loads((out / "fitted.json").read_text())
    share = fitted["targets"][1]
    assert not share["within_tolerance"] and share["fitted_mean"] > 0.01
    assert "warning: long_share: outside tolerance" in captured.err
    assert "outside tolerance" in captured.out  # the targets table


@pytest.mark.parametrize(
    "command, name", [("calibrate", "calibrate_oct10_2025"), ("optimise", "optimise_oct10_2025")]
)
def test_shipped_configs_run_by_name_from_any_directory(tmp_path, monkeypatch, capsys, command, name):
    monkeypatch.chdir(tmp_path)
    assert run_cli([command, name, "--dry-run"]) in (0, None)
    out = capsys.readouterr().out
    assert f"{name}: ok: " in out and "oct10_2025" in out and "would write to runs" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("command", ["calibrate", "optimise"])
def test_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, command):
    bad = calibration_file(
        tmp_path, targets=[{"statistic": "max_drawdown.BTC", "value": 0.1, "tolerance": -1.0}]
    )
    out = tmp_path / "never"
    assert run_cli([command, bad, "--run-dir", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "error" in err and ("tolerance" in err or "levers" in err or "kind" in err)


@pytest.mark.parametrize("command", ["calibrate", "optimise"])
def test_a_book_the_fit_cannot_take_exits_2_at_dry_run(tmp_path, capsys, command):
    """The relaxed kernel takes no collateral: the dry run refuses it, naming the file and field."""
    data = read_toml(resolve_config_path(f"{command}_oct10_2025"))
    data["scenario"]["base"] = str(packaged_configs_dir() / data["scenario"]["base"])
    data["scenario"]["collateral"] = {"USDe": {"haircut": 0.05}}
    path = tmp_path / "fit.toml"
    path.write_text(tomli_w.dumps(data))
    assert run_cli([command, str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: scenario.collateral: " in err and "relaxed kernel" in err and "USDe" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.toml"]


def test_backtest_dry_run_describes_the_backtest_with_its_own_seeds(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    jc = load_joint("joint_events")[0]
    assert list(jc.backtest.seeds) != list(jc.calibration.seeds)  # the plan must show the backtest's
    assert run_cli(["backtest", "--dry-run"]) in (0, None)
    out = " ".join(capsys.readouterr().out.split())
    folds = len(jc.events)
    seeds = list(jc.backtest.seeds or jc.calibration.seeds)
    assert f"backtest holding out {', '.join(jc.events)} one at a time ({folds} folds)" in out
    assert f"seeds {seeds}" in out and f"{jc.backtest.n_paths:,} exact-kernel paths" in out
    assert f"seed {jc.backtest.seed}" in out and "joint calibration over" not in out
    assert not any(tmp_path.iterdir())


def test_a_book_under_water_exits_2_at_dry_run_as_validate_does(tmp_path, capsys):
    """The issue's BTC short entered at 1.0 (a price in the wrong unit): refused before any fit."""
    book = tmp_path / "book.csv"
    book.write_text(
        "asset,side,notional_usd,entry_price,leverage\nBTC,short,1e6,1.0,10\nBTC,long,1e6,100000,10\n"
        "SOL,long,1e5,200,5\nSOL,short,1e5,200,5\n"
    )
    scenario = small_dict(run=TINY_RUN)
    scenario["book"] = {**scenario["book"], "positions": str(book)}
    path = calibration_file(tmp_path, scenario=scenario)
    assert run_cli(["calibrate", path, "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{book}: " in err and "beyond its liquidation price" in err and "book.max_underwater_share" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.csv", "cal.toml"]
