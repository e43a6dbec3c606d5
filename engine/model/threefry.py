"""Threefry-2x32 on the CPU in straight-line form: the same random bits in fewer operations.

Every draw of the model (`engine.model.kernel.path_keys`, `engine.model.market`) comes from JAX's
default generator, Threefry-2x32 with 20 rounds (Salmon, Moraes, Dror and Shaw, "Parallel random
numbers: as easy as 1, 2, 3", SC 2011). JAX lowers it on the CPU as a loop of 5 iterations of 4
rounds, which keeps compilation short but runs as a loop on the device: XLA:CPU dispatches the
loop's operations one by one in every iteration, 8 such loops per path-step in the general
kernel. `use_straight_line` registers a CPU lowering that writes the 20 rounds out, which XLA
fuses into a few kernels (measured: W3 at 100 x 720 about 3% faster). The function is the same,
so the bits are the same (tested against the published known-answer vectors and a round-by-round
reference).

The registration is global to the process (every `threefry2x32` on the CPU lowers this way from
then on); `engine.model.kernel` makes it when imported, before anything is compiled.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

# The rotation distances of rounds 4i..4i+3, alternating between two sets; the key schedule's
# parity constant.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
PARITY = np.uint32(0x1BD11BDA)


def _rotl(v, d: int):
    """Rotate uint32 `v` left by `d` bits."""
    return (v << np.uint32(d)) | (v >> np.uint32(32 - d))


def threefry_20(k0, k1, x0, x1):
    """Threefry-2x32-20 of counters (x0, x1) under key (k0, k1), all uint32 arrays of one shape
    (or scalars broadcast to it); returns the two uint32 output words."""
    ks = (k0, k1, k0 ^ k1 ^ PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for d in ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, d) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _lowering(k0, k1, x0, x1):
    shape = jnp.broadcast_shapes(*(jnp.shape(v) for v in (k0, k1, x0, x1)))
    return threefry_20(*(jnp.broadcast_to(v, shape) for v in (k0, k1, x0, x1)))


def use_straight_line() -> None:
    """Lower `threefry2x32` on the CPU as straight-line code (idempotent)."""
    mlir.register_lowering(threefry2x32_p, mlir.lower_fun(_lowering, multiple_results=True), platform="cpu")
