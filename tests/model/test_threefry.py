"""The straight-line CPU lowering of Threefry-2x32 (`engine.model.threefry`) gives the bits of the
published algorithm, and compiles without a loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from engine.model import kernel  # noqa: F401  (registers the lowering, as any simulation does)

# Known-answer vectors of Threefry-2x32-20 (Random123's kat_vectors): key, counter, output.
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def reference(key, x):
    """Threefry-2x32-20 in Python integers, round by round as the algorithm is specified:
    a key injection before round 0 and after every 4th round."""
    mask = 0xFFFFFFFF
    ks = [key[0], key[1], key[0] ^ key[1] ^ 0x1BD11BDA]
    rot = [13, 15, 26, 6, 17, 29, 16, 24]
    x0, x1 = (x[0] + ks[0]) & mask, (x[1] + ks[1]) & mask
    for r in range(20):
        x0 = (x0 + x1) & mask
        d = rot[r % 8]
        x1 = (((x1 << d) | (x1 >> (32 - d))) & mask) ^ x0
        if r % 4 == 3:
            i = r // 4 + 1
            x0 = (x0 + ks[i % 3]) & mask
            x1 = (x1 + ks[(i + 1) % 3] + i) & mask
    return x0, x1


@pytest.mark.parametrize("key, counter, expected", KAT)
def test_known_answers(key, counter, expected):
    assert reference(key, counter) == expected
    out = threefry_2x32(np.uint32(key), np.uint32(counter))
    assert tuple(int(v) for v in out) == expected


def test_random_inputs_match_the_reference():
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2**32, (16, 2), dtype=np.uint64).astype(np.uint32)
    xs = rng.integers(0, 2**32, (16, 2), dtype=np.uint64).astype(np.uint32)
    for k, x in zip(keys, xs):
        got = tuple(int(v) for v in threefry_2x32(k, x))
        assert got == reference(tuple(int(v) for v in k), tuple(int(v) for v in x))


def test_draws_compile_without_a_loop_on_the_cpu():
    draw = jax.jit(lambda k: jax.random.normal(k, (64,)))
    hlo = draw.lower(jax.random.key(0)).compile().as_text()
    assert jax.default_backend() != "cpu" or " while(" not in hlo
    assert jnp.isfinite(draw(jax.random.key(0))).all()
