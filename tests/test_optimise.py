"""Policy optimisation: gradient search on the relaxed kernel, exact check against a grid."""

from __future__ import annotations

import json

import pytest

from engine import ConfigError
from engine.optimise import OptimisationConfig, load_optimisation, optimise, restrictiveness, write_report
from tests.conftest import small_dict


def small_problem(bound: float) -> OptimisationConfig:
    d = small_dict(run={"n_paths": 64, "steps": 24, "seed": 1, "cascade_rounds": 4, "max_window": 16, "fan_points": 4})
    return OptimisationConfig.model_validate({
        "scenario": d,
        "optimise": {"n_paths": 64, "iterations": 80, "learning_rate": 0.2, "check_paths": 512, "grid_points": 6},
        "levers": [{"path": "policy.leverage_cap", "lower": 2.0, "upper": 100.0}],
        "constraint": {"statistic": "mean_liquidated_total", "bound": bound},
    })


def test_optimum_is_feasible_and_no_costlier_than_the_best_grid_point(tmp_path):
    oc = small_problem(5e9)
    res = optimise(oc, log=lambda _: None)
    summary = write_report(oc, res, tmp_path)
    check, best = res.check, res.best_grid
    assert best is not None
    # feasible within Monte Carlo error on fresh paths, exact kernel
    assert check["statistic"] - 2 * check["mc_se"] <= 5e9
    # at least as good as the best feasible grid point (same fresh paths)
    assert check["cost"] <= best["cost"] + 0.02
    # the cap is restrictive only as far as needed: looser than the fully restrictive end
    assert res.values[0] > 2.0 * 1.5
    assert summary["optimum_at_least_as_good_as_grid"]
    saved = json.loads((tmp_path / "optimum.json").read_text())
    assert saved["optimum"] == pytest.approx(list(res.values))
    assert (tmp_path / "report.md").read_text().count("|") > 10
    assert (tmp_path / "trajectory.png").stat().st_size > 0


def test_restrictiveness_runs_from_loose_to_tight():
    oc = small_problem(1e9)
    lv = oc.levers[0]
    assert restrictiveness(lv, 100.0) == pytest.approx(0.0)
    assert restrictiveness(lv, 2.0) == pytest.approx(1.0)
    assert 0.0 < restrictiveness(lv, 10.0) < 1.0


@pytest.mark.parametrize("change, field", [
    ({"levers": [{"path": "policy.leverage_kap", "lower": 2, "upper": 100}]}, "levers.0"),
    ({"levers": [{"path": "policy.breaker.threshold", "lower": 0.02, "upper": 0.2}]}, "levers.0.path"),
    ({"constraint": {"statistic": "es95_bad_debt"}}, "constraint"),
    ({"levers": [{"path": "policy.leverage_cap", "lower": 100, "upper": 2}]}, "levers.0"),
])
def test_bad_optimisation_config_names_the_field(tmp_path, change, field):
    import tomli_w

    data = {**small_problem(1e9).model_dump(mode="json", exclude_none=True), **change}
    p = tmp_path / "opt.toml"
    p.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_optimisation(p)


def test_shipped_optimisation_config_is_valid():
    oc = load_optimisation("configs/optimise_oct10_2025.toml")
    assert oc.scenario.policy.breaker.kind == "halt" and oc.bound == 40e9


def test_insurance_fund_bound_resolves_to_the_scenarios_fund():
    data = small_problem(1e9).model_dump(mode="json", exclude_none=True)
    data["constraint"] = {"statistic": "es99_shortfall", "bound": "insurance_fund"}
    oc = OptimisationConfig.model_validate(data)
    assert oc.bound == oc.scenario.policy.insurance_fund_usd == 2e8
