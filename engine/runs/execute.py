"""Run directories: a sweep written part by part, resumable after a crash, and listed later.

```
runs/<UTC timestamp>_<config name>/
    config.toml      the fully resolved config with its sweep (what --resume reruns)
    manifest.json    run id, seed, sweep, versions, devices, git commit, timings, parts
    parts/part-NNNN.nc   one block of grid points each (one `engine.simulate` call)
    cube.nc          the combined cube (`engine.cube`)
    run.log          the progress lines of every session
```

A new directory is built complete under a hidden temporary name and renamed into place, so of
two runs started in one directory exactly one gets it and the other writes nothing. Every file
is written through a temporary name and `os.replace`, and a part counts only once the manifest
records it with its SHA-256 (the cube too). A crash at any moment therefore loses at most the
part in flight and the time since the last part (`timings.elapsed_s`); `resume` first deletes
stray temporary files (their space may be what a full disk lacks), checks the recorded parts
against their hashes, runs the rest, and rebuilds a missing or damaged cube from the parts.
Points are simulated on common random numbers and the statistics do not depend on the
chunking, so a resumed run's cube equals an uninterrupted one's. The manifest's `report`
(`pending`, `done`) lets the CLI's `--resume` finish an interrupted report.

A sweep too large for one job is split into shards (`execute(run, shard=(i, n))`): shard i runs
the parts with `index % n == i`, all shards writing into one directory (`join_run` creates it
race-free), and whichever finds every part done assembles `cube.nc` (or `combine` afterwards).
Locks (`flock`; on a cluster the filesystem must support it) keep concurrent processes apart:

- `.lock`: an unsharded session holds it exclusively throughout (failing at once if it is
  taken); a shard holds it shared while it simulates (waiting for it), and `combine`
  exclusively while it assembles. `list_runs` probes it to tell a live run from an
  interrupted one.
- `.shard-IIII.lock`: held by shard i, so the same shard never runs twice at once.
- `.manifest.lock`: held briefly around every read-modify-write of the manifest (re-read from
  disk inside), so concurrent shards never lose each other's updates.

In a multi-process run (`engine.distributed`) process 0 alone touches the run directory and
the others only simulate what it sends them (`Leader`, `follow`), so they need no shared
filesystem and cannot race it.

For fault-injection tests, `LIQSTRESS_HOLD_PART=<k>` makes the process stop (sleep) just
before part k's file is renamed into place, after the parts before it are recorded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import xarray as xr
from pydantic import BaseModel, ValidationError

from engine.config.errors import ConfigError, describe
from engine.config.schema import Config
from engine.config.sweep import Study, build_study
from engine.model.outputs import OUTPUTS
from engine.runs import cube as C
from engine.sim import distributed
from engine.sim.simulate import simulate

MANIFEST = "manifest.json"
CONFIG = "config.toml"
CUBE = "cube.nc"
LOG = "run.log"
LOCK = ".lock"
MANIFEST_LOCK = ".manifest.lock"
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
    """Write through `.NAME.PID.tmp` and rename; a failed write (a full disk) removes the
    temporary file before anything else runs."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def git_info() -> dict:
    """Commit and dirty flag of the source tree the package runs from (None outside git)."""
    src = Path(__file__).resolve().parents[2]  # the checkout holding engine/
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
# The manifest's shape: what the code reads from it (other keys are kept as they are)
# --------------------------------------------------------------------------------------


class _Part(BaseModel):
    index: int
    points: list[int]
    file: str
    status: str


class _Session(BaseModel):
    started: str
    pid: int
    host: str


class _Timings(BaseModel):
    compute_s: float
    elapsed_s: float


class _Sweep(BaseModel):
    n_points: int


class _Git(BaseModel):
    commit: str | None
    dirty: bool | None


class _Versions(BaseModel):
    liqstress: str | None
    jax: str | None


class _Jax(BaseModel):
    backend: str


class _Manifest(BaseModel):
    """Checked when a run is opened or listed, so that a hand-edited manifest gets a message
    naming the key rather than a `KeyError` halfway through a resume."""

    format: Literal[1]  # FORMAT
    run_id: str
    config_name: str
    config_sha256: str
    command: str
    created: str
    status: str
    n_paths: int
    sweep: _Sweep
    versions: _Versions
    jax: _Jax
    git: _Git
    shards: int | None
    sessions: list[_Session]
    timings: _Timings
    parts: list[_Part]


class ManifestError(ValueError):
    """A `manifest.json` that is unreadable, not JSON, or not shaped like a run manifest."""


def read_manifest(path: Path) -> dict:
    """The manifest of run directory `path` as a dict, checked against the shape the code reads
    (`ManifestError` naming each missing or bad key otherwise; `FileNotFoundError` if absent)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise ManifestError(f"{MANIFEST} is unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{MANIFEST} is not a liqstress run manifest (format {FORMAT})")
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as err:
        raise ManifestError(f"{MANIFEST} is damaged: {describe(err).replace(chr(10), '; ')}") from None
    for k, part in enumerate(manifest["parts"]):
        if part["index"] != k or part["file"] != _part_file(k):
            raise ManifestError(f"{MANIFEST} is damaged: parts.{k} must have index {k}, file {_part_file(k)}")
    return manifest


def _part_file(k: int) -> str:
    return f"{PARTS}/part-{k:04d}.nc"


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

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict]:
        """The manifest re-read from disk under `.manifest.lock`, saved on leaving the block:
        concurrent shards each change what they own and never lose each other's updates."""
        with _flock(self.path / MANIFEST_LOCK, fcntl.LOCK_EX):
            yield self.reload()
            self.save()

    def mark(self, **fields) -> None:
        """Set top-level manifest fields (`report="pending"`, ...) under `.manifest.lock`."""
        with self.editing() as m:
            m.update(fields)

    def reload(self) -> dict:
        """The manifest as on disk now (other processes may have changed it)."""
        self.manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        return self.manifest

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
    if path.is_dir() and any(f.name != MANIFEST_LOCK for f in path.iterdir()):
        hint = f"continue it with --resume {path}" if (path / MANIFEST).exists() else "choose a new directory"
        raise ConfigError(f"--run-dir {path}: exists and is not empty; {hint}")


def create_run(study: Study, path: Path, *, source: str, command: str) -> Run:
    """Make the run directory with its resolved config and a manifest of pending parts.

    Call only after validation: this is the first thing that writes to disk. The directory is
    built complete under a temporary sibling name and renamed into place, which succeeds only
    onto a missing or empty directory, so of two processes starting runs in the same new
    `--run-dir` the loser gets `ConfigError` and leaves nothing behind.
    """
    check_new_run_dir(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.new"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        raise ConfigError(
            f"--run-dir {path}: cannot create the run directory ({err.strerror or err})"
        ) from None
    run = Run(tmp, study, _new_manifest(study, path.name, source=source, command=command))
    try:
        _write_new(run)
        _claim(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run.path = path
    return run


def _claim(tmp: Path, path: Path) -> None:
    """Rename the complete new run directory `tmp` to `path`: atomic, and refused (`ConfigError`)
    if `path` has become a non-empty directory or a file since it was checked."""
    try:
        os.rename(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise ConfigError(
                f"--run-dir {path}: another process wrote there while this run was being created "
                "(two runs started in one directory?); choose a new directory"
            ) from None
        raise ConfigError(
            f"--run-dir {path}: cannot create the run directory ({err.strerror or err})"
        ) from None


def _new_manifest(study: Study, run_id: str, *, source: str, command: str) -> dict:
    """The manifest of a new run: every part pending."""
    cfg = study.config
    return {
        "format": FORMAT,
        "run_id": run_id,
        "config_name": cfg.name,
        "config_source": source,
        "config_sha256": hashlib.sha256(study.resolved_toml().encode()).hexdigest(),
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
        "shards": None,
        "sessions": [],
        "timings": {"compute_s": 0.0, "elapsed_s": 0.0, "finished": None},
        "parts": [
            {"index": k, "points": pts, "file": _part_file(k), "status": "pending"}
            for k, pts in enumerate(study.parts())
        ],
        "cube": None,
    }


def _write_new(run: Run) -> None:
    """Write a new run's `parts/`, config and manifest into its (existing, empty) directory."""
    (run.path / PARTS).mkdir()
    write_text_atomic(run.path / CONFIG, run.study.resolved_toml())
    run.save()


def open_run(path: Path, flag: str = "--resume") -> Run:
    """An existing run directory for resuming, or `ConfigError` (its text starting with `flag`,
    the option that named the directory) if it is not a resumable run."""
    if not path.is_dir():
        raise ConfigError(f"{flag} {path}: no such run directory")
    try:
        manifest = read_manifest(path)
        text = (path / CONFIG).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(
            f"{flag} {path}: not a liqstress run directory (no {Path(err.filename).name})"
        ) from None
    except ManifestError as err:
        raise ConfigError(f"{flag} {path}: {err}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{flag} {path}: unreadable {CONFIG} ({err})") from None
    if hashlib.sha256(text.encode()).hexdigest() != manifest.get("config_sha256"):
        raise ConfigError(f"{flag} {path}: {CONFIG} was changed after the run started; start a new run")
    try:
        study = build_study(tomllib.loads(text), source=str(path / CONFIG))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{flag} {path}: {CONFIG} is not valid TOML ({err})") from None
    if [p["points"] for p in manifest["parts"]] != study.parts():
        raise ConfigError(f"{flag} {path}: the manifest's parts do not match {CONFIG}")
    return Run(path, study, manifest)


def join_run(study: Study, path: Path, *, source: str, command: str) -> Run:
    """The run directory that the shards of one sweep share: created by the first shard to get
    here, opened by the others, which must bring the same resolved config (else `ConfigError`).

    Shards of a job array start together, so the check and the creation happen under
    `.manifest.lock` inside the directory.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--run-dir {path}: exists and is not a directory") from None
    except OSError as err:
        raise ConfigError(
            f"--run-dir {path}: cannot create the run directory ({err.strerror or err})"
        ) from None
    with _flock(path / MANIFEST_LOCK, fcntl.LOCK_EX):
        if not (path / MANIFEST).exists():
            check_new_run_dir(path)
            run = Run(path, study, _new_manifest(study, path.name, source=source, command=command))
            _write_new(run)
            return run
        run = open_run(path, flag="--run-dir")
    if run.manifest["config_sha256"] != hashlib.sha256(study.resolved_toml().encode()).hexdigest():
        raise ConfigError(
            f"--run-dir {path}: holds a run of a different config; every shard needs the same "
            f"CONFIG, --set, --paths and --seed (the run's own is {path / CONFIG})"
        )
    return run


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n) with 0 <= i < n, or `ConfigError` naming `--shard`."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/8), got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


@contextlib.contextmanager
def _flock(path: Path, mode: int, busy: str | None = None) -> Iterator[None]:
    """Hold an `flock` (`mode`: LOCK_EX or LOCK_SH) on `path`, creating the file. Waits for it,
    or with `busy` raises `ConfigError(busy)` at once if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, mode | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise ConfigError(busy) from None
        yield
    finally:
        os.close(fd)


def locked(run: Run) -> contextlib.AbstractContextManager[None]:
    """Hold the run's exclusive lock, or raise `ConfigError` if another process holds it."""
    return _flock(run.path / LOCK, fcntl.LOCK_EX, f"{run.path}: another process is running this run")


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


class Leader:
    """Process 0's side of a multi-process run; with one process it only calls `simulate`.

    Every process must make the same collective calls (`simulate` gathers each chunk) in the
    same order, yet only process 0 knows what the run directory holds: whether it could be
    created or locked, which parts are done. So process 0 decides everything and the others
    `follow`: before each `simulate` call it broadcasts the call (base config, points,
    baseline; JSON), and at the end its exit code, which they return. The others thus never
    read or write the directory and a resume skips the same parts on every process. If process
    0 fails inside `simulate`, it sends nothing more: the others fail in the same collective.

    Process 0 passes its leader to `execute` and calls `release` (also after a failure).
    """

    def __init__(self) -> None:
        self._listening = distributed.joined()  # the others wait in `follow` for a message
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
        one of its collectives and cannot be told anything more (see `cli`'s exit)."""
        return self._inside

    def release(self, code: int) -> None:
        """Let the other processes end with exit code `code` (`follow` returns it), unless they
        are `stranded` in a failed simulation."""
        if not self._inside:
            self._tell({"exit": code})
        self._listening = False

    def _tell(self, message: dict) -> None:
        if self._listening:
            distributed.broadcast_json(message)


def follow(progress: Callable | None = None) -> int:
    """A process other than 0 in a multi-process run (see `Leader`): simulate each call process
    0 sends (with `progress`, called after each chunk), write nothing, and return process 0's
    exit code once it sends that."""
    while "exit" not in (message := distributed.broadcast_json()):
        simulate(message["config"], message["points"], baseline=message["baseline"], progress=progress)
    return message["exit"]


def _remove_temporaries(run: Run, indices: Sequence[int]) -> None:
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
    with _flock(run.path / MANIFEST_LOCK, fcntl.LOCK_EX):
        for name in (MANIFEST, CONFIG):
            _unlink_all(run.path.glob(f".{name}.*.tmp"))


def _unlink_all(files: Iterator[Path]) -> None:
    for f in files:
        f.unlink(missing_ok=True)


def _check_parts(run: Run, indices: Sequence[int]) -> list[int]:
    """Those of parts `indices` that are not done, after forgetting recorded parts whose file
    is missing or altered (not the SHA-256 the manifest records)."""
    parts = run.reload()["parts"]
    altered = [
        k
        for k in indices
        if parts[k]["status"] == "done"
        and (not (f := run.path / parts[k]["file"]).is_file() or _sha256(f) != parts[k].get("sha256"))
    ]
    if altered:
        with run.editing() as m:
            for k in altered:
                m["parts"][k]["status"] = "pending"
                run.log(f"part {k}: {parts[k]['file']} missing or altered; it will be recomputed")
    return [k for k in indices if run.manifest["parts"][k]["status"] != "done"]


def _missing(run: Run) -> list[int]:
    """Parts the manifest on disk does not record as done (hashes not checked)."""
    return [p["index"] for p in run.reload()["parts"] if p["status"] != "done"]


@contextlib.contextmanager
def _session(run: Run, shard: tuple[int, int] | None) -> Iterator[Callable[[dict], None]]:
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
            {"started": _iso(utc_now()), "elapsed_s": 0.0, **who} | ({"shard": label[6:-2]} if shard else {})
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
        finished = _iso(utc_now())
        with run.editing() as m:
            m["sessions"][k]["finished"] = finished
            m["timings"]["finished"] = finished
            checkpoint(m)
            m.update(outcome)


def _run_parts(
    run: Run,
    indices: Sequence[int],
    progress: Callable[[Event], None] | None,
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
        path = run.path / p["file"]
        hold = functools.partial(_hold, p["index"])
        C.write_atomic(C.part_dataset(study, ds, p["points"]), path, before_rename=hold)
        elapsed = time.perf_counter() - t0
        sha = _sha256(path)
        with run.editing() as m:
            m["parts"][p["index"]].update(
                status="done", sha256=sha, elapsed_s=round(elapsed, 3), finished=_iso(utc_now())
            )
            m["timings"]["compute_s"] = round(m["timings"]["compute_s"] + elapsed, 3)
            checkpoint(m)
        state["work"] += work[p["index"]]
        state["points"] += len(p["points"])
        state["parts"] += 1
        run.log(f"{label}part {p['index']} done: points {p['points']} in {elapsed:.1f} s")
        report(finished=p["index"])


def _write_cube(run: Run) -> xr.Dataset:
    """Assemble and write `cube.nc` and mark the run complete (the caller holds `.lock`)."""
    n = len(run.manifest["parts"])
    missing = _check_parts(run, range(n))
    if missing:
        raise ConfigError(_missing_message(run, missing))
    rebuilt = run.manifest.get("cube") is not None
    cube = assemble(run)
    C.write_atomic(cube, run.cube_path)
    sha = _sha256(run.cube_path)
    with run.editing() as m:
        m.update(status="complete", error=None, cube=CUBE, cube_sha256=sha)
    run.log("cube rebuilt from the parts (it was missing or damaged)" if rebuilt else "cube written")
    return cube


def cube_intact(run: Run) -> bool:
    """Whether `cube.nc` is there with the SHA-256 the manifest records. A run that recorded
    none (written by an older version) counts as damaged: rebuilding is cheap and records one."""
    sha = run.manifest.get("cube_sha256")
    return sha is not None and run.cube_path.is_file() and _sha256(run.cube_path) == sha


def _missing_message(run: Run, missing: list[int]) -> str:
    n = run.manifest.get("shards")
    owners = f" (they belong to shards {sorted({k % n for k in missing})} of {n})" if n else ""
    return (
        f"{run.path}: parts {missing} of {len(run.manifest['parts'])} are not done{owners}; "
        f"run them again (or all that are left with `liqstress run --resume {run.path}`), then combine"
    )


def execute(
    run: Run,
    progress: Callable[[Event], None] | None = None,
    shard: tuple[int, int] | None = None,
    leader: Leader | None = None,
) -> xr.Dataset | None:
    """Simulate the run's pending parts, then assemble and write `cube.nc`; return the cube.

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
                return _write_cube(run)
    i, n = shard
    mine = range(i, n_parts, n)
    # Shared `.lock` waits (holding no other lock) for an unsharded session or a `combine` to
    # end, and for `list_runs`'s probe, rather than failing the job.
    with (
        _flock(run.path / LOCK, fcntl.LOCK_SH),
        _flock(
            run.path / f".shard-{i:04d}.lock", fcntl.LOCK_EX, f"{run.path}: shard {i}/{n} is already running"
        ),
    ):
        _remove_temporaries(run, mine)
        with _session(run, shard) as checkpoint:
            if not mine:
                run.log(f"shard {i}/{n}: no parts (the run has {n_parts})")
            _check_parts(run, mine)
            _run_parts(run, mine, progress, f"shard {i}/{n}: ", leader, checkpoint)
    return combine(run) if not _missing(run) else None


def combine(run: Run) -> xr.Dataset | None:
    """Assemble and write `cube.nc` of a run whose parts are all done (checked against their
    hashes) and mark it complete; return the cube, or None if the run was complete already with
    its cube intact (`cube_intact`; else the cube is rebuilt). `ConfigError` naming the parts
    not done otherwise."""
    missing = _missing(run)
    if missing:
        raise ConfigError(_missing_message(run, missing))
    # waits only for shards finishing their bookkeeping: their parts are all done
    with _flock(run.path / LOCK, fcntl.LOCK_EX):
        _remove_temporaries(run, range(len(run.manifest["parts"])))
        if run.reload()["status"] == "complete" and cube_intact(run):
            return None
        return _write_cube(run)


def assemble(run: Run) -> xr.Dataset:
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
    """Run directories under `root` (those with a manifest), oldest first; one whose manifest is
    unreadable or damaged is listed with status `unreadable`. Hidden directories (runs being
    created) are skipped."""
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not (d / MANIFEST).is_file():
            continue
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        try:
            m = read_manifest(d)
        except (OSError, ManifestError):
            out.append(RunInfo(d, d.name, "?", "?", 0, 0, 0, 0, size, "unreadable"))
            continue
        parts = m["parts"]
        out.append(
            RunInfo(
                d,
                m["run_id"],
                m["config_name"],
                m["created"],
                m["sweep"]["n_points"],
                m["n_paths"],
                sum(p["status"] == "done" for p in parts),
                len(parts),
                size,
                run_status(d, m),
            )
        )
    return sorted(out, key=lambda r: r.created)
