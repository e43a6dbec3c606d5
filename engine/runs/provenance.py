"""Provenance of a run: the package versions, JAX devices and git commit a manifest records."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

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
