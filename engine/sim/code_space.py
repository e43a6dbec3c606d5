"""Room for compiled code: a process that compiles many kernels lets go of the old ones.

XLA:CPU maps each compiled kernel's machine code into the process, a few sections per part of
the program (measured: about 650 memory mappings per `simulate` of a small configuration, JAX
0.10.2). Linux caps the mappings of a process at `vm.max_map_count` (65,530 by default). Past
the cap the next compilation cannot map its code and LLVM aborts the whole process, finished
work and all. A process that runs many differently shaped simulations (a backtest over the
event library, a long session in a notebook, the test suite) reaches it after about a hundred.

`release_if_crowded` drops JAX's compiled kernels when the process holds more than a share of the
cap; the next call compiles again, or reads the persistent cache (`engine.sim.cache`).
"""

from __future__ import annotations

import gc
from pathlib import Path

import jax

# Share of the cap past which compiled kernels are dropped: a large configuration adds a few
# thousand mappings per compilation, far below the half left.
CROWDED_SHARE = 0.5
# The kernel's default cap, where it cannot be read.
DEFAULT_MAX_MAPS = 65_530


def mappings() -> int | None:
    """Memory mappings this process holds, or None where the system does not say (not Linux)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def max_mappings() -> int:
    """The system's cap on a process's memory mappings."""
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return DEFAULT_MAX_MAPS


def release_if_crowded(share: float = CROWDED_SHARE) -> bool:
    """Drop JAX's compiled kernels (`jax.clear_caches`) if the process holds more than `share`
    of its cap on memory mappings; returns whether it did."""
    held = mappings()
    if held is None or held <= share * max_mappings():
        return False
    jax.clear_caches()
    gc.collect()  # executables go with their last reference
    return True
