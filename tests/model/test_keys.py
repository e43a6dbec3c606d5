"""Random streams over the whole range the config accepts: seeds up to 2**63 - 1 and global
path indices beyond 2**32 (`run.n_paths` allows 10**10)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from engine import simulate
from engine.config import build
from engine.config.schema import Config
from engine.model.kernel import path_keys, word64
from engine.sim import cache
from engine.sim.devices import path_mesh
from engine.sim.rollout import sharded_rollout
from tests.conftest import small_dict
from tests.helpers import F32_RTOL, assert_close, usd_scale

TINY_RUN = {**small_dict()["run"], "n_paths": 64, "steps": 8, "fan_points": 4}


def key_data(keys) -> np.ndarray:
    return np.asarray(jax.random.key_data(keys))


def test_word64_splits_into_high_and_low_words():
    w = word64(2**63 - 1)
    assert (int(w.hi), int(w.lo)) == (2**31 - 1, 2**32 - 1)
    assert (int(word64(2**32 + 5).hi), int(word64(2**32 + 5).lo)) == (1, 5)
    with pytest.raises(ValueError):
        word64(2**64)


def test_small_seeds_and_indices_keep_their_streams():
    """Below 2**31 (seeds) and 2**32 (indices) keys are fold_in of the index into key(seed), as
    before 64-bit indices, so published figures do not move."""
    for seed, start in [(0, 0), (7, 100), (2**31 - 1, 2**32 - 8)]:
        idx = np.uint32(start) + np.arange(8, dtype=np.uint32)
        expected = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), idx)
        np.testing.assert_array_equal(key_data(path_keys(seed, start, 8)), key_data(expected))


def test_indices_beyond_two_to_the_32_are_distinct_and_chunk_independent():
    seed = 3
    beyond = key_data(path_keys(seed, 2**32 + 5, 1))[0]
    assert not np.array_equal(beyond, key_data(path_keys(seed, 5, 1))[0])
    # the sixth path of a chunk starting at 2**32 is global path 2**32 + 5
    np.testing.assert_array_equal(key_data(path_keys(seed, 2**32, 6))[5], beyond)
    # a chunk across 2**32 carries into the high word: each path keeps its own key
    across = key_data(path_keys(seed, 2**32 - 3, 6))
    one_by_one = np.stack([key_data(path_keys(seed, 2**32 - 3 + i, 1))[0] for i in range(6)])
    np.testing.assert_array_equal(across, one_by_one)
    assert len({tuple(k) for k in across}) == 6
    # traced (jitted) with the words as arguments, the same keys
    jitted = jax.jit(path_keys, static_argnums=2)(word64(seed), word64(2**32 - 3), 6)
    np.testing.assert_array_equal(key_data(jitted), across)


def test_a_chunk_beyond_two_to_the_32_simulates_its_own_paths():
    """`sharded_rollout` of a chunk across 2**32: its second half is the first half of a chunk
    starting at 2**32, and differs from the chunk at 0 (what 32-bit indices wrapped to)."""
    cache.enable()  # as `simulate` does: a second run of the tests does not compile again
    cfg = Config.model_validate(small_dict(run=TINY_RUN))
    params, static = build.build(cfg)
    mesh = path_mesh()
    n, half = 64 * mesh.size, 32 * mesh.size

    def outputs(start: int) -> dict:
        out, _ = sharded_rollout(params, 11, start, n, static=static, n_paths=n, mesh=mesh)
        return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

    across, beyond, wrapped = outputs(2**32 - half), outputs(2**32), outputs(0)
    for name, v in beyond.items():
        # a path's place in the batch may change its float32 rounding (vector lanes)
        assert_close(across[name][half:], v[:half], F32_RTOL, usd_scale(cfg), what=name)
    assert not np.allclose(beyond["max_drawdown"], wrapped["max_drawdown"])


def test_seeds_over_the_whole_range_run_and_differ():
    means = {}
    for seed in (1, 2**31, 2**32 + 1, 2**63 - 1):
        ds = simulate(small_dict(run={**TINY_RUN, "seed": seed}))
        assert int(ds.attrs["seed"]) == seed
        means[seed] = float(ds["max_drawdown_mean"].sum())
    assert len(set(means.values())) == 4, means  # 2**32 + 1 no longer collides with 1
