"""`liqstress calibrate` and `liqstress optimise`: exit codes and what they write."""

from __future__ import annotations

import pytest
import tomli_w

from engine.cli import main
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


def test_calibrate_writes_its_outputs(tmp_path):
    out = tmp_path / "cal_run"
    assert run_cli(["calibrate", calibration_file(tmp_path), "--run-dir", str(out)]) in (0, None)
    for name in ("fitted.json", "loss_curve.png", "report.md", "fitted_scenario.toml"):
        assert (out / name).is_file()


@pytest.mark.parametrize("command", ["calibrate", "optimise"])
def test_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, command):
    bad = calibration_file(tmp_path, targets=[{"statistic": "max_drawdown.BTC", "value": 0.1, "tolerance": -1.0}])
    out = tmp_path / "never"
    assert run_cli([command, bad, "--run-dir", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "error" in err and ("tolerance" in err or "levers" in err or "kind" in err)
