"""The dense kernel as the ladder's fallback (`engine.sim.fallback`): flagged paths are rerun by
their global index, their outputs replaced and their fan-chart rows counted once; a run on the
ladder equals a run on the dense kernel and does not depend on the chunk size."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import xarray as xr

from engine.config.build import build
from engine.config.schema import Config
from engine.model.ladder_kernel import FALLBACK_NEVER
from engine.sim import devices, fallback
from engine.sim.rollout import EXTRACT_BLOCK, sharded_rollout
from engine.sim.simulate import simulate
from tests.conftest import small_dict
from tests.helpers import PARITY_RTOL, assert_close, usd_scale


def test_rerun_sizes_are_few_and_hold_the_flagged_paths():
    assert [fallback.rerun_size(n, 64, 1024) for n in (1, 64, 65, 200, 5000)] == [64, 64, 128, 256, 1024]


def test_complete_replaces_only_the_flagged_paths():
    outputs = {"x": np.arange(6.0), fallback.FLAG: np.array([FALLBACK_NEVER, 3, FALLBACK_NEVER, 0, 5, 1])}
    fan = {"price": np.ones((2, 3), np.int32)}
    calls = []

    def rerun(offsets, count_from, n):
        calls.append((offsets.copy(), count_from.copy(), n))
        return {"x": -(offsets.astype(float) + 100)}, {"price": np.full((2, 3), 2, np.int32)}

    out, new_fan = fallback.complete(outputs, fan, 5, rerun, unit=2, chunk=8)
    # path 5 is flagged but beyond the valid paths; paths 1, 3, 4 are rerun in one call of 4
    assert len(calls) == 1
    offsets, count_from, n = calls[0]
    assert n == 3 and offsets.tolist()[:3] == [1, 3, 4] and count_from.tolist() == [3, 0, 5, FALLBACK_NEVER]
    assert out["x"].tolist() == [0.0, -101.0, 2.0, -103.0, -104.0, 5.0]
    assert new_fan["price"].tolist() == [[3, 3, 3]] * 2
    assert outputs["x"].tolist() == list(np.arange(6.0))  # the inputs are unchanged


def config(kernel: str, adl_rule: str = "queue", **run) -> Config:
    d = small_dict(
        run={
            "n_paths": 768,
            "seed": 11,
            "steps": 32,
            "fan_points": 8,
            "tipping_paths": 0,
            "kernel": kernel,
            **run,
        },
        policy={"insurance_fund_usd": 2e7, "adl_rule": adl_rule},
    )
    d["book"]["entry_points"] = 8
    return Config.model_validate(d)


@pytest.mark.parametrize("rule", ["queue", "pro_rata"])
def test_a_ladder_run_equals_a_dense_run_with_adl_on_the_ladder_or_handed_over(rule):
    """The queue's ADL runs on the ladder (`engine.model.ladder_adl`; a step whose cascade later
    reaches a cohort ADL closed runs again on the path's open book), pro rata's paths are handed
    to the dense kernel; either way the run's numbers are the dense run's, and do not depend on
    the chunk size (bitwise: the ladder's batches and the hand-overs of each chunk differ)."""
    with jax.enable_x64(True):
        lad = simulate(config("ladder", rule, dtype="float64"))
        den = simulate(config("dense", rule, dtype="float64"))
        xr.testing.assert_identical(simulate(config("ladder", rule, dtype="float64", chunk_size=256)), lad)
    adl_paths = float(lad["p_adl_notional_positive"].max()) * lad.attrs["n_paths"]
    handed = float(lad["n_dense_fallback"].max())
    assert adl_paths > 0, "no path needed ADL"
    # with so small a fund every path needs ADL at many steps, and the rebounds of 64 of them reach
    # closed cohorts (handed over until the ladder ran such steps on the open book)
    assert handed > 0 if rule == "pro_rata" else handed == 0, f"{handed} of {adl_paths}"
    scale = usd_scale(config("dense"))
    # the tally too: a ladder path with ADL events is tallied cohort by cohort at its end, without
    # the closed cohorts its levels passed (the others from prefix sums)
    tallied = ("liquidated_entry_by_leverage", "trader_loss_by_leverage", "positions_liquidated")
    for name in (
        "liquidated_total",
        "adl_notional",
        "bad_debt",
        "insurance_fund_draw",
        "trader_loss",
        *tallied,
    ):
        assert_close(lad[f"{name}_mean"], den[f"{name}_mean"], PARITY_RTOL, scale, name)
        assert_close(lad[name], den[name], PARITY_RTOL, scale, name)
    xr.testing.assert_equal(lad["mark_price_band"], den["mark_price_band"])
    xr.testing.assert_equal(lad["cum_liquidations_band"], den["cum_liquidations_band"])


def test_a_rerun_path_does_not_depend_on_how_many_share_its_call():
    """A dense rerun holds whole extraction blocks per device (`EXTRACT_BLOCK`), so path 5
    rerun alone (one block on one device, as a run reruns up to one block of flagged paths) or
    with 54 others (1, 2 and 4 blocks per device) gives the same numbers, bit for bit. (Calls
    of 8 paths per device do not: XLA reduces a batch that small in another order.)"""
    params, static = build(config("dense"))
    mesh = devices.path_mesh()
    size = EXTRACT_BLOCK * mesh.size

    def rerun(slots: dict, n: int, mesh=mesh) -> dict:
        offsets = np.zeros(n, np.uint32)
        for slot, path in slots.items():
            offsets[slot] = path
        out, _ = sharded_rollout(
            params, 11, 0, n, static, n, mesh,
            offsets=jax.numpy.asarray(offsets), count_from=jax.numpy.zeros(n, jax.numpy.int32),
        )  # fmt: skip
        return jax.device_get(out)

    alone = rerun({5: 5}, EXTRACT_BLOCK, devices.path_mesh(jax.devices()[:1]))
    for n in (size, 2 * size, 4 * size):
        shared = rerun({5: 5, 1: 3, **{slot: 100 + slot for slot in range(6, 60)}}, n)
        for name, values in alone.items():
            np.testing.assert_array_equal(values[5], shared[name][5], err_msg=f"{name}, {n} paths")
