"""RunDir directories: the directory and its manifest, provenance, and the locks that keep
concurrent processes apart.

```
runs/<UTC timestamp>_<config name>/
    config.toml      the fully resolved config with its sweep (what --resume reruns), its
                     file paths absolute
    manifest.json    run id, seed, sweep, versions, devices, git commit, timings, parts, and
                     the path and SHA-256 of each file the config reads (`inputs`)
    parts/part-NNNN.nc   one block of grid points each (one `engine.simulate` call)
    cube.nc          the combined cube (`engine.runs.cube`)
    run.log          the progress lines of every session
```

A new directory is built complete under a hidden temporary name and renamed into place, so of
two runs started in one directory exactly one gets it and the other writes nothing. Every file
is written through a temporary name and `os.replace`, and a part counts only once the manifest
records it with its SHA-256 (the cube too); `engine.runs.execute` runs the parts. Opening a run
again (`--resume`, a shard joining, `combine`) re-hashes its input files and refuses one that
changed, so that one cube never mixes two books.

The shards of one sweep share one directory (`join_run` creates it race-free). Locks (`flock`;
on a cluster the filesystem must support it) keep concurrent processes apart:

- `.lock`: an unsharded session holds it exclusively throughout (failing at once if it is
  taken); a shard holds it shared while it simulates (waiting for it), and `combine`
  exclusively while it assembles. `engine.runs.listing` probes it to tell a live run from an
  interrupted one.
- `.shard-IIII.lock`: held by shard i, so the same shard never runs twice at once.
- `.manifest.lock`: held briefly around every read-modify-write of the manifest (re-read from
  disk inside), so concurrent shards never lose each other's updates.

In a multi-process run (`engine.sim.distributed`) process 0 alone touches the run directory and
the others only simulate what it sends them, so they need no shared filesystem and cannot race it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from engine.config.errors import ConfigError, describe
from engine.config.files import input_files
from engine.config.sweep import Study, build_study
from engine.runs.provenance import changed_input, git_info, hash_inputs, jax_info, versions

MANIFEST = "manifest.json"
CONFIG = "config.toml"
CUBE = "cube.nc"
LOG = "run.log"
LOCK = ".lock"
MANIFEST_LOCK = ".manifest.lock"
PARTS = "parts"
FORMAT = 1


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


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


class _Input(BaseModel):
    path: str
    sha256: str


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
    inputs: dict[str, _Input] = {}  # absent from the manifests of older versions


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
        if part["index"] != k or part["file"] != part_file(k):
            raise ManifestError(f"{MANIFEST} is damaged: parts.{k} must have index {k}, file {part_file(k)}")
    return manifest


def part_file(k: int) -> str:
    return f"{PARTS}/part-{k:04d}.nc"


# --------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------


@dataclass
class RunDir:
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
        with flock(self.path / MANIFEST_LOCK, fcntl.LOCK_EX):
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

    def log(self, line: str) -> None:
        with open(self.path / LOG, "a", encoding="utf-8") as f:
            f.write(f"{iso(utc_now())} {line}\n")


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


def create_run(study: Study, path: Path, *, source: str, command: str) -> RunDir:
    """Make the run directory with its resolved config and a manifest of pending parts.

    Call only after validation: this is the first thing that writes to disk. The directory is
    built complete under a temporary sibling name and renamed into place, which succeeds only
    onto a missing or empty directory, so of two processes starting runs in the same new
    `--run-dir` the loser gets `ConfigError` and leaves nothing behind.
    """
    check_new_run_dir(path)
    inputs = hash_inputs(input_files(study))
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.new"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        raise ConfigError(
            f"--run-dir {path}: cannot create the run directory ({err.strerror or err})"
        ) from None
    run = RunDir(tmp, study, _new_manifest(study, path.name, inputs, source=source, command=command))
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


def _new_manifest(study: Study, run_id: str, inputs: dict, *, source: str, command: str) -> dict:
    """The manifest of a new run: every part pending; `inputs` from `hash_inputs`."""
    cfg = study.config
    return {
        "format": FORMAT,
        "run_id": run_id,
        "config_name": cfg.name,
        "config_source": source,
        "config_sha256": hashlib.sha256(study.resolved_toml().encode()).hexdigest(),
        "inputs": inputs,
        "command": command,
        "created": iso(utc_now()),
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
            {"index": k, "points": pts, "file": part_file(k), "status": "pending"}
            for k, pts in enumerate(study.parts())
        ],
        "cube": None,
    }


def _write_new(run: RunDir) -> None:
    """Write a new run's `parts/`, config and manifest into its (existing, empty) directory."""
    (run.path / PARTS).mkdir()
    write_text_atomic(run.path / CONFIG, run.study.resolved_toml())
    run.save()


def open_run(path: Path, flag: str = "--resume") -> RunDir:
    """An existing run directory for resuming, or `ConfigError` (its text starting with `flag`,
    the option that named the directory) if it is not a resumable run, or if a file its config
    reads is no longer the one it started with (`changed_input`)."""
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
    if why := changed_input(manifest.get("inputs", {})):
        raise ConfigError(f"{flag} {path}: {why}")
    try:
        study = build_study(tomllib.loads(text), source=str(path / CONFIG))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{flag} {path}: {CONFIG} is not valid TOML ({err})") from None
    if [p["points"] for p in manifest["parts"]] != study.parts():
        raise ConfigError(f"{flag} {path}: the manifest's parts do not match {CONFIG}")
    return RunDir(path, study, manifest)


def join_run(study: Study, path: Path, *, source: str, command: str) -> RunDir:
    """The run directory that the shards of one sweep share: created by the first shard to get
    here, opened by the others, which must bring the same resolved config (else `ConfigError`).

    Shards of a job array start together, so the check and the creation happen under
    `.manifest.lock` inside the directory.
    """
    inputs = hash_inputs(input_files(study))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--run-dir {path}: exists and is not a directory") from None
    except OSError as err:
        raise ConfigError(
            f"--run-dir {path}: cannot create the run directory ({err.strerror or err})"
        ) from None
    with flock(path / MANIFEST_LOCK, fcntl.LOCK_EX):
        if not (path / MANIFEST).exists():
            check_new_run_dir(path)
            run = RunDir(path, study, _new_manifest(study, path.name, inputs, source=source, command=command))
            _write_new(run)
            return run
        run = open_run(path, flag="--run-dir")
    if run.manifest["config_sha256"] != hashlib.sha256(study.resolved_toml().encode()).hexdigest():
        raise ConfigError(
            f"--run-dir {path}: holds a run of a different config; every shard needs the same "
            f"CONFIG, --set, --paths and --seed (the run's own is {path / CONFIG})"
        )
    return run


# --------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def flock(path: Path, mode: int, busy: str | None = None) -> Iterator[None]:
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


def locked(run: RunDir) -> contextlib.AbstractContextManager[None]:
    """Hold the run's exclusive lock, or raise `ConfigError` if another process holds it."""
    return flock(run.path / LOCK, fcntl.LOCK_EX, f"{run.path}: another process is running this run")


def is_locked(path: Path) -> bool:
    """Whether a process holds the run's `.lock` (a live session, shard or `combine`)."""
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
