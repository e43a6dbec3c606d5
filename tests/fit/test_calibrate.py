"""Calibration: relaxed kernel, gradients, recovery of known parameters, config errors."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import ConfigError, load_config
from engine.config import build
from engine.fit.calibrate import (
    NOT_CONVERGED_RATIO,
    CalibrationConfig,
    Fit,
    apply_values,
    assess,
    calibrate,
    fit,
    fitted_config,
    load_calibration,
    make_problem,
    objective,
    rounded,
)
from engine.fit.common import differentiable_outputs, to_unconstrained
from engine.report.fits import write_calibration
from engine.sim.rollout import rollout
from tests.conftest import small_dict
from tests.helpers import EXACT_RTOL, F32_RTOL, FD_RTOL, RELAXED_RTOL, assert_close

RUN = {"n_paths": 96, "steps": 24, "seed": 1, "cascade_rounds": 4, "max_window": 16, "fan_points": 4}


def calm_scenario(**run) -> dict:
    """The small scenario without volatility feedback (GARCH and depth withdrawal off), so
    that outcome statistics are smooth, well-identified functions of the parameters."""
    d = small_dict(run={**RUN, **run})
    d["market"] = {**d["market"], "garch_alpha": 0.0, "garch_beta": 0.0}
    for a in d["market"]["assets"].values():
        a["depth_kappa"] = 0.0
    return d


PARAMS = [
    {"path": "market.impact_y", "lower": 0.05, "upper": 2.0},
    {"path": "scenario.shock", "lower": -0.2, "upper": -0.01},
]
STATS = ["liquidated_total_usd", "max_drawdown.BTC", "open_interest_decline.BTC", "max_drawdown.SOL"]


def problem_config(scenario: dict, targets=None, **settings) -> CalibrationConfig:
    targets = targets or [{"statistic": s, "value": 1.0, "tolerance": 1.0} for s in STATS]
    cal = {
        "n_paths": scenario["run"]["n_paths"],
        "iterations": 80,
        "seeds": [0],
        "learning_rate": 0.1,
        "temperature": 0.05,
        **settings,
    }
    return CalibrationConfig.model_validate(
        {"scenario": scenario, "calibration": cal, "params": PARAMS, "targets": targets}
    )


def test_recovers_known_parameters_from_synthetic_targets():
    truth = np.array([0.4, -0.06])
    cc = problem_config(calm_scenario())
    prob = make_problem(cc)
    (_, stats), _ = objective(prob)(
        jnp.asarray(to_unconstrained(truth, prob.lower, prob.upper), jnp.float32), 0
    )
    targets = [
        {"statistic": s, "value": float(v), "tolerance": 0.02 * abs(float(v))} for s, v in zip(STATS, stats)
    ]
    result = fit(problem_config(calm_scenario(), targets, iterations=150), seed=0)
    # stated tolerances: impact coefficient within 15%, shock within 5% (relative)
    rel = np.abs(result.values - truth) / np.abs(truth)
    assert rel[0] < 0.15 and rel[1] < 0.05, (result.values, truth)
    assert result.losses[-1] < 0.05 * result.losses[0]


@pytest.fixture
def x64():
    """x64 for the test's own arrays and calls too: the library turns it on only within its
    calls for a float64 scenario."""
    with jax.enable_x64(True):
        yield


def test_gradient_matches_finite_differences(x64):
    cc = problem_config(calm_scenario(dtype="float64", n_paths=48), temperature=0.1)
    prob = make_problem(cc)
    grad_fn = objective(prob)
    u = jnp.asarray(to_unconstrained(np.array([0.5, -0.07]), prob.lower, prob.upper), jnp.float64)
    (_, _), g = grad_fn(u, 0)
    h = 1e-5
    for i in range(len(u)):
        (lp, _), _ = grad_fn(u.at[i].add(h), 0)
        (lm, _), _ = grad_fn(u.at[i].add(-h), 0)
        fd = (float(lp) - float(lm)) / (2 * h)
        assert_close(float(g[i]), fd, FD_RTOL, scale=1e-6)


def test_relaxed_kernel_converges_to_exact_as_temperature_falls(x64):
    d = calm_scenario(dtype="float64", n_paths=64)
    d["policy"] = {**d["policy"], "adl_rule": "off"}
    cc = problem_config(d)
    prob = make_problem(cc)
    params, static = build.build(prob.cfg)
    exact, _ = rollout(params, 1, 0, 64, static=static, n_paths=64)
    errors = []
    for tau in (0.1, 0.01, 1e-4, 1e-7):
        relaxed = differentiable_outputs(prob.base._replace(temperature=jnp.asarray(tau)), prob.static, 1, 64)
        errors.append(float(jnp.max(jnp.abs(relaxed["liquidated_total"] - exact["liquidated_total"]))))
    scale = float(jnp.max(exact["liquidated_total"]))
    assert scale > 0
    assert errors[-1] <= 1e-6 * scale
    assert errors[0] > errors[-1]


def write(tmp_path, text: str):
    p = tmp_path / "cal.toml"
    p.write_text(textwrap.dedent(text))
    return p


BAD_TARGETS = [
    ('statistic = "liquidations_per_minute"\nvalue = 1.0\ntolerance = 1.0', "targets.0.statistic"),
    ('statistic = "liquidated_total_usd"\nvalue = 1.0\ntolerance = -1.0', "targets.0.tolerance"),
    ('statistic = "max_drawdown.DOGE"\nvalue = 0.1\ntolerance = 0.1', "targets.0.statistic"),
]


@pytest.mark.parametrize("target, field", BAD_TARGETS)
def test_bad_target_is_a_config_error_naming_the_field(tmp_path, target, field):
    p = write(
        tmp_path,
        f"""
        scenario = "{(load_config.__globals__["default_config_path"]())}"
        [[params]]
        path = "scenario.shock"
        lower = -0.2
        upper = -0.01
        [[targets]]
        {target}
    """,
    )
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_calibration(p)


def test_shipped_calibration_config_is_valid():
    cc = load_calibration("configs/calibrate_oct10_2025.toml")
    assert len(cc.targets) >= 6 and cc.scenario.name == "oct10_2025"


def test_shipped_calibration_loads_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_calibration("calibrate_oct10_2025").scenario.name == "oct10_2025"


def test_shipped_calibration_does_not_depend_on_the_values_it_fits(tmp_path):
    """The shipped default comes from the shipped command: that command must then give the same
    fit whatever fitted values the default scenario holds (starting values and the untilted
    leverage mix are the calibration config's own)."""
    import tomli_w

    from engine.config.files import packaged_configs_dir

    shipped = load_config("oct10_2025")
    data = shipped.model_dump(mode="json", exclude_none=True)
    for a in data["market"]["assets"].values():
        a["impact_y"], a["depth_kappa"] = 1.7, 1.9
    data["book"]["leverage_weights"] = [1.0] * len(data["book"]["leverage_weights"])
    data["scenario"]["shock"] = -0.15
    (tmp_path / "oct10_2025.toml").write_text(tomli_w.dumps(data))
    (tmp_path / "cal.toml").write_text((packaged_configs_dir() / "calibrate_oct10_2025.toml").read_text())
    a, b = load_calibration("calibrate_oct10_2025"), load_calibration(tmp_path / "cal.toml")
    assert b.scenario.market.assets["BTC"].impact_y == 1.7  # the perturbed scenario was read
    values = np.array([0.3, 0.4, 0.5, 0.1, 0.6, -0.5, -0.07])
    fitted_a, fitted_b = fitted_config(a, values), fitted_config(b, values)
    for name in ("BTC", "ETH", "SOL", "XRP"):
        assert fitted_a.market.assets[name].impact_y == fitted_b.market.assets[name].impact_y
        assert fitted_a.market.assets[name].depth_kappa == fitted_b.market.assets[name].depth_kappa == 0.6
    assert fitted_a.book.leverage_weights == fitted_b.book.leverage_weights
    assert fitted_a.scenario.shock == fitted_b.scenario.shock == -0.07
    assert [p.init for p in a.params] == [p.init for p in b.params] and None not in [p.init for p in a.params]
    # the simulation's inputs are bit for bit the same (a fit is chaotic in float rounding)
    pa, pb = make_problem(a), make_problem(b)
    inputs_a, inputs_b = apply_values(pa, values), apply_values(pb, values)
    for x, y in zip(jax.tree_util.tree_leaves(inputs_a), jax.tree_util.tree_leaves(inputs_b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_shipped_default_scenario_is_an_output_of_the_shipped_calibration():
    """`fitted_config` of the shipped calibration, at the default scenario's own fitted values,
    gives the default scenario field for field, for a tilt (3 significant digits) near the one
    its leverage mix implies (the rounded small weights blur a direct read-back)."""
    shipped = load_config("oct10_2025")
    cc = load_calibration("calibrate_oct10_2025")
    assert [p.path for p in cc.params][-3:] == ["market.depth_kappa", "book.leverage_tilt", "scenario.shock"]
    lev = np.asarray(shipped.book.leverage, float)
    ratio = np.asarray(shipped.book.leverage_weights) / np.asarray(cc.scenario.book.leverage_weights)
    slope = np.polyfit(np.log(lev), np.log(ratio), 1)[0]
    assets = shipped.market.assets
    impact = [assets[a].impact_y for a in ("BTC", "ETH", "SOL", "XRP")]
    matches = [
        tilt
        for tilt in np.round(np.arange(slope - 0.01, slope + 0.01, 0.001), 3)
        if fitted_config(cc, impact + [assets["BTC"].depth_kappa, tilt, shipped.scenario.shock]).model_dump()
        == shipped.model_dump()
    ]
    assert matches, slope


def synthetic_fit(seed: int, loss: float, values, stats) -> Fit:
    return Fit(
        seed=seed,
        values=np.asarray(values, float),
        statistics=np.asarray(stats, float),
        losses=[2 * loss, loss],
        loss=loss,
    )


def test_assessment_leaves_out_seeds_far_above_the_median_loss():
    cc = problem_config(
        calm_scenario(),
        [
            {"statistic": "max_drawdown.BTC", "value": 0.10, "tolerance": 0.02},
            {"statistic": "liquidated_total_usd", "value": 5e9, "tolerance": 1e9},
        ],
    )
    fits = [
        synthetic_fit(0, 1.0, [0.4, -0.06], [0.11, 9e9]),
        synthetic_fit(1, 1.2, [0.6, -0.08], [0.13, 7e9]),
        synthetic_fit(2, NOT_CONVERGED_RATIO * 1.2 + 0.01, [1.9, -0.19], [0.5, 1e9]),
    ]
    a = assess(cc, fits)
    assert a.converged.tolist() == [True, True, False]
    assert_close(a.values, [0.5, -0.07], EXACT_RTOL)
    assert_close(a.spread, [np.std([0.4, 0.6], ddof=1), np.std([-0.06, -0.08], ddof=1)], EXACT_RTOL)
    assert_close(a.statistics, [0.12, 8e9], EXACT_RTOL)
    # |0.12 - 0.10| = 0.02 <= 0.02: within; |8e9 - 5e9| = 3e9 > 1e9: outside
    assert a.within.tolist() == [True, False]


def test_a_tiny_calibration_flags_an_unreachable_target_and_a_seed_stopped_after_one_step(tmp_path):
    targets = [
        {"statistic": "max_drawdown.BTC", "value": 0.16, "tolerance": 0.02},
        {"statistic": "long_share", "value": 0.0, "tolerance": 0.05, "weight": 0.01},
    ]  # a long-heavy book
    cc = problem_config(calm_scenario(n_paths=32), targets, seeds=[0, 1], iterations=40)
    prob = make_problem(cc)
    grad_fn = objective(prob)
    fits = calibrate(cc, prob=prob, grad_fn=grad_fn)
    stopped = problem_config(calm_scenario(n_paths=32), targets, iterations=1)
    fits.append(fit(stopped, 2, prob, grad_fn))
    assert len(fits[2].losses) == 1
    summary = write_calibration(cc, fits, tmp_path)
    losses = np.array(summary["best_loss"])
    assert summary["converged"] == [True, True, False], losses
    assert losses[2] > NOT_CONVERGED_RATIO * np.median(losses)
    ok = np.array([f.values for f in fits[:2]])
    assert_close([p["mean"] for p in summary["params"]], ok.mean(0), F32_RTOL)
    drawdown, share = summary["targets"]
    assert drawdown["within_tolerance"] and abs(drawdown["fitted_mean"] - 0.16) <= 0.02
    assert not share["within_tolerance"] and share["fitted_mean"] > 0.5
    assert share["fitted_mean"] == pytest.approx(np.mean(share["per_seed"][:2]))
    assert any(w.startswith("seed 2: not converged") for w in summary["warnings"])
    assert any(w.startswith("long_share: outside tolerance") for w in summary["warnings"])
    report = (tmp_path / "report.md").read_text()
    assert "| 2 |" in report and "**not converged**" in report and "**outside tolerance**" in report
    fitted = load_config(tmp_path / "fitted_scenario.toml")
    assert fitted.scenario.shock == rounded(summary["params"][1]["mean"])


def test_outputs_include_a_runnable_fitted_scenario(tmp_path):
    cc = problem_config(calm_scenario(n_paths=32), iterations=3, seeds=[0, 1])
    fits = [fit(cc, s) for s in (0, 1)]
    summary = write_calibration(cc, fits, tmp_path)
    for name in ("fitted.json", "loss_curve.png", "report.md", "fitted_scenario.toml"):
        assert (tmp_path / name).stat().st_size > 0
    fitted = load_config(tmp_path / "fitted_scenario.toml")
    shock = summary["params"][1]["mean"]
    assert fitted.scenario.shock == rounded(shock)
    assert fitted.market.assets["BTC"].impact_y == rounded(summary["params"][0]["mean"])
    assert len(summary["params"][0]["per_seed"]) == 2


def test_relaxed_halt_breaker_converges_to_exact(x64):
    d = calm_scenario(dtype="float64", n_paths=64)
    d["policy"] = {
        **d["policy"],
        "adl_rule": "off",
        "breaker": {"kind": "halt", "threshold": 0.03, "window": 4, "duration": 3},
    }
    prob = make_problem(problem_config(d))
    params, static = build.build(prob.cfg)
    exact, _ = rollout(params, 1, 0, 64, static=static, n_paths=64)
    assert float(jnp.sum(exact["halted_steps"])) > 0
    relaxed = differentiable_outputs(prob.base._replace(temperature=jnp.asarray(1e-9)), prob.static, 1, 64)
    for name in ("liquidated_total", "halted_steps", "max_drawdown"):
        assert_close(relaxed[name], exact[name], RELAXED_RTOL, what=name)


def test_seeds_beyond_31_bits_fit_on_their_own_paths():
    cc = problem_config(calm_scenario(), iterations=1)
    prob = make_problem(cc)
    grad_fn = objective(prob)
    big, small = fit(cc, 2**62 + 3, prob, grad_fn), fit(cc, 3, prob, grad_fn)
    # the seed's high word reaches the paths: the same low word gives other paths
    assert np.isfinite(big.loss) and big.loss != small.loss
