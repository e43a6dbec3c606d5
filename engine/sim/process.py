"""What a liqstress process shares with its shell, without importing JAX: exit codes, the
environment names of a multi-process run, and SIGTERM turned into Ctrl-C (`Interrupts`).

`engine.cli` reads these when it starts; commands that never simulate (`--version`, `list`,
`validate`, `events`) then answer without loading JAX (`engine.sim.distributed` holds the rest of
a multi-process run's lifecycle).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Self

# Exit codes of `liqstress` and of every process of a multi-process run.
EXIT_OK = 0
EXIT_FAILED = 1  # a runtime failure (parts already written are kept)
EXIT_USAGE = 2  # an invalid config or usage (one message, nothing written)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM

# A multi-process run's coordinator (host:port), size and this process's index.
ENV_COORDINATOR = "LIQSTRESS_COORDINATOR"
ENV_NUM_PROCESSES = "LIQSTRESS_NUM_PROCESSES"
ENV_PROCESS_ID = "LIQSTRESS_PROCESS_ID"


class Interrupts:
    """Inside `with Interrupts() as interrupts:` SIGTERM (e.g. from SLURM or `kill`) raises
    KeyboardInterrupt, like Ctrl-C.

    That KeyboardInterrupt is lost when the handler runs in code whose exceptions Python ignores
    (seen: JAX's garbage-collection callback), so the block also remembers the signal
    (`terminated`), and a progress callback wrapped by `checked` raises it again at the next
    progress report. Python runs the handler only between bytecodes, not inside a compiled call,
    so `engine.sim.simulate` makes calls of about a second each (`engine.sim.cost`).
    """

    def __init__(self) -> None:
        self.terminated = False
        self._previous: Any = None

    def __enter__(self) -> Self:
        self.terminated = False
        self._previous = signal.signal(signal.SIGTERM, self._terminate)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _terminate(self, signum, frame) -> None:
        self.terminated = True
        raise KeyboardInterrupt

    def checked(self, progress: Callable | None = None) -> Callable:
        """A progress callback (called after every compiled call, about a second apart) that
        first calls `progress`, then raises KeyboardInterrupt if a SIGTERM came whose own
        KeyboardInterrupt was lost."""

        def report(event) -> None:
            if progress:
                progress(event)
            if self.terminated:
                raise KeyboardInterrupt

        return report
