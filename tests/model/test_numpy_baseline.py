"""`engine.sim.reference.simulate_paths`, the NumPy baseline with its own random numbers, agrees
with the engine in distribution: same output names, means within 4 standard errors of the
difference of two independent samples."""

from __future__ import annotations

import jax
import numpy as np

from engine.config import build
from engine.config.schema import Config
from engine.sim import reference
from engine.sim.rollout import rollout
from tests.conftest import small_dict

N_PATHS = 256
RUN = {"n_paths": N_PATHS, "seed": 5, "steps": 24, "cascade_rounds": 6, "max_window": 16, "fan_points": 6}


def test_numpy_baseline_matches_engine_in_distribution():
    cfg = Config.model_validate(small_dict(run=RUN, policy={"insurance_fund_usd": 2e8}))
    params, static = build.build(cfg)
    eng = jax.device_get(rollout(params, 5, 0, N_PATHS, static=static, n_paths=N_PATHS)[0])
    ref = reference.simulate_paths(cfg, N_PATHS, seed=1)
    assert set(ref) == set(eng)
    for name in ("liquidated_total", "trader_loss", "shortfall", "max_drawdown", "open_interest_decline"):
        a, b = np.asarray(eng[name], np.float64), ref[name]
        assert a.shape == b.shape
        se = np.sqrt(a.var(0, ddof=1) / N_PATHS + b.var(0, ddof=1) / N_PATHS)
        assert np.all(np.abs(a.mean(0) - b.mean(0)) <= 4 * se + 1e-12), name
    assert ref["liquidated_total"].mean() > 0 and not ref["nonfinite"].any()
