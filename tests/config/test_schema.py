"""Bad input is a `ConfigError` that names the field, raised before anything is traced."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from engine import ConfigError, simulate
from engine.config.errors import validated
from engine.config.schema import Config
from tests.conftest import small_dict


def with_asset(**fields) -> dict:
    d = small_dict()
    d["market"]["assets"]["BTC"].update(fields)
    return d


BAD = {
    "negative open interest": (with_asset(open_interest_usd=-1e9), "market.assets.BTC.open_interest_usd"),
    "leverage below 1": (small_dict(book={"leverage": [0.5, 20, 50, 100]}), "book.leverage.0"),
    "leverage cap below 1": (small_dict(policy={"leverage_cap": 0.9}), "policy.leverage_cap"),
    "non-PSD correlation": (
        small_dict(market={**small_dict()["market"], "correlation": [[1.0, 1.0 + 1e-3], [1.0 + 1e-3, 1.0]]}),
        "correlation",
    ),
    "non-increasing tiers": (
        small_dict(
            exchange={
                "tiers": [
                    {"max_notional_usd": 1e6, "max_leverage": 50, "mmr": 0.01},
                    {"max_notional_usd": 5e5, "max_leverage": 20, "mmr": 0.02},
                ]
            }
        ),
        "exchange.tiers",
    ),
    "NaN price": (with_asset(price=float("nan")), "market.assets.BTC.price"),
    "infinite volume": (with_asset(daily_volume_usd=float("inf")), "market.assets.BTC.daily_volume_usd"),
    "NaN policy value": (
        small_dict(policy={"insurance_fund_usd": float("nan")}),
        "policy.insurance_fund_usd",
    ),
    "boolean leverage cap": (small_dict(policy={"leverage_cap": True}), "policy.leverage_cap"),
    "boolean step count": (small_dict(run={**small_dict()["run"], "steps": True}), "run.steps"),
    "headline shock after the last step": (
        small_dict(scenario={"shock": -0.1, "shock_start": 48}),
        "scenario.shock_start",
    ),
    "flow past the last step": (
        small_dict(scenario={"flows": [{"usd": 1e9, "asset": "BTC", "start_step": 40, "steps": 10}]}),
        "scenario.flows.0.start_step",
    ),
    "ragged correlation": (
        small_dict(market={**small_dict()["market"], "correlation": [[1.0, 0.8], [0.8]]}),
        "market.correlation: must be 2x2",
    ),
    "name longer than a file name allows": (small_dict(name="n" * 300), "name: at most 180 bytes"),
    "GARCH not stationary": (
        small_dict(market={**small_dict()["market"], "garch_alpha": 0.1, "garch_beta": 0.9}),
        "garch_alpha + garch_beta",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_config_error_naming_the_field(case):
    data, field = BAD[case]
    with pytest.raises(ConfigError) as err:
        validated(data)
    assert field in str(err.value)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("+", r"\+")):
        simulate(data)


def test_non_psd_correlation_with_valid_entries():
    """Symmetric, unit diagonal, entries in [-1, 1], yet not a correlation matrix."""
    d = small_dict()
    d["market"]["assets"]["ETH"] = dict(d["market"]["assets"]["BTC"], price=4000.0)
    d["market"]["correlation"] = [[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]
    with pytest.raises(ConfigError, match="market.correlation: is not positive semi-definite"):
        validated(d)


def _numeric_leaves(data, path=()):
    """(path, value) of every number in a config dict, a list's first element standing for it."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _numeric_leaves(value, path + (key,))
    elif isinstance(data, (list, tuple)) and data:
        yield from _numeric_leaves(data[0], path + (0,))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield path, data


def _with(data: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_every_number_refuses_a_boolean():
    """`true` is not 1 anywhere: each numeric field of a full config (every default filled in),
    given a boolean, is an error naming it."""
    full = validated(
        small_dict(
            scenario={**small_dict()["scenario"], "flows": [{"usd": 1e9, "asset": "BTC", "start_step": 1}]}
        )
    ).model_dump(mode="json")
    leaves = list(_numeric_leaves(full))
    assert len(leaves) > 50
    for path, _ in leaves:
        with pytest.raises(ConfigError) as err:
            validated(_with(full, path, True))
        field = list(path)
        while isinstance(field[-1], int):  # a list of numbers is named as a whole
            field.pop()
        assert str(err.value).startswith(f"{'.'.join(map(str, field))}: must be a number, not true or false")


@pytest.mark.parametrize(
    "section, field, value",
    [
        ("policy", "insurance_fund_usd", 1e300),
        ("policy", "backstop_capacity_usd", 2e30),
        ("scenario", "shock", -1e-300),
    ],
)
def test_a_float_beyond_what_float32_arithmetic_holds_is_refused_at_load(section, field, value):
    """1e300 used to pass validation and end the run with non-finite outputs naming no field."""
    with pytest.raises(
        ValidationError, match=rf"{field}\n.*beyond the model's range: allowed 0 or a magnitude"
    ):
        Config.model_validate(small_dict(**{section: {**small_dict()[section], field: value}}))


def test_an_asset_price_or_volume_out_of_range_is_refused_naming_its_path():
    assets = small_dict()["market"]["assets"]
    for field, value in (("price", 1e300), ("daily_volume_usd", 1e-300)):
        btc = {**assets["BTC"], field: value}
        with pytest.raises(ValidationError, match=rf"assets\.BTC\.{field}\n.*beyond the model's range"):
            Config.model_validate(
                small_dict(market={**small_dict()["market"], "assets": {**assets, "BTC": btc}})
            )
