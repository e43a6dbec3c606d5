"""The dense kernel as the ladder's fallback: rerun the paths the ladder flagged.

The ladder kernel (`engine.model.ladder_kernel`) flags a path at the first step it cannot
compute exactly (pro-rata ADL, with voluntary closing a cascade that reaches a cohort the
queue closed, an equity split wider than its window, a dynamic-margin rate at the cap, a short stop order carried past
its liquidation price) and reports that
step as the output `fallback_step`. `complete` reruns exactly those paths, by their global
index, on the dense kernel (the same draws: keys come from the index), takes all their outputs
from the rerun, and adds their fan-chart rows from the flagged step on (the ladder counted the
rows before it). Each path's numbers therefore come from one form decided by that path alone,
so results stay independent of chunking and devices.

Reruns are batched in calls of `unit * 2**j` paths (the fewest that hold the flagged paths,
at most the run's chunk), so a handful of flagged paths costs a handful of dense paths, and at
most a few kernel sizes are compiled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.model.ladder_kernel import FALLBACK_NEVER

FLAG = "fallback_step"


def flagged(outputs: dict, valid: int) -> np.ndarray:
    """Indices within the chunk `[n]` of the valid paths the ladder flagged (none in other forms)."""
    if FLAG not in outputs:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.asarray(outputs[FLAG])[:valid] < FALLBACK_NEVER)


def rerun_size(n: int, unit: int, chunk: int) -> int:
    """Paths per rerun call for `n` flagged paths: the least `unit * 2**j` that holds them,
    at most `chunk`."""
    size = unit
    while size < n and size < chunk:
        size *= 2
    return min(size, chunk)


def complete(
    outputs: dict, fan: dict, valid: int, rerun: Callable, unit: int, chunk: int
) -> tuple[dict, dict]:
    """A ladder chunk's (outputs, fan) with its flagged paths rerun on the dense kernel.

    outputs: `{name: [chunk, ...]}` on the host; fan: `{name: histograms}`; valid: paths of the
    chunk that count. rerun(offsets `[size]` uint32, count_from `[size]` int32, n) -> the dense
    (outputs, fan) on the host of paths `chunk start + offsets`, the first n of them valid, each
    counted in the fan from its `count_from` step on. Returns new dicts; the inputs are unchanged.
    """
    idx = flagged(outputs, valid)
    if idx.size == 0:
        return outputs, fan
    out = {k: np.array(v) for k, v in outputs.items()}
    fan = {k: np.array(v) for k, v in fan.items()}
    size = rerun_size(idx.size, unit, chunk)
    for lo in range(0, idx.size, size):
        part = idx[lo : lo + size]
        offsets = np.zeros(size, np.uint32)
        offsets[: part.size] = part
        count_from = np.full(size, FALLBACK_NEVER, np.int32)
        count_from[: part.size] = out[FLAG][part]
        d_out, d_fan = rerun(offsets, count_from, part.size)
        for name, values in d_out.items():
            out[name][part] = np.asarray(values)[: part.size]
        for name in fan:
            fan[name] = fan[name] + np.asarray(d_fan[name])
    return out, fan
