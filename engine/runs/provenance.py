"""Provenance of a run: the package versions, JAX devices and git commit a manifest records,
and the hashes of the files its config reads (its book), which every later session checks."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from engine.config.errors import ConfigError

PACKAGES = ("liqstress", "jax", "jaxlib", "numpy", "scipy", "xarray", "netCDF4", "pydantic")


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_inputs(files: dict[str, str]) -> dict[str, dict]:
    """`{where: {"path", "sha256"}}`, the manifest's `inputs`, of the files
    `{where: absolute path}` (`engine.config.files.input_files`); `ConfigError` naming the
    field of a file that cannot be read."""
    out = {}
    for where, path in files.items():
        try:
            out[where] = {"path": path, "sha256": sha256_file(Path(path))}
        except OSError as err:
            raise ConfigError(f"{where} = {path!r}: cannot read the file ({err.strerror or err})") from None
    return out


def changed_input(inputs: dict) -> str | None:
    """Why the files of a manifest's `inputs` are not those the run started with (the first
    that cannot be read or has another SHA-256), or None if they all are."""
    for where, rec in inputs.items():
        then = rec["sha256"][:12]
        try:
            now = sha256_file(Path(rec["path"]))
        except OSError as err:
            state = f"cannot be read now ({err.strerror or err}); it had sha256 {then} when the run started"
        else:
            if now == rec["sha256"]:
                continue
            state = f"changed since the run started (sha256 {then} then, {now[:12]} now)"
        return (
            f"{where} = {rec['path']}: {state}; the run's parts would mix two books: "
            "restore the file, or start a new run"
        )
    return None
