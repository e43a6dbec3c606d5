"""Joint calibration over events, the book map and the leave-one-event-out backtest
(`engine.fit.joint`, `engine.fit.book_map`, `engine.fit.backtest`, `liqstress backtest`)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from engine.cli import app
from engine.config import build
from engine.config.events import Event
from engine.config.observables import Observables, observables
from engine.fit import backtest as bt
from engine.fit import book_map, joint
from engine.fit import event_problem as ep
from engine.fit import event_setup as es
from engine.fit.common import to_unconstrained
from engine.model.kernel import word64
from engine.model.sides import by_side, side_matrix

TEMPLATE = {
    "base": "quick.toml",
    "run": {"steps": 16, "cascade_rounds": 4},
    "book": {
        "leverage": [3, 10, 25, 50, 100],
        "leverage_weights": [30, 30, 20, 12, 8],
        "entry_log_mean": 0.0,
        "entry_log_std": 0.1,
        "entry_points": 5,
        "position_sizes_usd": [100e3],
        "size_weights": [1],
    },
    "scenario": {"shock": -0.05, "shock_start": 2, "shock_steps": 1},
}
PARAMS = [
    {"path": "market.impact_y", "lower": 0.05, "upper": 3.0, "init": 0.5},
    {"path": "book_map.tilt", "lower": -2.0, "upper": 1.0, "init": -0.9},
]


def fig(value, units="1"):
    return {"value": value, "units": units, "source": "synthetic (tests)", "source_date": "2026-01-01"}


def event_dict(oi_btc, oi_sol, funding, ret, liq, long_share, fall_btc, fall_sol, ratio=1.5):
    pre = {
        a: {
            "price": fig(p, "USD"),
            "open_interest_usd": fig(oi, "USD"),
            "funding_8h": fig(funding),
            "price_return": fig(ret),
            "long_short_ratio": fig(ratio),
        }
        for a, p, oi in (("BTC", 100000.0, oi_btc), ("SOL", 200.0, oi_sol))
    }
    return {
        "date": "2026-01-01",
        "description": "synthetic",
        "pre_event": {"assets": pre},
        "price_path": {"BTC": {"fall": fig(fall_btc)}, "SOL": {"fall": fig(fall_sol)}},
        "outcomes": {"liquidations_usd": fig(liq, "USD"), "long_share": fig(long_share)},
    }


def config(**calibration) -> es.JointConfig:
    cal = {
        "n_paths": 16,
        "seeds": [0],
        "iterations": 60,
        "learning_rate": 0.1,
        "temperature": 0.05,
        **calibration,
    }
    data = {
        "kind": "joint_calibration",
        "events": ["a", "b"],
        "scenario": TEMPLATE,
        "calibration": cal,
        "params": PARAMS,
        "shock": {"lower": -0.3, "upper": -0.005, "init": -0.04},
        "backtest": {"n_paths": 32},
    }
    from engine.config.files import packaged_configs_dir
    from engine.fit.common import resolve_scenario

    return es.JointConfig.model_validate(resolve_scenario(data, packaged_configs_dir() / "x.toml"))


# ----------------------------------------------------------------------------------------
# The book map
# ----------------------------------------------------------------------------------------


def base_book(jc):
    cfg = es.event_config(
        jc.scenario, Event.model_validate(event_dict(40e9, 8e9, 1e-4, 0, 1e9, 0.9, 0.1, 0.2)), "a"
    )
    params, _ = build.build(cfg)
    return cfg, params


def test_map_keeps_each_sides_open_interest_at_the_mapped_long_share():
    jc = config()
    cfg, params = base_book(jc)
    obs = Observables(*(jnp.asarray(x) for x in ([2.0, -1.0], [0.3, 0.0], [0.2, -0.1], [0.4, -0.2])))
    values = {**jc.book_map.model_dump(), "tilt_funding": 0.3, "entry_lag": 0.5}
    oi = jnp.asarray([40e9, 8e9])
    book = book_map.apply(params.book, params.market.price0, oi, obs, values, cfg.book.entry_log_std)
    sides = by_side(book.quantity * book.entry, side_matrix(book.side))
    share = 1 / (1 + np.exp(-(values["long_bias"] + values["long_ratio"] * np.array([0.4, -0.2]))))
    np.testing.assert_allclose(sides[:, 0], oi * share, rtol=1e-5)
    np.testing.assert_allclose(sides[:, 1], oi * (1 - share), rtol=1e-5)


def test_map_leverage_and_entries_move_with_the_observables():
    jc = config()
    cfg, params = base_book(jc)
    values = {**jc.book_map.model_dump(), "tilt_funding": 0.5, "entry_lag": 0.5}
    oi = jnp.asarray([40e9, 8e9])

    def book_for(funding, ret):
        obs = Observables(*(jnp.asarray(x) for x in ([funding] * 2, [0.0] * 2, [ret] * 2, [0.0] * 2)))
        return book_map.apply(params.book, params.market.price0, oi, obs, values, cfg.book.entry_log_std)

    def mean(book, x):
        n = book.quantity * book.entry
        return float(jnp.sum(n[0] * x[0]) / jnp.sum(n[0]))

    # dearer funding (tilt_funding > 0): more notional at high leverage
    assert (
        mean(book_for(3.0, 0.0), book_for(3.0, 0.0).leverage)
        > mean(book_for(0.0, 0.0), params.book.leverage) + 1
    )
    # after a rally positions entered below today's price (lag 0.5), after a fall above it
    up, down = book_for(0.0, 0.2), book_for(0.0, -0.2)
    offset = jnp.log(params.book.entry / params.market.price0[:, None])
    assert mean(up, offset) < -0.05 < 0.05 < mean(down, offset)


def test_observables_take_neutral_values_and_name_what_is_missing():
    ev = event_dict(40e9, 8e9, 3e-4, 0.1, 1e9, 0.9, 0.1, 0.2)
    del ev["pre_event"]["assets"]["SOL"]["funding_8h"]
    obs, missing = observables(Event.model_validate(ev), ["BTC", "SOL"])
    np.testing.assert_allclose(obs.funding, [2.0, 0.0])
    np.testing.assert_allclose(obs.log_return, [np.log(1.1)] * 2)
    assert missing == ("SOL.funding_8h", "BTC.open_interest_growth", "SOL.open_interest_growth")


# ----------------------------------------------------------------------------------------
# Synthetic recovery
# ----------------------------------------------------------------------------------------


def synthetic_events(jc, truth, shocks):
    """Events whose reported outcomes are the relaxed model's statistics at `truth`."""
    draft = {
        "a": event_dict(40e9, 8e9, 3e-4, 0.2, 1e9, 0.9, 0.1, 0.2, ratio=2.0),
        "b": event_dict(20e9, 6e9, 1e-4, -0.1, 1e9, 0.9, 0.1, 0.2, ratio=1.0),
    }
    lay = ep.layout(jc)
    probs = ep.problems(jc, {k: Event.model_validate(v) for k, v in draft.items()})
    events = {}
    for name, pr in probs.items():
        objective = pr.objective(lay, jc.calibration.n_paths, ep.bounds_of(jc))
        u = jnp.asarray(to_unconstrained(np.array(truth), lay.lower, lay.upper), jnp.float32)
        us = jnp.asarray(to_unconstrained(shocks[name], jc.shock.lower, jc.shock.upper), jnp.float32)
        (_, st), _ = objective(u, us, word64(0), pr.weight)
        st = np.asarray(st, float)
        ev = draft[name]
        # medians of parts can add up to more than the median of the total: a range reaching
        # their sum keeps the event plausible (parts not above the total) and the fit's error 0
        total = float(st[0])
        high = max(total, float(st[2]) + float(st[3]))
        ev["outcomes"]["liquidations_usd"] = {**fig(total, "USD"), "low": total, "high": high}
        ev["outcomes"]["long_share"]["value"] = float(st[1])
        ev["outcomes"]["by_asset_usd"] = {"BTC": fig(float(st[2]), "USD"), "SOL": fig(float(st[3]), "USD")}
        ev["price_path"]["BTC"]["fall"]["value"] = float(st[4])
        ev["price_path"]["SOL"]["fall"]["value"] = float(st[5])
        events[name] = Event.model_validate(ev)
    return events


def test_joint_calibration_recovers_known_parameters():
    jc = config(iterations=150)
    truth, shocks = [0.4, -0.3], {"a": -0.04, "b": -0.07}
    events = synthetic_events(jc, truth, shocks)
    probs = ep.problems(jc, events)
    fit = joint.calibrate_joint(jc, events, probs)[0]
    # stated tolerances: impact within 10%, tilt within 0.05, shocks within 0.005 (log return)
    assert fit.loss < 1e-3 * fit.losses[0]
    assert abs(fit.values[0] - truth[0]) < 0.1 * truth[0]
    assert abs(fit.values[1] - truth[1]) < 0.05
    for name in events:
        assert abs(fit.shocks[name] - shocks[name]) < 0.005
    # the curvature covariance: finite errors and a symmetric correlation matrix with unit diagonal
    se, corr = joint.curvature(jc, probs, fit.values, fit.shocks, 0)
    assert np.all(np.isfinite(se)) and np.all(se > 0)
    np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-6)
    np.testing.assert_allclose(corr, corr.T, atol=1e-9)


# ----------------------------------------------------------------------------------------
# The backtest
# ----------------------------------------------------------------------------------------


def test_miss_is_one_inside_the_range_and_the_factor_to_the_nearer_end():
    t = es.Target("liquidations", None, "x", 2e9, 1.5e9, 3e9)
    assert bt.miss_of(t, 2.5e9, True) == 1.0
    assert bt.miss_of(t, 6e9, True) == pytest.approx(2.0)
    assert bt.miss_of(t, 0.5e9, True) == pytest.approx(3.0)
    s = es.Target("long_share", None, "x", 0.875, 0.85, 0.9)
    assert bt.miss_of(s, 0.97, False) == pytest.approx(0.07)


def write_files(tmp_path, jc_dict=None):
    for name, ev in (
        ("a", event_dict(40e9, 8e9, 3e-4, 0.2, 3e9, 0.88, 0.08, 0.15)),
        ("b", event_dict(20e9, 6e9, 1e-4, -0.1, 1e9, 0.8, 0.06, 0.12, ratio=1.0)),
    ):
        (tmp_path / f"{name}.toml").write_text(tomli_w.dumps(ev))
    data = {
        "kind": "joint_calibration",
        "events": ["a.toml", "b.toml"],
        "scenario": TEMPLATE,
        "calibration": {"n_paths": 8, "seeds": [0], "iterations": 4, "temperature": 0.05},
        "params": PARAMS,
        "backtest": {"n_paths": 16},
        **(jc_dict or {}),
    }
    (tmp_path / "joint.toml").write_text(tomli_w.dumps(data))
    return tmp_path / "joint.toml"


def test_backtest_command_on_two_tiny_events(tmp_path):
    cfg = write_files(tmp_path)
    out = tmp_path / "val"
    res = CliRunner().invoke(app, ["backtest", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "validation.json").read_text())
    assert [f["held_out"] for f in summary["folds"]] == ["a", "b"]
    for f in summary["folds"]:
        rows = {t["target"]: t for t in f["targets"]}
        assert set(rows) == {"liquidations_usd", "long_share", "fall.BTC", "fall.SOL"}
        liq = rows["liquidations_usd"]
        assert liq["band_low"] <= liq["median"] <= liq["band_high"]
        factor = max(liq["median"] / liq["reported"], liq["reported"] / liq["median"])
        assert liq["miss"] == pytest.approx(factor)
        assert liq["met"] == (factor <= 1.5)
        assert rows["fall.BTC"]["met"] is None  # an input, no goal
    md = (out / "validation.md").read_text()
    assert f"liqstress backtest {cfg} --out {out}" in md and "| a | total liquidations |" in md
    assert (out / "validation.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "change, args, field",
    [
        ({"events": ["a.toml", "nope"]}, [], "unknown event 'nope'"),
        ({"params": [{"path": "book_map.tilted", "lower": 0, "upper": 1}]}, [], "params.0.path"),
        (
            {"scenario": {**TEMPLATE, "book": {**TEMPLATE["book"], "entry_log_mean": 0.1}}},
            [],
            "entry_log_mean",
        ),
        ({}, ["--event", "c"], "--event c"),
    ],
)
def test_backtest_refuses_bad_input_with_exit_2_and_writes_nothing(tmp_path, change, args, field):
    cfg = write_files(tmp_path, change)
    out = tmp_path / "val"
    res = CliRunner().invoke(app, ["backtest", str(cfg), "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert field in res.output
    assert not out.exists()


def test_a_bad_event_file_names_the_file_and_the_field(tmp_path):
    cfg = write_files(tmp_path)
    ev = event_dict(40e9, 8e9, 3e-4, 0.2, 3e9, 0.88, 0.08, 0.15)
    del ev["outcomes"]["liquidations_usd"]["source"]
    (tmp_path / "a.toml").write_text(tomli_w.dumps(ev))
    out = tmp_path / "val"
    res = CliRunner().invoke(app, ["backtest", str(cfg), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "a.toml" in res.output and "outcomes.liquidations_usd.source" in res.output
    assert not out.exists()


def test_event_asset_outside_the_template_is_refused(tmp_path):
    cfg = write_files(tmp_path)
    ev = event_dict(40e9, 8e9, 3e-4, 0.2, 3e9, 0.88, 0.08, 0.15)
    ev["pre_event"]["assets"]["DOGE"] = {"price": fig(0.2, "USD"), "open_interest_usd": fig(1e9, "USD")}
    (tmp_path / "a.toml").write_text(tomli_w.dumps(ev))
    res = CliRunner().invoke(app, ["calibrate", str(cfg), "--dry-run"])
    assert res.exit_code == 2 and "pre_event.assets.DOGE" in res.output


def test_calibrate_command_on_a_joint_config_reports_spread_and_correlations(tmp_path):
    cfg = write_files(tmp_path, {"calibration": {"n_paths": 8, "seeds": [0, 1], "iterations": 3}})
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["calibrate", str(cfg), "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    fitted = json.loads((run / "fitted.json").read_text())
    assert [p["path"] for p in fitted["params"]] == ["market.impact_y", "book_map.tilt"]
    for p in fitted["params"]:
        assert p["mean"] == pytest.approx(np.mean(p["per_seed"]))
        assert p["std_over_seeds"] == pytest.approx(np.std(p["per_seed"], ddof=1), rel=1e-5)
        assert p["curvature_se"] > 0
    corr = np.array(fitted["correlations"]["matrix"])
    assert fitted["correlations"]["order"] == ["market.impact_y", "book_map.tilt", "shock.a", "shock.b"]
    np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-3)
    assert set(fitted["events"]) == {"a", "b"}
    report = (run / "report.md").read_text()
    assert "## Correlations of the fitted values" in report and "| b | `long_share` |" in report


def test_closing_rates_are_free_parameters_of_the_joint_fit():
    """A fit of `market.derisk` rates from 0 turns the step's closing on, and the rates reach
    the kernel: the open-interest decline rises with the loss rate."""
    params = [*PARAMS, {"path": "market.derisk.loss_rate_per_day", "lower": 0.0, "upper": 50.0, "init": 1.0}]
    jc = config()
    jc = es.JointConfig.model_validate({**jc.model_dump(), "params": params})
    ev = Event.model_validate(event_dict(40e9, 8e9, 3e-4, 0.2, 3e9, 0.9, 0.08, 0.15))
    lay = ep.layout(jc)
    pr = ep.make_problem(jc, "a", ev, lay)
    assert pr.static.derisk and not jc.scenario.market.derisk.on
    objective = pr.objective(lay, jc.calibration.n_paths, ep.bounds_of(jc))

    def decline(rate):
        u = to_unconstrained(np.array([0.5, -0.5, rate]), lay.lower, lay.upper)
        us = to_unconstrained(-0.06, jc.shock.lower, jc.shock.upper)
        (_, st), _ = objective(
            jnp.asarray(u, jnp.float32), jnp.asarray(us, jnp.float32), word64(0), pr.weight
        )
        return float(st[-1])

    assert decline(0.001) < decline(20.0) - 0.05


def test_covariance_flags_what_the_targets_do_not_identify():
    """Two values the residuals see only through their sum: neither is identified; a third,
    seen alone with unit scale, has standard error 1 and no correlation."""
    j = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    se, corr = joint.covariance(j)
    assert np.isinf(se[:2]).all() and se[2] == pytest.approx(1.0)
    assert np.isnan(corr[0]).all() and corr[2, 2] == pytest.approx(1.0)
    # identified: J = diag(2, 4) gives errors 1/2 and 1/4
    se, corr = joint.covariance(np.diag([2.0, 4.0]))
    np.testing.assert_allclose(se, [0.5, 0.25])
    np.testing.assert_allclose(corr, np.eye(2), atol=1e-12)


def test_event_targets_take_signs_ranges_and_coverage_from_the_file():
    ev = event_dict(40e9, 8e9, 3e-4, 0.2, 3e9, 0.88, 0.08, 0.15)
    ev["outcomes"]["open_interest_change"] = {**fig(-0.3), "low": -0.4, "high": -0.3}
    ev["pre_event"]["aggregate_open_interest_usd"] = fig(96e9, "USD")
    event = Event.model_validate(ev)
    targets = {t.label: t for t in es.event_targets(event, ["BTC", "SOL"])}
    oi = targets["open_interest_decline"]
    assert (oi.value, oi.low, oi.high) == (0.3, 0.3, 0.4)
    assert targets["fall.SOL"].asset == 1 and targets["fall.SOL"].value == 0.15
    assert es.coverage(event) == pytest.approx(96 / 48)


def test_held_out_shock_matches_the_observed_fall_in_the_median():
    """The held-out shock brings the exact kernel's median fall to the observed one; without
    an observed fall the shock stays at its starting value."""
    jc = config()
    jc = es.JointConfig.model_validate({**jc.model_dump(), "backtest": {"n_paths": 64}})
    ev = event_dict(40e9, 8e9, 3e-4, 0.2, 3e9, 0.88, 0.07, 0.12)
    del ev["price_path"]["SOL"]
    pr = ep.make_problem(jc, "a", Event.model_validate(ev), ep.layout(jc))
    values = np.array([0.5, -0.5])
    shock = bt.held_out_shock(jc, pr, values)
    fall = [i for i, t in enumerate(pr.targets) if t.kind == "fall"]
    assert len(fall) == 1
    median = np.median(bt.simulate_exact(jc, pr, values, shock)[:, fall[0]])
    assert abs(median - 0.07) < 0.003
    assert jc.shock.lower < shock < jc.shock.upper
    del ev["price_path"]["BTC"]
    none = ep.make_problem(jc, "a", Event.model_validate(ev), ep.layout(jc))
    assert bt.held_out_shock(jc, none, values) == jc.shock.init
