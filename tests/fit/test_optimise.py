"""Policy optimisation: gradient search on the relaxed kernel, exact check against a grid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine import ConfigError
from engine.fit.optimise import (
    OptimisationConfig,
    Result,
    _setup,
    cheapest_feasible,
    exact_evaluator,
    feasibility,
    load_optimisation,
    optimise,
    restrictiveness,
    tail_warnings,
)
from engine.report.fits import write_optimisation
from tests.conftest import small_dict


def small_problem(bound: float, **settings) -> OptimisationConfig:
    d = small_dict(
        run={"n_paths": 64, "steps": 24, "seed": 1, "cascade_rounds": 4, "max_window": 16, "fan_points": 4}
    )
    return OptimisationConfig.model_validate(
        {
            "scenario": d,
            "optimise": {
                "n_paths": 64,
                "iterations": 80,
                "learning_rate": 0.2,
                "check_paths": 512,
                "grid_points": 6,
                **settings,
            },
            "levers": [{"path": "policy.leverage_cap", "lower": 2.0, "upper": 100.0}],
            "constraint": {"statistic": "mean_liquidated_total", "bound": bound},
        }
    )


def test_optimum_is_feasible_and_no_costlier_than_the_best_grid_point(tmp_path):
    oc = small_problem(5e9)
    res = optimise(oc, log=lambda _: None)
    summary = write_optimisation(oc, res, tmp_path)
    check, best = res.check, res.best_grid
    assert best is not None
    # feasible at the required confidence on fresh paths, exact kernel
    assert check["p_feasible"] >= oc.optimise.confidence
    assert check["statistic"] + 1.6 * check["mc_se"] <= 5e9
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


@pytest.mark.parametrize(
    "change, field",
    [
        ({"levers": [{"path": "policy.leverage_kap", "lower": 2, "upper": 100}]}, "levers.0"),
        ({"levers": [{"path": "policy.breaker.threshold", "lower": 0.02, "upper": 0.2}]}, "levers.0.path"),
        ({"constraint": {"statistic": "es95_bad_debt"}}, "constraint"),
        ({"levers": [{"path": "policy.leverage_cap", "lower": 100, "upper": 2}]}, "levers.0"),
        ({"optimise": {"confidence": 0.5}}, "optimise.confidence"),
        ({"optimise": {"confidence": 1.0}}, "optimise.confidence"),
    ],
)
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
    assert oc.optimise.confidence == 0.95


def test_shipped_optimisation_config_loads_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    oc = load_optimisation("optimise_oct10_2025")
    assert oc.bound == 40e9 and oc.scenario.name == "oct10_2025"


def test_feasibility_is_the_normal_probability_of_staying_under_the_bound():
    # the case: 3.908e10 ± 7.84e8 against 4e10 is 1.17 standard errors of margin
    z = (4e10 - 3.908e10) / 7.84e8
    p = feasibility(3.908e10, 7.84e8, 4e10)
    assert p == pytest.approx(0.5 * math.erfc(-z / math.sqrt(2)), rel=1e-12)
    assert p == pytest.approx(0.8796, abs=1e-3)
    assert feasibility(4e10, 1e9, 4e10) == pytest.approx(0.5)
    assert feasibility(4e10 - 1.6448536 * 1e9, 1e9, 4e10) == pytest.approx(0.95, abs=1e-6)
    assert feasibility(1.0, 0.0, 2.0) == 1.0 and feasibility(3.0, 0.0, 2.0) == 0.0


def point(cap: float, statistic: float, se: float, oc: OptimisationConfig) -> dict:
    return {
        "values": [cap],
        "statistic": statistic,
        "mc_se": se,
        "p_feasible": feasibility(statistic, se, oc.bound),
        "cost": float(restrictiveness(oc.levers[0], cap)),
    }


@pytest.mark.parametrize("confidence, accepted", [(0.95, False), (0.85, True)])
def test_optimum_is_accepted_only_at_the_required_confidence(tmp_path, confidence, accepted):
    oc = small_problem(4e10, confidence=confidence)
    check = point(60.0, 3.908e10, 7.84e8, oc)  # P(feasible) = 0.880
    grid = [
        point(100.0, 3.99e10, 1e9, oc),  # P = 0.54: feasible on average only
        point(40.0, 3.80e10, 1e9, oc),  # P = 0.977: the cheapest confident point
        point(10.0, 3.0e10, 1e9, oc),
    ]  # P = 1, costlier
    traj = [
        {
            "iteration": i,
            "values": [60.0],
            "objective": 0.1,
            "cost": check["cost"],
            "statistic": 3.9e10,
            "temperature": 0.05,
        }
        for i in range(2)
    ]
    best = cheapest_feasible(grid, confidence)
    assert best is grid[1]
    res = Result(
        values=np.array([60.0]),
        trajectory=traj,
        check=check,
        grid=grid,
        best_grid=best,
        start=grid[1],
        searched=check,
    )
    summary = write_optimisation(oc, res, tmp_path)
    assert summary["check"]["p_feasible"] == pytest.approx(0.8796, abs=1e-3)
    assert summary["optimum_accepted"] is accepted
    assert summary["confidence"] == confidence
    report = (tmp_path / "report.md").read_text()
    if accepted:
        assert summary["recommended"]["values"] == [60.0] and "**Accepted**" in report
    else:
        assert summary["recommended"]["values"] == [40.0]
        assert not summary["optimum_at_least_as_good_as_grid"]
        assert "**Not accepted**" in report and "P = 0.880" in report and "P = 0.977" in report


def test_insurance_fund_bound_resolves_to_the_scenarios_fund():
    data = small_problem(1e9).model_dump(mode="json", exclude_none=True)
    data["constraint"] = {"statistic": "es99_shortfall", "bound": "insurance_fund"}
    oc = OptimisationConfig.model_validate(data)
    assert oc.bound == oc.scenario.policy.insurance_fund_usd == 2e8


def test_exact_check_takes_seeds_beyond_31_bits():
    oc = small_problem(1e12)
    cfg, _, _ = _setup(oc)
    big, small = exact_evaluator(oc, cfg, 2**62 + 5), exact_evaluator(oc, cfg, 5)
    a, b = big(np.array([20.0])), small(np.array([20.0]))
    assert np.isfinite(a["statistic"]) and a["statistic"] != b["statistic"]


def test_an_es99_check_on_too_few_tail_paths_is_warned():
    base = small_problem(4e10)

    def es99(check_paths: int) -> OptimisationConfig:
        constraint = base.constraint.model_copy(update={"statistic": "es99_liquidated_total"})
        settings = base.optimise.model_copy(update={"check_paths": check_paths})
        return base.model_copy(update={"constraint": constraint, "optimise": settings})

    assert "optimise.check_paths to 10,000" in tail_warnings(es99(512))[0]
    assert tail_warnings(es99(10_000)) == []
    assert tail_warnings(base) == []  # a mean needs no tail
