"""How much cascade work a book asks of the ladder kernel: the share of path-steps whose price
reaches a cohort, cascade rounds per path-step, and the rounds of the longest cascade of a step
(per device: the rounds its batches run).

    python benchmarks/cascade_work.py --entry-points 1 4 16 64 256

W1 (ADL off, so that every path stays on the ladder) with 64 x N cohorts per asset. The counts
come from a host callback on the ladder kernel's batches (`engine.model.ladder_kernel._for_some`),
so this is a diagnostic, not a timing.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
from run import load_workload

from engine.config import build
from engine.model import ladder_kernel
from engine.sim.simulate import simulate


def cascade_work(entry_points: int, paths: int, steps: int) -> dict:
    """Counts of one W1 run on the ladder with `entry_points` entry prices per leverage and size."""
    counts = {"path_steps": 0, "busy": 0, "rounds": 0, "batch_rounds": []}
    compact = ladder_kernel._for_some

    def record(mask, rounds):
        counts["path_steps"] += mask.size
        counts["busy"] += int(mask.sum())
        counts["rounds"] += int(rounds[mask].sum())
        counts["batch_rounds"].append(int(rounds[mask].max()) if mask.any() else 0)

    def counted(mask, run, args, others):
        out = compact(mask, run, args, others)
        jax.debug.callback(record, mask, out[0].rounds)
        return out

    cfg, _, _ = load_workload("W1", False, paths, steps, None, entry_points, "ladder")
    run = cfg.run.model_copy(update={"chunk_size": paths, "tipping_paths": 0})
    cfg = cfg.model_copy(update={"run": run, "policy": cfg.policy.model_copy(update={"adl_rule": "off"})})
    ladder_kernel._for_some = counted
    try:
        simulate(cfg)
    finally:
        ladder_kernel._for_some = compact
    n = counts["path_steps"]
    return {
        "cohorts_per_asset": build.static_of(cfg).n_cohorts,
        "paths": paths,
        "steps": steps,
        "busy_share": counts["busy"] / n,
        "rounds_per_path_step": counts["rounds"] / n,
        "longest_rounds_per_step": float(np.mean(counts["batch_rounds"])),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entry-points", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--paths", type=int, default=4096)
    p.add_argument("--steps", type=int, default=288)
    a = p.parse_args()
    for e in a.entry_points:
        print(json.dumps(cascade_work(e, a.paths, a.steps)))


if __name__ == "__main__":
    main()
