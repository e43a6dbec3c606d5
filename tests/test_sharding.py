"""Sharding the path axis over devices: the statistics must not depend on the device count.

The test process has one host CPU device per core (see `engine.devices`); on a machine with a
single core, or when JAX was configured otherwise, a subprocess with two devices is used.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import xarray as xr

from engine import devices, simulate
from engine.config import Config
from engine.params import static_of
from engine.reduce import ATOM
from engine.simulate import chunk_size
from tests.conftest import small_dict

# 700 paths over chunks of 512: a full chunk and a padded one, both split over devices.
SHARD = small_dict(run={"n_paths": 700, "steps": 24, "chunk_size": 512, "fan_points": 6})


def _run(n_devices: int, monkeypatch) -> xr.Dataset:
    monkeypatch.setenv("LIQSTRESS_DEVICES", str(n_devices))
    return simulate(Config.model_validate(SHARD))


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs two host devices (LIQSTRESS_CPU_DEVICES>=2)")
def test_one_and_two_devices_give_identical_datasets(monkeypatch):
    one = _run(1, monkeypatch)
    two = _run(2, monkeypatch)
    assert devices.path_mesh().size == 2
    xr.testing.assert_identical(one, two)


def test_chunk_splits_evenly_over_devices():
    cfg = Config.model_validate(small_dict(run={"n_paths": 10_000, "chunk_size": 1000}))
    for n in (1, 2, 3, 6, 8):
        size = chunk_size(cfg, static_of(cfg), n)
        assert size % math.lcm(ATOM, n) == 0


def test_mesh_respects_device_limit(monkeypatch):
    monkeypatch.setenv("LIQSTRESS_DEVICES", "1")
    assert devices.path_mesh().size == 1
    monkeypatch.delenv("LIQSTRESS_DEVICES")
    assert devices.path_mesh().size == jax.local_device_count()


def test_grid_shards_combine_to_the_single_run_cube(tmp_path):
    from engine.shards import combine, run_shard, shard_points

    base = Config.model_validate(SHARD)  # same shapes as above: the kernel is compiled already
    pts = [base.model_copy(update={"policy": base.policy.model_copy(update={"leverage_cap": c})})
           for c in (125.0, 50.0, 20.0, 10.0, 5.0)]
    whole = simulate(base, pts, baseline=2)
    assert [len(shard_points(5, i, 3)) for i in range(3)] == [2, 2, 1]
    assert run_shard(base, pts, tmp_path, "0/3", baseline=2) is None
    assert run_shard(base, pts, tmp_path, (2, 3), baseline=2) is None
    cube = run_shard(base, pts, tmp_path, "1/3", baseline=2)  # the last to finish assembles
    assert cube == tmp_path / "cube.nc"
    with xr.open_dataset(cube) as got:
        got = got.load()
    np.testing.assert_array_equal(got.point.values, np.arange(5))
    for name in ("liquidated_total", "liquidated_total_mean", "bad_debt_diff_mean", "mark_price_band"):
        np.testing.assert_array_equal(got[name].values, whole[name].values, err_msg=name)
    assert combine(tmp_path) == cube
