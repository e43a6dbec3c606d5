"""Executing a run directory: its parts simulated one by one in sessions, resumable after a
crash, then assembled into `cube.nc`.

A crash at any moment loses at most the part in flight and the time since the last part
(`timings.elapsed_s`); a resume first deletes stray temporary files (their space may be what a
full disk lacks), checks the recorded parts against their hashes, runs the rest, and rebuilds
a missing or damaged cube from the parts. Points are simulated on common random numbers and the
statistics do not depend on the chunking, so a resumed run's cube equals an uninterrupted one's.
The manifest's `report` (`pending`, `done`) lets a resume finish an interrupted report.

A sweep too large for one job is split into shards (`execute(run, shard=(i, n))`): shard i runs
the parts with `index % n == i`, all shards writing into one directory, and whichever finds
every part done assembles `cube.nc` (or `combine` afterwards).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from engine.config.errors import ConfigError
from engine.config.sweep import Study
from engine.model.outputs import OUTPUTS
from engine.runs import cube as C
from engine.runs.provenance import changed_input, sha256_file, source_string
from engine.runs.rundir import (
    CONFIG,
    CUBE,
    LOCK,
    MANIFEST,
    MANIFEST_LOCK,
    PARTS,
    RunDir,
    flock,
    iso,
    locked,
    utc_now,
)
from engine.sim.distributed import Leader


@dataclass(frozen=True)
class RunProgress:
    """Progress of a run: path-points (paths x points: one path under one point) done of the
    total, a chunk in progress counted by the share of its steps done (`ChunkProgress`), grid
    points finished, and the part that just finished (None inside a part)."""

    work_done: float
    work_total: int
    points_done: int
    points_total: int
    parts_done: int
    parts_total: int
    part_finished: int | None = None


def _call_points(study: Study, points: list[int]) -> tuple[list[int], int]:
    """Grid indices to simulate for a part (the baseline appended if absent), baseline slot."""
    if study.baseline in points:
        return points, points.index(study.baseline)
    return points + [study.baseline], len(points)


def _remove_temporaries(run: RunDir, indices: Sequence[int]) -> None:
    """Delete the temporary files killed processes left: those of parts `indices` (this session
    owns them), of `cube.nc` (nobody writes it while this process holds `.lock`, shared or
    exclusive, as the caller does) and of the manifest and config (their writers hold
    `.manifest.lock`). Call it before the session's first manifest write: on a full disk the
    space they hold may be what that write needs."""
    parts_dir = run.path / PARTS
    parts_dir.mkdir(exist_ok=True)
    for k in indices:
        _unlink_all(parts_dir.glob(f".{Path(run.manifest['parts'][k]['file']).name}.*.tmp"))
    _unlink_all(run.path.glob(f".{CUBE}.*.tmp"))
    with flock(run.path / MANIFEST_LOCK, fcntl.LOCK_EX):
        for name in (MANIFEST, CONFIG):
            _unlink_all(run.path.glob(f".{name}.*.tmp"))


def _unlink_all(files: Iterator[Path]) -> None:
    for f in files:
        f.unlink(missing_ok=True)


def _check_parts(run: RunDir, indices: Sequence[int]) -> list[int]:
    """Those of parts `indices` that are not done, after forgetting recorded parts whose file
    is missing or altered (not the SHA-256 the manifest records)."""
    parts = run.reload()["parts"]
    altered = [
        k
        for k in indices
        if parts[k]["status"] == "done"
        and (not (f := run.path / parts[k]["file"]).is_file() or sha256_file(f) != parts[k].get("sha256"))
    ]
    if altered:
        with run.editing() as m:
            for k in altered:
                m["parts"][k]["status"] = "pending"
                run.log(f"part {k}: {parts[k]['file']} missing or altered; it will be recomputed")
    return [k for k in indices if run.manifest["parts"][k]["status"] != "done"]


def _missing(run: RunDir) -> list[int]:
    """Parts the manifest on disk does not record as done (hashes not checked)."""
    return [p["index"] for p in run.reload()["parts"] if p["status"] != "done"]


@contextlib.contextmanager
def _session(run: RunDir, shard: tuple[int, int] | None) -> Iterator[Callable[[dict], None]]:
    """Record a working session in the manifest, and a failure or interruption inside it as the
    run's status (finished parts are kept). A shard also records, or must match, the count n.

    Yields `checkpoint(m)`, which brings the session's `elapsed_s` and the run's total in
    manifest `m` (inside `run.editing()`) up to now: a killed session counts up to its last
    checkpoint."""
    t0 = time.perf_counter()
    label = f"shard {shard[0]}/{shard[1]}: " if shard else ""
    who = {"pid": os.getpid(), "host": socket.gethostname()}
    with run.editing() as m:
        if shard:
            if m.get("shards") not in (None, shard[1]):
                raise ConfigError(
                    f"{run.path}: the run is split into {m['shards']} shards "
                    f"(--shard i/{m['shards']}), got --shard {shard[0]}/{shard[1]}"
                )
            m["shards"] = shard[1]
        k = len(m["sessions"])
        m["sessions"].append(
            {"started": iso(utc_now()), "elapsed_s": 0.0, **who} | ({"shard": label[6:-2]} if shard else {})
        )
        m.update(status="running", error=None, **who)

    def checkpoint(m: dict) -> None:
        session, t = m["sessions"][k], m["timings"]
        now = round(time.perf_counter() - t0, 3)
        t["elapsed_s"] = round(t["elapsed_s"] + now - session.get("elapsed_s", 0.0), 3)
        session["elapsed_s"] = now

    outcome = {}
    try:
        yield checkpoint
    except KeyboardInterrupt:
        outcome = {"status": "interrupted", "error": f"{label}interrupted by the user or a signal"}
        run.log(f"{label}interrupted")
        raise
    except BaseException as err:
        outcome = {"status": "failed", "error": f"{label}{type(err).__name__}: {err}"}
        run.log(f"{label}failed: {type(err).__name__}: {err}")
        raise
    finally:
        finished = iso(utc_now())
        with run.editing() as m:
            m["sessions"][k]["finished"] = finished
            m["timings"]["finished"] = finished
            checkpoint(m)
            m.update(outcome)


def _run_parts(
    run: RunDir,
    indices: Sequence[int],
    progress: Callable[[RunProgress], None] | None,
    label: str,
    leader: Leader,
    checkpoint: Callable[[dict], None],
) -> None:
    """Simulate those of parts `indices` not done yet, recording each in the manifest (and the
    session's time, `checkpoint`) as soon as its file is in place. Progress counts only these
    parts."""
    study = run.study
    parts = [run.manifest["parts"][k] for k in indices]
    n_paths = study.config.run.n_paths
    work = {p["index"]: len(_call_points(study, p["points"])[0]) * n_paths for p in parts}
    done = [p for p in parts if p["status"] == "done"]
    state = {
        "work": sum(work[p["index"]] for p in done),
        "points": sum(len(p["points"]) for p in done),
        "parts": len(done),
    }
    total = (sum(work.values()), sum(len(p["points"]) for p in parts), len(parts))

    def report(extra: float = 0, finished: int | None = None) -> None:
        if progress:
            progress(
                RunProgress(
                    state["work"] + extra,
                    total[0],
                    state["points"],
                    total[1],
                    state["parts"],
                    total[2],
                    finished,
                )
            )

    todo = [p for p in parts if p["status"] != "done"]
    run.log(f"{label}session start: {len(todo)} of {len(parts)} parts to run")
    report()
    for p in todo:
        t0 = time.perf_counter()
        idx, base = _call_points(study, p["points"])
        ds = leader.simulate(
            study.config,
            [study.points[i] for i in idx],
            base,
            progress=lambda pr: report(pr.paths_done),
        )
        if why := changed_input(run.manifest.get("inputs", {})):  # edited while this session ran
            raise ConfigError(f"part {p['index']} not written: {why}")
        path = run.path / p["file"]
        C.write_atomic(C.part_dataset(study, ds, p["points"]), path)
        elapsed = time.perf_counter() - t0
        sha = sha256_file(path)
        with run.editing() as m:
            m["parts"][p["index"]].update(
                status="done", sha256=sha, elapsed_s=round(elapsed, 3), finished=iso(utc_now())
            )
            m["timings"]["compute_s"] = round(m["timings"]["compute_s"] + elapsed, 3)
            checkpoint(m)
        state["work"] += work[p["index"]]
        state["points"] += len(p["points"])
        state["parts"] += 1
        run.log(f"{label}part {p['index']} done: points {p['points']} in {elapsed:.1f} s")
        report(finished=p["index"])


def _write_cube(run: RunDir, report: bool) -> xr.Dataset:
    """Assemble and write `cube.nc` and mark the run complete (the caller holds `.lock`); with
    `report`, its report `pending` in the same write, so that an interrupt before the report is
    written leaves a run whose resume writes it."""
    n = len(run.manifest["parts"])
    missing = _check_parts(run, range(n))
    if missing:
        raise ConfigError(_missing_message(run, missing))
    rebuilt = run.manifest.get("cube") is not None
    cube = assemble(run)
    C.write_atomic(cube, run.cube_path)
    sha = sha256_file(run.cube_path)
    with run.editing() as m:
        m.update(
            status="complete",
            error=None,
            cube=CUBE,
            cube_sha256=sha,
            **({"report": "pending"} if report else {}),
        )
    run.log("cube rebuilt from the parts (it was missing or damaged)" if rebuilt else "cube written")
    return cube


def cube_intact(run: RunDir) -> bool:
    """Whether `cube.nc` is there with the SHA-256 the manifest records. A run that recorded
    none (written by an older version) counts as damaged: rebuilding is cheap and records one."""
    sha = run.manifest.get("cube_sha256")
    return sha is not None and run.cube_path.is_file() and sha256_file(run.cube_path) == sha


def _missing_message(run: RunDir, missing: list[int]) -> str:
    n = run.manifest.get("shards")
    owners = f" (they belong to shards {sorted({k % n for k in missing})} of {n})" if n else ""
    return (
        f"{run.path}: parts {missing} of {len(run.manifest['parts'])} are not done{owners}; "
        f"run them again (or all that are left with `liqstress run --resume {run.path}`), then combine"
    )


def execute(
    run: RunDir,
    progress: Callable[[RunProgress], None] | None = None,
    shard: tuple[int, int] | None = None,
    leader: Leader | None = None,
    report: bool = False,
) -> xr.Dataset | None:
    """Simulate the run's pending parts, then assemble and write `cube.nc`; return the cube.
    `report`: a report of the cube will be written (the manifest records it `pending` until then).

    `shard=(i, n)` simulates only the parts with `index % n == i`, alongside the other shards,
    and assembles the cube only if every part is done by then (else returns None). Marks the
    manifest `complete`, `failed` (with the error) or `interrupted` (Ctrl-C, SIGTERM turned into
    KeyboardInterrupt by the caller); parts already written are kept. In a multi-process run
    only process 0 calls this, with its `leader` (see `Leader`).
    """
    leader = leader or Leader()
    n_parts = len(run.manifest["parts"])
    if shard is None:
        with locked(run):
            _remove_temporaries(run, range(n_parts))
            with _session(run, None) as checkpoint:
                _check_parts(run, range(n_parts))
                _run_parts(run, range(n_parts), progress, "", leader, checkpoint)
                return _write_cube(run, report)
    i, n = shard
    mine = range(i, n_parts, n)
    # Shared `.lock` waits (holding no other lock) for an unsharded session or a `combine` to
    # end, and for `list_runs`'s probe, rather than failing the job.
    with (
        flock(run.path / LOCK, fcntl.LOCK_SH),
        flock(
            run.path / f".shard-{i:04d}.lock", fcntl.LOCK_EX, f"{run.path}: shard {i}/{n} is already running"
        ),
    ):
        _remove_temporaries(run, mine)
        with _session(run, shard) as checkpoint:
            if not mine:
                run.log(f"shard {i}/{n}: no parts (the run has {n_parts})")
            _check_parts(run, mine)
            _run_parts(run, mine, progress, f"shard {i}/{n}: ", leader, checkpoint)
    return combine(run, report) if not _missing(run) else None


def combine(run: RunDir, report: bool = False) -> xr.Dataset | None:
    """Assemble and write `cube.nc` of a run whose parts are all done (checked against their
    hashes) and mark it complete; return the cube, or None if the run was complete already with
    its cube intact (`cube_intact`; else the cube is rebuilt). `ConfigError` naming the parts
    not done otherwise."""
    missing = _missing(run)
    if missing:
        raise ConfigError(_missing_message(run, missing))
    # waits only for shards finishing their bookkeeping: their parts are all done
    with flock(run.path / LOCK, fcntl.LOCK_EX):
        _remove_temporaries(run, range(len(run.manifest["parts"])))
        if run.reload()["status"] == "complete" and cube_intact(run):
            return None
        return _write_cube(run, report)


def assemble(run: RunDir) -> xr.Dataset:
    """The cube of a run whose parts are all done."""
    m = run.manifest
    parts = [C.read(run.path / p["file"]) for p in m["parts"]]
    history = "\n".join(
        f"{s['started']} liqstress run ("
        + (f"shard {s['shard']}" if "shard" in s else "resumed" if k else "started")
        + f" by pid {s['pid']} on {s['host']})"
        for k, s in enumerate(m["sessions"])
    )
    attrs = {
        "history": f"{history}\n{m['command']}",
        "source": source_string(m),
        "run_id": m["run_id"],
        "jax_backend": m["jax"]["backend"],
    }
    if run.study.warnings:  # levers that cannot change anything, an odd book: the report repeats them
        attrs["warnings"] = "\n".join(run.study.warnings)
    return C.assemble(run.study, parts, attrs)


# What `compare` and the report need of a cube besides the outputs' variables.
CUBE_ATTRS = ("n_paths", "seed", "sweep_dims")


def load_cube(path: Path) -> xr.Dataset:
    """The cube of a run directory (or a cube file), loaded into memory; `ConfigError` naming
    the file if it is missing, unreadable (not netCDF, truncated) or not a liqstress cube."""
    path = Path(path)
    f = path / CUBE if path.is_dir() else path
    if not f.is_file():
        raise ConfigError(f"{path}: no {CUBE} (is the run complete? continue it with --resume)")
    try:
        cube = C.read(f)
    except (OSError, RuntimeError, ValueError) as err:  # what netCDF4 and HDF5 raise for bad files
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        rebuild = (
            "; a run directory's cube is rebuilt from its parts by `liqstress run --resume DIR` or "
            "`liqstress combine DIR`"
            if f.name == CUBE
            else ""
        )
        raise ConfigError(
            f"{f}: cannot read it as netCDF: not a netCDF file, or damaged ({why}){rebuild}"
        ) from None
    missing = [f"attribute {a}" for a in CUBE_ATTRS if a not in cube.attrs]
    missing += [f"variable {o.name}" for o in OUTPUTS if o.name not in cube.data_vars]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ConfigError(f"{f}: not a liqstress cube (written by `liqstress run`): no {shown}")
    return cube
