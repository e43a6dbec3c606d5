"""Policy grids too large for one job: run slices of the grid separately, then combine.

`run_shard(config, points, run_dir, "i/n")` simulates slice i (0-based) of n contiguous slices
of `points` and writes `run_dir/parts/shard-i-of-n.nc`; the shard that finds every part
present assembles `run_dir/cube.nc` (or call `combine(run_dir)` afterwards). Every shard also
simulates the baseline point (on the same paths: common random numbers) so that its paired
differences are exact; the combined cube equals the cube of a single run over all points.

As a SLURM job array (one task per slice, any number of slices):

    #SBATCH --array=0-15
    liqstress run sweep.toml --out runs/sweep --shard ${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}

and, if the last task may have failed, `liqstress combine runs/sweep` once they are all done.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from engine.config import Config
from engine.errors import SimulationError
from engine.simulate import Progress, simulate

PARTS = "parts"
CUBE = "cube.nc"


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n), 0 <= i < n."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise SimulationError(f"--shard must look like i/n (e.g. 0/8), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise SimulationError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def shard_points(n_points: int, i: int, n: int) -> list[int]:
    """Indices of the points in slice i of n (contiguous, sizes differ by at most one)."""
    return [int(j) for j in np.array_split(np.arange(n_points), n)[i]]


def part_path(run_dir: str | Path, i: int, n: int) -> Path:
    return Path(run_dir) / PARTS / f"shard-{i:04d}-of-{n:04d}.nc"


def _write_atomically(ds: xr.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ds.to_netcdf(tmp)
    os.replace(tmp, path)


def run_shard(
    config: Config | dict,
    points: Sequence[Config | dict],
    run_dir: str | Path,
    shard: str | tuple[int, int],
    *,
    baseline: int = 0,
    progress: Callable[[Progress], None] | None = None,
) -> Path | None:
    """Simulate slice `shard` of `points` into `run_dir`; returns the cube's path when this
    shard completed the set (and assembled `cube.nc`), else None.

    Under `engine.distributed` every process must call this; process 0 writes.
    """
    from engine.distributed import is_writer

    i, n = parse_shard(shard) if isinstance(shard, str) else shard
    if not 0 <= baseline < len(points):
        raise SimulationError(f"baseline must index a point (0..{len(points) - 1}), got {baseline}")
    mine = shard_points(len(points), i, n)
    if not mine:
        raise SimulationError(f"shard {i}/{n} has no points: the grid has only {len(points)}")
    extra = baseline not in mine
    run = ([baseline] if extra else []) + mine
    ds = simulate(config, [points[j] for j in run], baseline=run.index(baseline), progress=progress)
    ds = ds.assign_coords(point=np.asarray(run))
    if extra:
        ds = ds.isel(point=slice(1, None))
    ds.attrs.update({"shard_index": i, "shard_count": n, "n_points": len(points), "baseline": baseline})
    if not is_writer():
        return None
    _write_atomically(ds, part_path(run_dir, i, n))
    if all(part_path(run_dir, k, n).exists() for k in range(n)):
        return combine(run_dir)
    return None


def combine(run_dir: str | Path) -> Path:
    """Assemble `run_dir/parts/shard-*.nc` into `run_dir/cube.nc` (checks the set is complete)."""
    run_dir = Path(run_dir)
    files = sorted((run_dir / PARTS).glob("shard-*-of-*.nc"))
    if not files:
        raise SimulationError(f"{run_dir / PARTS}: no shard parts to combine")
    parts = []
    for f in files:
        with xr.open_dataset(f) as d:
            parts.append(d.load())
    counts = {int(p.attrs["shard_count"]) for p in parts}
    if len(counts) != 1:
        raise SimulationError(f"{run_dir}: parts come from different splits (shard counts {sorted(counts)})")
    n = counts.pop()
    have = {int(p.attrs["shard_index"]) for p in parts}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise SimulationError(f"{run_dir}: shards {missing} of {n} are missing; run them, then combine again")
    cube = xr.concat(sorted(parts, key=lambda p: int(p.attrs["shard_index"])), dim="point")
    n_points = int(parts[0].attrs["n_points"])
    if not np.array_equal(cube.point.values, np.arange(n_points)):
        raise SimulationError(f"{run_dir}: parts do not cover points 0..{n_points - 1} exactly once")
    for key in ("shard_index", "shard_count"):
        cube.attrs.pop(key, None)
    out = run_dir / CUBE
    _write_atomically(cube, out)
    return out
