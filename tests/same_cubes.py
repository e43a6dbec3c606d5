"""Whether a change left the numbers alone: the cubes of the shipped configs written by a git
revision and by the working tree, compared with `xarray.testing.assert_equal` (global attributes
aside: they name the commit and the time).

    python -m tests.same_cubes REV [--paths 256] [--config quick --config quick_ladder ...]

Each shipped config (`CONFIGS`) runs twice with `--paths` paths (the same seed), once with the package of REV (a
temporary `git worktree`, first on `PYTHONPATH`) and once with the working tree's, in fresh
processes on this machine: the same backend, dtype and kernel form, so a refactor that keeps the
arithmetic keeps every number bit for bit. Exit 0 when all are equal, 1 naming the configs
whose cubes differ (and the first variables that do). Not collected by pytest: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
# Every shipped scenario that `liqstress run` takes (the fits' configs are not runs), with the
# `--set` items of the run: together every kernel form (dense whole, dense general with accounts
# and collateral, and the ladder, forced: at a few hundred paths "auto" picks the dense one).
CONFIGS = {
    "quick": (),
    "quick_ladder": ("run.kernel=ladder",),
    "oct10_2025": (),
    "leverage_cap_sweep": (),
    "circuit_breaker_sweep": (),
    "adl_rules": (),
    "oct10_2025_collateral": (),
}


def run(case: str, paths: int, out: Path, pythonpath: str | None) -> Path:
    """The cube of `liqstress run CONFIG --paths N --set ...` of `case` (a key of `CONFIGS`)
    written under `out` by the package first on `pythonpath` (None: the working tree's)."""
    env = os.environ | ({"PYTHONPATH": pythonpath} if pythonpath else {})
    target = out / case
    config = case.removesuffix("_ladder")
    argv = [sys.executable, "-m", "engine", "run", config, "--paths", str(paths)]
    argv += ["--run-dir", str(target), "--no-progress", "--no-report"]
    argv += [x for item in CONFIGS[case] for x in ("--set", item)]
    subprocess.run(argv, cwd=out, env=env, check=True, capture_output=True, text=True)
    return target / "cube.nc"


def differences(a: Path, b: Path) -> list[str]:
    """Names of the variables (and coordinates) whose values differ between two cubes."""
    x, y = xr.open_dataset(a), xr.open_dataset(b)
    names = sorted(set(x.variables) | set(y.variables))
    return [n for n in names if n not in x or n not in y or not x[n].equals(y[n])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="git revision to compare the working tree with")
    ap.add_argument("--paths", type=int, default=256)
    ap.add_argument("--config", action="append", choices=list(CONFIGS), help="repeatable; default: all")
    args = ap.parse_args(argv)
    configs = args.config or list(CONFIGS)
    with tempfile.TemporaryDirectory(prefix="same-cubes-") as tmp:
        tmp = Path(tmp)
        tree = tmp / "rev"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(tree), args.rev], cwd=ROOT, check=True
        )
        try:
            failed = []
            for c in configs:
                (tmp / "a").mkdir(exist_ok=True)
                (tmp / "b").mkdir(exist_ok=True)
                before = run(c, args.paths, tmp / "a", str(tree))
                after = run(c, args.paths, tmp / "b", None)
                diff = differences(before, after)
                print(f"{c}: {'equal' if not diff else 'DIFFERENT: ' + ', '.join(diff[:8])}", flush=True)
                if diff:
                    failed.append(c)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
