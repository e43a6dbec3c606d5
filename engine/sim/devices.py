"""Which devices a simulation runs on, and how the path axis is split over them.

On a CPU, XLA runs one device's element-wise work on about one core, so liqstress asks JAX for
one host device per core and shards the path axis over them. This must happen before JAX
initialises its backend; `engine/__init__.py` calls `configure_host_devices()` on import, and
it does nothing when

- the backend is already initialised (too late: JAX keeps what it has),
- `XLA_FLAGS` already contains `--xla_force_host_platform_device_count` (the user decided), or
- `jax_num_cpu_devices` was set explicitly (by `jax.config.update` or `JAX_NUM_CPU_DEVICES`).

`LIQSTRESS_CPU_DEVICES=N` overrides the default of one device per available core (`1` turns
sharding off on a CPU). On GPUs the setting is ignored: every GPU is a device already.

`LIQSTRESS_DEVICES=N` limits a simulation to the first N devices of the process (all by
default); across processes (`engine.sim.distributed`) every process uses all its local devices.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

PATH_AXIS = "paths"
FORCE_FLAG = "--xla_force_host_platform_device_count"


def _backend_ready() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume the safe answer
        return True


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def configure_host_devices(n: int | None = None) -> int | None:
    """Ask JAX for `n` CPU devices (default: `LIQSTRESS_CPU_DEVICES` or one per core).

    Returns the number set, or None when it was left alone (see the module docstring).
    """
    if FORCE_FLAG in os.environ.get("XLA_FLAGS", "") or "JAX_NUM_CPU_DEVICES" in os.environ:
        return None
    if _backend_ready():
        return None
    if n is None:
        env = os.environ.get("LIQSTRESS_CPU_DEVICES", "").strip()
        n = int(env) if env else available_cores()
    n = max(1, int(n))
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except (AttributeError, RuntimeError, ValueError):
        return None
    return n


def simulation_devices() -> list:
    """Devices of one simulation: every device of every process when JAX's distributed
    runtime is up, else the first `LIQSTRESS_DEVICES` (default all) local devices."""
    if jax.process_count() > 1:
        return list(jax.devices())
    devs = jax.local_devices()
    env = os.environ.get("LIQSTRESS_DEVICES", "").strip()
    if env:
        devs = devs[: max(1, min(int(env), len(devs)))]
    return devs


def path_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh (`PATH_AXIS`) over `devices` (default `simulation_devices()`)."""
    devs = simulation_devices() if devices is None else list(devices)
    return Mesh(np.asarray(devs, dtype=object), (PATH_AXIS,))


def describe() -> dict:
    """Platform, device kind and counts, for benchmark records and logs."""
    devs = jax.devices()
    return {
        "platform": devs[0].platform,
        "device_kind": devs[0].device_kind,
        "devices": len(devs),
        "local_devices": jax.local_device_count(),
        "processes": jax.process_count(),
        "jax": jax.__version__,
    }
