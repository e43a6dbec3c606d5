"""Which devices a simulation runs on, and how the path axis is split over them.

On a CPU the devices are host devices, one per core (`engine.sim.cpu_devices`, set before JAX
starts). `LIQSTRESS_DEVICES=N` limits a simulation to the first N devices of the process (all by
default); across processes (`engine.sim.distributed`) every process uses all its local devices.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

PATH_AXIS = "paths"


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
