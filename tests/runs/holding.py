"""A `liqstress` process that stops for good just before one part's file is renamed into place
(after the parts before it are recorded), for tests that kill or race a run there."""

from __future__ import annotations

import sys

_SCRIPT = """
import sys, time
from engine import cli
from engine.runs import cube

write_atomic, held = cube.write_atomic, sys.argv[1]


def holding(ds, path, before_rename=None):
    def hold():
        while path.name == held:
            time.sleep(3600)

    write_atomic(ds, path, before_rename=hold)


cube.write_atomic = holding
cli.main(sys.argv[2:])
"""


def held_argv(part: int, *argv: str) -> list[str]:
    """The command line of `liqstress *argv` held before part `part`'s file is in place."""
    return [sys.executable, "-c", _SCRIPT, f"part-{part:04d}.nc", *argv]
