"""Command-line interface (a thin shell over the Python API)."""

from __future__ import annotations

import sys

from engine.configfile import load_config
from engine.errors import ConfigError, SimulationError
from engine.simulate import simulate
from engine.summary import summary_table


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(args[0] if args else None)
        ds = simulate(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except SimulationError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(summary_table(ds))
