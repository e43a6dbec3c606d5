"""Sweep grids: expansion, dotted paths, overrides, baseline and the resolved config."""

import tomllib

import pytest

from engine.config.errors import ConfigError
from engine.config.files import load_study, read_config_dict
from engine.config.sweep import _dim_names, apply_overrides, build_study, parse_value
from tests.conftest import small_dict


def study(sweep: dict, **sections):
    return build_study({**small_dict(**sections), "sweep": sweep})


def test_grid_is_cartesian_product_last_axis_fastest():
    s = study({"policy": {"leverage_cap": [5, 20, 125]}, "policy.breaker.kind": ["none", "halt"]})
    assert s.shape == (3, 2)
    assert [a.name for a in s.axes] == ["leverage_cap", "breaker_kind"]
    assert s.coords[:3] == ((5.0, "none"), (5.0, "halt"), (20.0, "none"))
    assert [p.policy.leverage_cap for p in s.points] == [5, 5, 20, 20, 125, 125]
    assert [p.policy.breaker.kind for p in s.points[:2]] == ["none", "halt"]
    assert s.baseline == 0


def test_baseline_names_a_grid_point_and_defaults_other_axes_to_their_first_value():
    s = study(
        {
            "policy.leverage_cap": [5, 125],
            "scenario.shock": [-0.05, -0.1],
            "baseline": {"policy": {"leverage_cap": 125}},
        }
    )
    assert s.coords[s.baseline] == (125.0, -0.05)
    assert s.label(s.baseline) == "leverage_cap=125, shock=-0.05"


def test_dimension_names_are_the_field_with_its_parent_below_a_section():
    shocks = [{"size": -0.02, "start_step": 10}]
    s = study(
        {
            "market.assets.BTC.vol_annual": [0.4, 0.5],
            "market.assets.SOL.vol_annual": [0.8, 0.9],
            "policy.breaker.threshold": [0.03, 0.05],
            "policy.leverage_cap": [20, 125],
            "scenario.shock": [-0.05, -0.1],
            "scenario.shocks.0.size": [-0.02, -0.04],  # "0_size" would not start with a letter
        },
        scenario={"shocks": shocks},
    )
    assert [a.name for a in s.axes] == [
        "BTC_vol_annual", "SOL_vol_annual", "breaker_threshold", "leverage_cap", "shock", "shocks_0_size",
    ]  # fmt: skip
    assert s.points[-1].market.assets["SOL"].vol_annual == 0.9


def _assets(*names: str) -> dict:
    """SMALL's market with its two assets renamed."""
    market = small_dict()["market"]
    return {**market, "assets": dict(zip(names, market["assets"].values()))}


def test_dimension_names_are_valid_netcdf_names_and_grow_until_distinct():
    s = study({"market.assets.1INCH.vol_annual": [0.4, 0.5]}, market=_assets("1INCH", "SOL"))
    assert s.axes[0].name == "assets_1INCH_vol_annual"
    s = study(
        {"market.assets.BTC-PERP.vol_annual": [0.4, 0.5], "market.assets.SOL.vol_annual": [0.8, 0.9]},
        market=_assets("BTC-PERP", "SOL"),
    )
    assert [a.name for a in s.axes] == ["BTC_PERP_vol_annual", "SOL_vol_annual"]
    clash = r"BTC-PERP\.vol_annual -> market_assets_BTC_PERP_vol_annual, market\.assets\.BTC_PERP"
    with pytest.raises(ConfigError, match=clash):
        study(
            {"market.assets.BTC-PERP.vol_annual": [0.4], "market.assets.BTC_PERP.vol_annual": [0.8]},
            market=_assets("BTC-PERP", "BTC_PERP"),
        )
    assert _dim_names(["a.x.b.c", "d.y.b.c", "e.time", "f.g.h"]) == ["x_b_c", "y_b_c", "e_time", "g_h"]


def test_numeric_axes_are_monotonic_in_config_order():
    assert study({"policy.leverage_cap": [125, 50, 20]}).axes[0].values == (125.0, 50.0, 20.0)
    with pytest.raises(ConfigError, match=r"sweep\.policy\.leverage_cap: numbers must be in increasing"):
        study({"policy.leverage_cap": [20, 125, 50]})
    assert study({"policy.adl_rule": ["queue", "off", "pro_rata"]}).axes[0].values[1] == "off"


def test_list_index_paths_reach_extra_shocks():
    shocks = [{"size": -0.02, "start_step": 10}]
    s = study({"scenario.shocks.0.size": [-0.02, -0.04]}, scenario={"shocks": shocks})
    assert [p.scenario.shocks[0].size for p in s.points] == [-0.02, -0.04]


def test_resolved_toml_round_trips_to_the_same_study():
    s = load_study("configs/quick.toml")
    again = build_study(tomllib.loads(s.resolved_toml()))
    assert again.points == s.points and again.axes == s.axes and again.baseline == s.baseline


def test_overrides_set_fields_and_sweep_axes():
    raw = read_config_dict("configs/quick.toml")
    data = apply_overrides(
        raw,
        [
            "policy.insurance_fund_usd=5e8",
            "sweep.policy.leverage_cap=[10, 50]",
            "sweep.baseline.policy.leverage_cap=50",
            "policy.adl_rule=pro_rata",
        ],
    )
    s = build_study(data)
    assert s.config.policy.insurance_fund_usd == 5e8 and s.config.policy.adl_rule == "pro_rata"
    assert s.axes[0].values == (10.0, 50.0)
    assert s.coords[s.baseline][0] == 50.0
    assert raw["policy"]["insurance_fund_usd"] == 2e8  # the input is not modified


def test_parse_value_reads_toml_or_falls_back_to_a_string():
    assert parse_value("20") == 20 and parse_value("1e9") == 1e9 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("pro_rata") == "pro_rata" and parse_value('"x y"') == "x y"
    assert parse_value("books/desk.csv") == "books/desk.csv"  # a relative path, e.g. book.positions


@pytest.mark.parametrize("text", ["1.2.3", "[20,", "two words", "../1/2"])
def test_a_value_that_is_neither_toml_nor_one_bare_word_is_an_error(text):
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, [f"name={text}"])


def test_shipped_sweeps_validate():
    for name in ("leverage_cap_sweep", "circuit_breaker_sweep", "adl_rules", "quick", "oct10_2025"):
        s = load_study(f"configs/{name}.toml")
        assert s.points[s.baseline] in s.points
    s = load_study("leverage_cap_sweep")  # a shipped name works from any directory
    assert s.shape == (5, 3) and s.coords[s.baseline] == (125.0, -0.07)
    assert s.config.market.assets["BTC"].price == 122574.0  # from its base scenario


def test_shape_changing_axis_is_rejected_with_its_path():
    with pytest.raises(ConfigError, match=r"sweep\.book\.entry_points.*compiled shape"):
        study({"book.entry_points": [2, 3]})
