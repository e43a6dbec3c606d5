"""Shared fixtures: small configurations that compile and run in seconds."""

from __future__ import annotations

import copy

import pytest

from engine.config.schema import Config
from engine.sim import cache, code_space

# the workers compile in their own memory; the CLI processes the tests start share the cache
cache.keep_off()


@pytest.fixture(autouse=True)
def _room_for_compiled_code():
    """A worker compiles hundreds of kernels: past half the process's cap on memory mappings
    their code is let go (`engine.sim.code_space`), before LLVM aborts the worker."""
    yield
    code_space.release_if_crowded()


SMALL = {
    "name": "small",
    "run": {"n_paths": 512, "seed": 7, "steps": 48, "cascade_rounds": 6, "max_window": 16, "fan_points": 12},
    "market": {
        "assets": {
            "BTC": {
                "price": 100_000.0,
                "vol_annual": 0.5,
                "impact_y": 0.5,
                "daily_volume_usd": 40e9,
                "open_interest_usd": 40e9,
                "long_share": 0.6,
                "jump_mean": -0.01,
                "jump_std": 0.01,
            },
            "SOL": {
                "price": 200.0,
                "vol_annual": 0.9,
                "impact_y": 0.5,
                "daily_volume_usd": 8e9,
                "open_interest_usd": 8e9,
                "long_share": 0.65,
                "shock_beta": 1.5,
            },
        },
        "correlation": [[1.0, 0.8], [0.8, 1.0]],
        "tail_dof": 4.0,
        "garch_alpha": 0.02,
        "garch_beta": 0.95,
        "jump_intensity_per_day": 2.0,
    },
    "book": {
        "leverage": [5, 20, 50, 100],
        "leverage_weights": [30, 40, 20, 10],
        "entry_points": 3,
        "position_sizes_usd": [10e3, 2e6],
        "size_weights": [60, 40],
        "entry_log_std": 0.04,
    },
    "scenario": {"shock": -0.08, "shock_start": 6, "shock_steps": 2},
    "policy": {"insurance_fund_usd": 2e8},
}


def small_dict(**sections) -> dict:
    """A deep copy of SMALL with top-level sections updated (dicts merged one level deep)."""
    d = copy.deepcopy(SMALL)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return d


@pytest.fixture
def small() -> Config:
    return Config.model_validate(small_dict())
