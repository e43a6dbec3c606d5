"""Run directories: a sweep written part by part, resumable after a crash, and listed later.

```
runs/<UTC timestamp>_<config name>/
    config.toml      the fully resolved config with its sweep (what --resume reruns)
    manifest.json    run id, seed, sweep, versions, devices, git commit, timings, parts
    parts/part-NNNN.nc   one block of grid points each (one `engine.simulate` call)
    cube.nc          the combined cube (`engine.cube`)
    run.log          the progress lines of every session
```

Every file is written through a temporary name and `os.replace`, and a part counts only once
the manifest (itself replaced atomically) records it with its SHA-256. A crash at any moment
therefore loses at most the part in flight; `resume` deletes stray temporary files, checks the
recorded parts against their hashes and runs the rest. Points are simulated on common random
numbers and the statistics do not depend on the chunking, so a resumed run's cube equals an
uninterrupted one's.

A run holds an exclusive `flock` on `.lock` while it works, so two processes never write one
directory; `list_runs` uses the same lock to tell a live run from an interrupted one.

For fault-injection tests, `LIQSTRESS_HOLD_PART=<k>` makes the process stop (sleep) just
before part k's file is renamed into place, after the parts before it are recorded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import xarray as xr

from engine import cube as C
from engine.errors import ConfigError
from engine.simulate import simulate
from engine.sweep import Study, build_study

MANIFEST = "manifest.json"
CONFIG = "config.toml"
CUBE = "cube.nc"
LOG = "run.log"
LOCK = ".lock"
PARTS = "parts"
FORMAT = 1
PACKAGES = ("liqstress", "jax", "jaxlib", "numpy", "scipy", "xarray", "netCDF4", "pydantic")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def git_info() -> dict:
    """Commit and dirty flag of the source tree the package runs from (None outside git)."""
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def jax_info() -> dict:
    import jax

    return {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
    }


def source_string(manifest: dict) -> str:
    git = manifest["git"]
    commit = (
        "unknown commit" if not git["commit"] else git["commit"][:12] + ("-dirty" if git["dirty"] else "")
    )
    v = manifest["versions"]
    return f"liqstress {v['liqstress']} ({commit}); JAX {v['jax']} on {manifest['jax']['backend']}"


# --------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    """An open run directory: its path, validated study and manifest (a JSON-able dict)."""

    path: Path
    study: Study
    manifest: dict

    @property
    def cube_path(self) -> Path:
        return self.path / CUBE

    def save(self) -> None:
        write_text_atomic(self.path / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")

    def pending(self) -> list[dict]:
        return [p for p in self.manifest["parts"] if p["status"] != "done"]

    def log(self, line: str) -> None:
        with open(self.path / LOG, "a", encoding="utf-8") as f:
            f.write(f"{_iso(utc_now())} {line}\n")


def default_run_dir(root: Path, name: str) -> Path:
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    path, k = root / f"{stamp}_{name}", 2
    while path.exists():
        path, k = root / f"{stamp}_{name}_{k}", k + 1
    return path


def check_new_run_dir(path: Path) -> None:
    """Raise `ConfigError` unless `path` can become a new run directory (missing or empty)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--run-dir {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        hint = f"continue it with --resume {path}" if (path / MANIFEST).exists() else "choose a new directory"
        raise ConfigError(f"--run-dir {path}: exists and is not empty; {hint}")


def create_run(study: Study, path: Path, *, source: str, command: str) -> Run:
    """Make the run directory with its resolved config and a manifest of pending parts.

    Call only after validation: this is the first thing that writes to disk.
    """
    check_new_run_dir(path)
    try:
        (path / PARTS).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"--run-dir {path}: cannot create the run directory ({err.strerror or err})"
        ) from None
    text = study.resolved_toml()
    cfg = study.config
    manifest = {
        "format": FORMAT,
        "run_id": path.name,
        "config_name": cfg.name,
        "config_source": source,
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "command": command,
        "created": _iso(utc_now()),
        "seed": cfg.run.seed,
        "n_paths": cfg.run.n_paths,
        "steps": cfg.run.steps,
        "sweep": {
            "axes": [{"path": a.path, "name": a.name, "values": list(a.values)} for a in study.axes],
            "shape": list(study.shape),
            "n_points": len(study.points),
            "baseline": study.baseline,
            "baseline_label": study.label(study.baseline),
        },
        "versions": versions(),
        "jax": jax_info(),
        "git": git_info(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "status": "created",
        "error": None,
        "sessions": [],
        "timings": {"compute_s": 0.0, "elapsed_s": 0.0, "finished": None},
        "parts": [
            {"index": k, "points": pts, "file": f"{PARTS}/part-{k:04d}.nc", "status": "pending"}
            for k, pts in enumerate(study.parts())
        ],
        "cube": None,
    }
    write_text_atomic(path / CONFIG, text)
    run = Run(path, study, manifest)
    run.save()
    return run


def open_run(path: Path) -> Run:
    """An existing run directory for resuming, or `ConfigError` if it is not a resumable run."""
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such run directory")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        text = (path / CONFIG).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(
            f"--resume {path}: not a liqstress run directory (no {Path(err.filename).name})"
        ) from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume {path}: unreadable {MANIFEST} or {CONFIG} ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "parts" not in manifest:
        raise ConfigError(f"--resume {path}: {MANIFEST} is not a liqstress run manifest (format {FORMAT})")
    if hashlib.sha256(text.encode()).hexdigest() != manifest.get("config_sha256"):
        raise ConfigError(f"--resume {path}: {CONFIG} was changed after the run started; start a new run")
    try:
        study = build_study(tomllib.loads(text), source=str(path / CONFIG))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--resume {path}: {CONFIG} is not valid TOML ({err})") from None
    if [p["points"] for p in manifest["parts"]] != study.parts():
        raise ConfigError(f"--resume {path}: the manifest's parts do not match {CONFIG}")
    return Run(path, study, manifest)


@contextlib.contextmanager
def locked(run: Run) -> Iterator[None]:
    """Hold the run's exclusive lock, or raise `ConfigError` if another process holds it."""
    fd = os.open(run.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{run.path}: another process is running this run") from None
        yield
    finally:
        os.close(fd)


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path / LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Executing parts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Progress of a run: path-points (one path under one point) done of the total,
    grid points finished, and the part that just finished (None inside a part)."""

    work_done: int
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


def _hold(part: int) -> None:
    if os.environ.get("LIQSTRESS_HOLD_PART") == str(part):
        while True:
            time.sleep(3600)


def _verify_parts(run: Run) -> None:
    """Forget recorded parts whose file is missing or altered; delete stray temporary files."""
    parts_dir = run.path / PARTS
    parts_dir.mkdir(exist_ok=True)
    for tmp in parts_dir.glob(".*.tmp"):
        tmp.unlink()
    for p in run.manifest["parts"]:
        f = run.path / p["file"]
        if p["status"] == "done" and (not f.is_file() or _sha256(f) != p.get("sha256")):
            run.log(f"part {p['index']}: {p['file']} missing or altered; it will be recomputed")
            p["status"] = "pending"


def execute(run: Run, progress: Callable[[Event], None] | None = None) -> xr.Dataset:
    """Simulate the run's pending parts, then assemble and write `cube.nc`; return the cube.

    Marks the manifest `complete`, `failed` (with the error) or `interrupted` (Ctrl-C,
    SIGTERM turned into KeyboardInterrupt by the caller); parts already written are kept.
    """
    with locked(run):
        study, m = run.study, run.manifest
        _verify_parts(run)
        session = {"started": _iso(utc_now()), "pid": os.getpid(), "host": socket.gethostname()}
        m["sessions"].append(session)
        m.update(status="running", error=None, pid=os.getpid(), host=socket.gethostname())
        run.save()
        n_paths = study.config.run.n_paths
        parts = m["parts"]
        work = {p["index"]: len(_call_points(study, p["points"])[0]) * n_paths for p in parts}
        state = {
            "work": sum(work[p["index"]] for p in parts if p["status"] == "done"),
            "points": sum(len(p["points"]) for p in parts if p["status"] == "done"),
            "parts": sum(p["status"] == "done" for p in parts),
        }
        total = (sum(work.values()), len(study.points), len(parts))

        def report(extra: int = 0, finished: int | None = None) -> None:
            if progress:
                progress(
                    Event(
                        state["work"] + extra,
                        total[0],
                        state["points"],
                        total[1],
                        state["parts"],
                        total[2],
                        finished,
                    )
                )

        t_session = time.perf_counter()
        run.log(f"session start: {len(run.pending())} of {len(parts)} parts to run")
        try:
            report()
            for p in run.pending():
                t0 = time.perf_counter()
                idx, base = _call_points(study, p["points"])
                ds = simulate(
                    study.config,
                    [study.points[i] for i in idx],
                    baseline=base,
                    progress=lambda pr: report(pr.paths_done),
                )
                path = run.path / p["file"]
                hold = functools.partial(_hold, p["index"])
                C.write_atomic(C.part_dataset(study, ds, p["points"]), path, before_rename=hold)
                elapsed = time.perf_counter() - t0
                p.update(
                    status="done", sha256=_sha256(path), elapsed_s=round(elapsed, 3), finished=_iso(utc_now())
                )
                m["timings"]["compute_s"] = round(m["timings"]["compute_s"] + elapsed, 3)
                run.save()
                state["work"] += work[p["index"]]
                state["points"] += len(p["points"])
                state["parts"] += 1
                run.log(f"part {p['index']} done: points {p['points']} in {elapsed:.1f} s")
                report(finished=p["index"])
            cube = assemble(run)
            C.write_atomic(cube, run.cube_path)
            m.update(status="complete", cube=CUBE)
            run.log("cube written")
            return cube
        except KeyboardInterrupt:
            m.update(status="interrupted", error="interrupted by the user or a signal")
            run.log("interrupted")
            raise
        except BaseException as err:
            m.update(status="failed", error=f"{type(err).__name__}: {err}")
            run.log(f"failed: {type(err).__name__}: {err}")
            raise
        finally:
            session["finished"] = _iso(utc_now())
            m["timings"]["elapsed_s"] = round(m["timings"]["elapsed_s"] + time.perf_counter() - t_session, 3)
            m["timings"]["finished"] = session["finished"]
            run.save()


def assemble(run: Run) -> xr.Dataset:
    """The cube of a run whose parts are all done."""
    m = run.manifest
    parts = [C.read(run.path / p["file"]) for p in m["parts"]]
    history = "\n".join(
        f"{s['started']} liqstress run ({'resumed' if k else 'started'} by pid {s['pid']} on {s['host']})"
        for k, s in enumerate(m["sessions"])
    )
    attrs = {
        "history": f"{history}\n{m['command']}",
        "source": source_string(m),
        "run_id": m["run_id"],
        "jax_backend": m["jax"]["backend"],
    }
    return C.assemble(run.study, parts, attrs)


def load_cube(path: Path) -> xr.Dataset:
    """The cube of a run directory (or a cube file), loaded into memory."""
    path = Path(path)
    f = path / CUBE if path.is_dir() else path
    if not f.is_file():
        raise ConfigError(f"{path}: no {CUBE} (is the run complete? continue it with --resume)")
    return C.read(f)


# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    path: Path
    run_id: str
    config_name: str
    created: str
    n_points: int
    n_paths: int
    parts_done: int
    parts_total: int
    size_bytes: int
    status: str


def run_status(path: Path, manifest: dict) -> str:
    """The recorded status, with a `running` run whose process is gone shown as `interrupted`."""
    status = manifest.get("status", "unknown")
    if status in ("running", "created") and not _is_locked(path):
        return "interrupted"
    return status


def list_runs(root: Path) -> list[RunInfo]:
    """Run directories under `root` (those with a manifest), oldest first."""
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        try:
            m = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        parts = m.get("parts", [])
        out.append(
            RunInfo(
                d,
                m.get("run_id", d.name),
                m.get("config_name", "?"),
                m.get("created", "?"),
                m.get("sweep", {}).get("n_points", 0),
                m.get("n_paths", 0),
                sum(p.get("status") == "done" for p in parts),
                len(parts),
                size,
                run_status(d, m),
            )
        )
    return sorted(out, key=lambda r: r.created)
