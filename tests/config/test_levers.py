"""Levers that cannot change anything (`engine.config.levers`): inert sweep axes and duplicate
points are warned about, levers that act are not."""

from __future__ import annotations

import pytest

from engine.cli import main
from engine.config.levers import fingerprint
from engine.config.schema import Config
from engine.config.sweep import build_study
from engine.report.compare import diagnostics
from tests.conftest import small_dict

DEPEG = {"collateral": "USDe", "gap": 0.3, "start_step": 2, "steps": 2}


def study(sweep: dict, **sections):
    return build_study({**small_dict(**sections), "sweep": sweep})


def test_a_depeg_axis_on_a_book_without_collateral_accounts_is_inert():
    s = study(
        {"scenario.depegs.0.gap": [0.0, 0.3]},
        collateral={"USDe": {"haircut": 0.05}},
        scenario={**small_dict()["scenario"], "depegs": [DEPEG]},
    )
    collateral, w = s.warnings
    assert collateral.startswith("collateral (USDe) and its 1 scenario.depegs cannot change anything")
    assert w.startswith("sweep axis scenario.depegs.0.gap cannot change anything: the book has no cross")
    assert "its 2 values give the same simulation" in w


def test_a_breaker_threshold_with_the_breaker_off_is_inert():
    (w,) = study({"policy.breaker.threshold": [0.03, 0.05, 0.08]}).warnings
    assert w.startswith("sweep axis policy.breaker.threshold cannot change anything")
    assert 'policy.breaker.kind is "none"' in w and "its 3 values" in w


def test_points_that_duplicate_others_are_named_when_no_axis_is_inert():
    """The threshold matters where the breaker halts, not where it is off: two duplicates."""
    s = study({"policy.breaker.kind": ["none", "halt"], "policy.breaker.threshold": [0.03, 0.05]})
    (w,) = s.warnings
    assert w.startswith("1 sweep point(s) simulate the same thing as another point: ")
    assert "(breaker_kind=none, breaker_threshold=0.05) = (breaker_kind=none, breaker_threshold=0.03)" in w


@pytest.mark.parametrize(
    "sweep",
    [
        {"policy.leverage_cap": [10, 20, 50]},
        {"policy.breaker.kind": ["none", "halt"]},
        {"scenario.shock": [-0.05, -0.1], "policy.insurance_fund_usd": [1e8, 2e8]},
    ],
)
def test_levers_that_act_are_not_warned_about(sweep):
    assert study(sweep).warnings == ()


def test_the_fingerprint_sees_every_parameter_and_the_closing_flag():
    base = Config.model_validate(small_dict())
    same = Config.model_validate(small_dict())
    fund = Config.model_validate(small_dict(policy={"insurance_fund_usd": 2e8 + 1}))
    closing = base.model_copy(
        update={
            "market": base.market.model_copy(
                update={"derisk": base.market.derisk.model_copy(update={"vol_rate_per_day": 0.5})}
            )
        }
    )
    assert fingerprint(base) == fingerprint(same)
    assert len({fingerprint(base), fingerprint(fund), fingerprint(closing)}) == 3


class _Point:
    def __init__(self, attrs):
        self.ds = type("DS", (), {"attrs": attrs, "__contains__": lambda self, k: False})()


def test_the_report_and_terminal_repeat_a_runs_warnings_once():
    pols = [_Point({"warnings": "first\nsecond", "n_paths": 4}), _Point({"warnings": "first\nsecond"})]
    assert diagnostics(pols) == ["first", "second"]


def test_validate_prints_the_warning(tmp_path, capsys):
    import tomli_w

    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({**small_dict(), "sweep": {"policy.breaker.threshold": [0.03, 0.05]}}))
    with pytest.raises(SystemExit) as e:
        main(["validate", str(path)])
    assert e.value.code in (0, None)
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: sweep axis policy.breaker.threshold cannot change anything" in err


def test_collateral_and_a_fixed_depeg_on_a_book_without_accounts_are_warned_about():
    s = study(
        {},
        collateral={"USDe": {"haircut": 0.05}},
        scenario={**small_dict()["scenario"], "depegs": [DEPEG]},
    )
    assert s.warnings == (
        (
            "collateral (USDe) and its 1 scenario.depegs cannot change anything: the book has no "
            "cross-margin accounts to post collateral (a positions file with cross rows has them)"
        ),
    )


def test_a_run_warns_before_it_starts_and_its_report_repeats_the_warning(tmp_path, capsys):
    import tomli_w

    run = {"n_paths": 16, "steps": 12, "seed": 1, "cascade_rounds": 3, "max_window": 16, "fan_points": 4}
    data = {**small_dict(run=run), "sweep": {"policy.breaker.threshold": [0.03, 0.05]}}
    (tmp_path / "c.toml").write_text(tomli_w.dumps(data))
    with pytest.raises(SystemExit) as e:
        main(["run", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert e.value.code in (0, None)
    err = " ".join(capsys.readouterr().err.split())
    plan, after = err.split("warning: sweep axis policy.breaker.threshold cannot change anything", 1)
    assert "kernel:" in plan and "path-points" in after  # said before the run's progress
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Warnings\n\n- sweep axis policy.breaker.threshold cannot change anything" in report
