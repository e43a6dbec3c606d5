"""How many CPU devices JAX gets, decided before JAX starts, without importing it.

On a CPU, XLA runs one device's element-wise work on about one core, so liqstress asks JAX for
one host device per core and shards the path axis over them (`engine.sim.devices`). This must
happen before JAX initialises its backend; `engine/__init__.py` calls `configure_host_devices()`
on import, and it does nothing when

- the backend is already initialised (too late: JAX keeps what it has),
- `XLA_FLAGS` already contains `--xla_force_host_platform_device_count` (the user decided), or
- `JAX_NUM_CPU_DEVICES` was set by the user, or `jax_num_cpu_devices` by `jax.config.update`.

When JAX is not imported yet, the number goes into `JAX_NUM_CPU_DEVICES`, which JAX reads when
it is imported: commands that never simulate (`--version`, `list`, `validate`) then never pay
for importing JAX. `LIQSTRESS_CPU_DEVICES=N` overrides the default of one device per available
core (`1` turns sharding off on a CPU). On GPUs the setting is ignored: every GPU is a device.
"""

from __future__ import annotations

import os
import sys

FORCE_FLAG = "--xla_force_host_platform_device_count"
# Set beside JAX_NUM_CPU_DEVICES to the value liqstress wrote there: a child process that
# inherits both recomputes its own number instead of taking the parent's for the user's.
OURS = "LIQSTRESS_JAX_CPU_DEVICES"


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _backend_ready(jax) -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume the safe answer
        return True


def configure_host_devices(n: int | None = None) -> int | None:
    """Ask JAX for `n` CPU devices (default: `LIQSTRESS_CPU_DEVICES` or one per core).

    Returns the number set, or None when it was left alone (see the module docstring).
    """
    chosen = os.environ.get("JAX_NUM_CPU_DEVICES")
    if FORCE_FLAG in os.environ.get("XLA_FLAGS", "") or (
        chosen is not None and chosen != os.environ.get(OURS)
    ):
        return None
    jax = sys.modules.get("jax")
    if jax is not None and _backend_ready(jax):
        return None
    if n is None:
        env = os.environ.get("LIQSTRESS_CPU_DEVICES", "").strip()
        n = int(env) if env else available_cores()
    n = max(1, int(n))
    if jax is None:
        os.environ["JAX_NUM_CPU_DEVICES"] = os.environ[OURS] = str(n)
        return n
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except (AttributeError, RuntimeError, ValueError):
        return None
    return n
