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
or `--distributed` (auto-detection). The whole lifecycle of such a run lives here: the runtime
(`initialize`), the messages (`broadcast_json`), who decides and who follows (`Leader`,
`leading`, `follow`, `following`) and how a process ends (`exit_code`, `abandon`); the exit
codes, signals and environment names themselves are in `engine.sim.process`.

On CPUs the cross-process collectives use gloo (TCP); on GPUs JAX uses NCCL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import jax
import numpy as np
import xarray as xr
from jax.experimental import multihost_utils

from engine.config.errors import SimulationError
from engine.config.schema import Config
from engine.sim.process import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupts,
)
from engine.sim.simulate import simulate


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


class Leader:
    """Process 0's side of a multi-process run; with one process it only calls `simulate`.

    Every process must make the same collective calls (`simulate` gathers each chunk) in the
    same order, yet only process 0 knows what the run directory holds: whether it could be
    created or locked, which parts are done. So process 0 decides everything and the others
    `follow`: before each `simulate` call it broadcasts the call (base config, points,
    baseline; JSON), and at the end its exit code, which they return. The others thus never
    read or write the directory and a resume skips the same parts on every process. If process
    0 fails inside `simulate`, it sends nothing more: the others fail in the same collective.

    Process 0 passes its leader to `engine.runs.execute.execute` and calls `release` (also after a
    failure); `leading` does both.
    """

    def __init__(self) -> None:
        self._listening = joined()  # the others wait in `follow` for a message
        # the others are inside a `simulate` this process has not finished (see `stranded`)
        self._inside = False

    def simulate(
        self, config: Config, points: list[Config], baseline: int, progress: Callable | None = None
    ) -> xr.Dataset:
        """`engine.simulate(config, points, baseline=...)`, run on every process."""
        if self._listening:  # (a single process builds no message)
            points_json = [c.model_dump(mode="json") for c in points]
            self._tell(
                {"config": config.model_dump(mode="json"), "points": points_json, "baseline": baseline}
            )
        self._inside = self._listening
        ds = simulate(config, points, baseline=baseline, progress=progress)
        self._inside = False
        return ds

    @property
    def stranded(self) -> bool:
        """True after `simulate` failed on this process while others ran it too: they wait in
        one of its collectives and cannot be told anything more (see `leading`)."""
        return self._inside

    def release(self, code: int) -> None:
        """Let the other processes end with exit code `code` (`follow` returns it), unless they
        are `stranded` in a failed simulation."""
        if not self._inside:
            self._tell({"exit": code})
        self._listening = False

    def _tell(self, message: dict) -> None:
        if self._listening:
            broadcast_json(message)


def follow(progress: Callable | None = None) -> int:
    """A process other than 0 in a multi-process run (see `Leader`): simulate each call process
    0 sends (with `progress`, called after each compiled call), write nothing, and return
    process 0's exit code once it sends that."""
    while "exit" not in (message := broadcast_json()):
        simulate(message["config"], message["points"], baseline=message["baseline"], progress=progress)
    return message["exit"]


# --------------------------------------------------------------------------------------
# Signals and exit codes
# --------------------------------------------------------------------------------------


def exit_code(err: BaseException) -> tuple[int, bool]:
    """The exit code that `err` ends the program with, and whether a message already told the
    user why: 130 for an interrupt, its own for an exit (`SystemExit`, click's `Exit`, which
    the CLI raises after printing its message), else 1 and False."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, True
    code = err.code if isinstance(err, SystemExit) else getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code, True
    return EXIT_FAILED, False


def abandon(code: int) -> NoReturn:
    """Leave a multi-process run at once with `code`, while the other processes wait in a
    collective this one will not join: JAX's shutdown at exit would wait for them (up to its
    5-minute timeout) while they wait for this process. Exiting ends this process's part of the
    runtime, and the runtime (or the collective's broken connection) ends the others within
    seconds."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def following(tell: Callable[[str], None]) -> int:
    """A process other than 0 of a multi-process run: simulate what process 0 sends (`follow`)
    and return its exit code. Interrupted (130) or failing (1; `tell` gets the message) itself,
    it leaves at once (`abandon`): process 0 waits in a collective of the same simulation."""
    try:
        with Interrupts() as interrupts:
            return follow(progress=interrupts.checked())
    except KeyboardInterrupt:
        abandon(EXIT_INTERRUPTED)
    except (SimulationError, OSError, ValueError, RuntimeError) as e:
        tell(f"process {jax.process_index()}: {e}")
        abandon(EXIT_FAILED)


@contextlib.contextmanager
def leading() -> Iterator[Leader]:
    """Process 0's side of a run (the only process of most runs): a `Leader` that finally tells
    the other processes, if any, the exit code the block ends with (`exit_code`). If it leaves
    them stranded in a failed simulation, this process leaves at once (`abandon`), printing the
    traceback of an error no message reported."""
    leader, code, told = Leader(), EXIT_FAILED, True
    try:
        yield leader
        code = EXIT_OK
    except BaseException as err:
        code, told = exit_code(err)
        raise
    finally:
        leader.release(code)
        if leader.stranded:
            if not told:
                traceback.print_exc()  # `abandon` skips Python's report
            abandon(code)
