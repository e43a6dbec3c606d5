"""Listing run directories: what each holds and whether it is complete, running or interrupted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.runs.rundir import MANIFEST, ManifestError, is_locked, read_manifest


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
    if status in ("running", "created") and not is_locked(path):
        return "interrupted"
    return status


def list_runs(root: Path) -> list[RunInfo]:
    """RunDir directories under `root` (those with a manifest), oldest first; one whose manifest is
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
