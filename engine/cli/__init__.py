"""Command-line interface `liqstress` (also `python -m engine`): a thin shell over
`engine.config`, `engine.runs`, `engine.sim.distributed` and `engine.report` that parses
options, prints, and maps exceptions to exit codes.

    liqstress run [CONFIG] [--run-dir DIR] [--paths N] [--seed S] [--set key=value ...]
    liqstress run --resume DIR
    liqstress compare RUN [RUN ...] [--out DIR]
    liqstress list [RUNS_ROOT]
    liqstress run CONFIG --run-dir DIR --shard i/n   (one slice of a sweep; see README)
    liqstress run CONFIG --coordinator HOST:PORT --num-processes N --process-id I
                                                    (one process of N; or --distributed)
    liqstress validate CONFIG [--set key=value ...]
    liqstress combine DIR
    liqstress events [EVENT.toml ...]              (the event library, or check event files)

With no command it runs the default scenario. Exit codes: 0 success; 2 invalid config or
usage (one message, nothing written); 1 runtime failure (parts already written are kept for
`--resume`); 130 interrupted (Ctrl-C or SIGTERM; also resumable): `engine.sim.process.EXIT_*`.
"""

from __future__ import annotations

import sys

from engine.cli import browse, fitting, run  # noqa: F401  (importing them registers their commands)
from engine.cli.shell import ARGV, app


def main(argv: list[str] | None = None) -> None:
    """Entry point of `liqstress` and `python -m engine`."""
    ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    app(args=list(ARGV), prog_name="liqstress")
