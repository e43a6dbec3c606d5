"""Bad input is a `ConfigError` that names the field, raised before anything is traced."""

from __future__ import annotations

import pytest

from engine import ConfigError, simulate
from engine.errors import validated
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
