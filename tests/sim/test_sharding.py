"""Sharding the path axis over devices: the statistics must not depend on the device count.

The test process has one host CPU device per core (see `engine.sim.devices`); on a machine with a
single core, or when JAX was configured otherwise, a subprocess with two devices is used.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import xarray as xr

from engine import simulate
from engine.config import build, forms
from engine.config.build import static_of
from engine.config.schema import Config
from engine.model.params import Static
from engine.sim import devices
from engine.sim.reduce import ATOM
from engine.sim.rollout import sharded_rollout
from engine.sim.simulate import bytes_per_path, chunk_size, cpu_paths_per_device
from tests.conftest import small_dict

# 700 paths over chunks of 512: a full chunk and a padded one, both split over devices; and a
# run smaller than an atom (one chunk of 128 paths on 2 devices, 128 on one).
SHARDS = {
    "chunks": small_dict(run={"n_paths": 700, "steps": 24, "chunk_size": 512, "fan_points": 6}),
    "below_atom": small_dict(run={"n_paths": 100, "steps": 24, "fan_points": 6}),
}


def _run(n_devices: int, monkeypatch, shard: str) -> xr.Dataset:
    monkeypatch.setenv("LIQSTRESS_DEVICES", str(n_devices))
    return simulate(Config.model_validate(SHARDS[shard]))


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs two host devices (LIQSTRESS_CPU_DEVICES>=2)")
@pytest.mark.parametrize("shard", list(SHARDS))
def test_one_and_two_devices_give_identical_datasets(monkeypatch, shard):
    one = _run(1, monkeypatch, shard)
    two = _run(2, monkeypatch, shard)
    assert devices.path_mesh().size == 2
    xr.testing.assert_identical(one, two)


def test_chunk_splits_evenly_over_devices():
    cfg = Config.model_validate(small_dict(run={"n_paths": 10_000, "chunk_size": 1000}))
    for n in (1, 2, 3, 6, 8):
        size = chunk_size(cfg, static_of(cfg), n)
        assert size % math.lcm(ATOM, n) == 0
    small = Config.model_validate(small_dict(run={"n_paths": 100}))
    assert [chunk_size(small, static_of(small), n) for n in (1, 2, 3)] == [128, 128, 192]


def test_cpu_chunk_holds_a_bounded_number_of_path_cohorts():
    """`cpu_paths_per_device`: 2^17 path-cohorts, but 128 to 512 paths; never above the
    memory budget."""

    def static(assets, cohorts):
        return Static(
            n_assets=assets, n_cohorts=cohorts, steps=48, rounds=6, max_window=16, fan_stride=1, fan_points=48
        )

    per_device = {(1, 256): 512, (1, 1024): 128, (1, 2048): 128, (4, 2048): 128, (1, 64): 512}
    assert {k: cpu_paths_per_device(static(*k)) for k in per_device} == per_device
    huge = Config.model_validate(small_dict(run={"n_paths": 100_000, "memory_budget_mb": 64}))
    big_book = static(2, 100_000)
    budget_paths = 64 * 2**20 // bytes_per_path(big_book, 4)
    assert budget_paths < 128 * 2
    assert chunk_size(huge, big_book, 2) == ATOM  # the budget wins (down to one atom)


def test_mesh_respects_device_limit(monkeypatch):
    monkeypatch.setenv("LIQSTRESS_DEVICES", "1")
    assert devices.path_mesh().size == 1
    monkeypatch.delenv("LIQSTRESS_DEVICES")
    assert devices.path_mesh().size == jax.local_device_count()


def test_segments_of_steps_give_the_numbers_of_one_call():
    """`sharded_rollout` in segments of 7 steps (the last one overrunning the 24 steps and
    skipping them) against one segment of all steps: the same outputs and fan charts."""
    cfg = Config.model_validate(small_dict(run={"n_paths": 256, "steps": 24, "fan_points": 6}))
    params, static = build.build(cfg)
    static = forms.specialise(static, [cfg])
    mesh = devices.path_mesh()
    run = lambda seg: jax.device_get(
        sharded_rollout(params, 3, 0, 200, static=static, n_paths=256, mesh=mesh, segment_steps=seg)
    )
    (one, fan_one), (many, fan_many) = run(24), run(7)
    assert np.any(one["liquidated_total"] > 0)
    for name in one:
        np.testing.assert_array_equal(many[name], one[name], err_msg=name)
    for name in fan_one:
        np.testing.assert_array_equal(fan_many[name], fan_one[name], err_msg=name)
