"""Several processes, one simulation: JAX's distributed runtime over hosts (or on one host).

Every process runs the same program. After `initialize()`, `engine.simulate` builds its mesh
over the devices of every process; each process simulates the paths of its own devices, the
per-path outputs of each chunk are gathered (`process_allgather`) and reduced in the global
atom order on every process, so the statistics are global and equal to a single-process run
of the same configuration. Process 0 writes the results (`is_writer()`).

Launching:

- SLURM: `srun python -m your_script` with one task per node (or per GPU); `initialize()`
  with no arguments lets JAX read the SLURM environment.
- Explicitly: give `coordinator_address="host:port"`, `num_processes` and `process_id`, or set
  `LIQSTRESS_COORDINATOR`, `LIQSTRESS_NUM_PROCESSES`, `LIQSTRESS_PROCESS_ID`.

`liqstress run` joins with `--coordinator/--num-processes/--process-id` (or those variables)
or `--distributed` (auto-detection); see `engine.runs.Leader` for who writes what.

On CPUs the cross-process collectives use gloo (TCP); on GPUs JAX uses NCCL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV_COORDINATOR = "LIQSTRESS_COORDINATOR"
ENV_NUM_PROCESSES = "LIQSTRESS_NUM_PROCESSES"
ENV_PROCESS_ID = "LIQSTRESS_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
) -> None:
    """Join (or start, as process 0) the distributed runtime; call before any JAX work.

    Arguments default to `LIQSTRESS_COORDINATOR` / `LIQSTRESS_NUM_PROCESSES` /
    `LIQSTRESS_PROCESS_ID`, then to JAX's cluster auto-detection (SLURM, Open MPI, ...).
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    try:
        # CPU collectives across processes (ignored by GPU backends).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):
        pass
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )


def shutdown() -> None:
    """Leave the distributed runtime (optional at exit)."""
    jax.distributed.shutdown()


def joined() -> bool:
    """True once this process has joined the distributed runtime (starts no JAX backend)."""
    return jax.distributed.is_initialized()


def is_writer() -> bool:
    """True on the process that writes results (process 0)."""
    return jax.process_index() == 0


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block reach their handlers when it ends.

    The handlers are swapped for a recorder (a signal mask would not do: the runtime's other
    threads would still take the signal); off the main thread, where handlers cannot be set,
    nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    record = lambda signum, _: caught.append(signum)
    previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for signum in caught:
            signal.raise_signal(signum)


def broadcast_json(value: Any = None) -> Any:
    """Process 0's `value` (anything `json.dumps` takes) on every process; the others pass
    nothing. A collective: every process calls it, at the same point of the same program.

    The JSON text travels as bytes padded with NULs to a power of two (which JSON text never
    contains), so that few buffer shapes need compiling; its padded size travels first. An
    interrupt (Ctrl-C, SIGTERM) waits until both have travelled: one that split them would leave
    process 0's next collective paired with the others' second half of this one.
    """
    text = json.dumps(value).encode() if is_writer() else b""
    with _signals_held():
        size = int(multihost_utils.broadcast_one_to_all(np.int32(1 << len(text).bit_length())))
        buf = np.zeros(size, np.uint8)
        buf[: len(text)] = np.frombuffer(text, np.uint8)
        data = multihost_utils.broadcast_one_to_all(buf)
    return json.loads(data.tobytes().rstrip(b"\0"))
