"""Commands that never simulate answer without loading JAX, xarray, matplotlib or SciPy's
statistics (seconds of imports): checked by the modules a fresh process has loaded, not timed."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("jax", "xarray", "matplotlib", "scipy.stats")
# Runs the command in a fresh interpreter, then prints the heavy modules it actually loaded
# (a lazily imported module that was never touched does not count).
PROBE = """
import sys
from engine.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert e.code in (0, None), e.code
loaded = [m for m in {heavy!r} if m in sys.modules and type(sys.modules[m]).__name__ != "_LazyModule"]
print("LOADED", ",".join(loaded))
"""


@pytest.mark.parametrize(
    "args", [["--version"], ["list"], ["validate", "quick"], ["validate", "leverage_cap_sweep"], ["events"]]
)
def test_commands_that_never_simulate_load_no_heavy_module(tmp_path, args):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "LOADED ", done.stdout
