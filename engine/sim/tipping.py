"""Tipping paths: how many paths of a run a rounding-sized change of its random numbers flips.

A path near a threshold (the insurance fund running dry, which positions the ADL queue
closes, one more cohort liquidated or not) turns a rounding difference into a different
outcome. Such paths are why two backends (CPU, GPU) or two dtypes, fed the same seed, agree on
the distribution of a run's outputs within Monte Carlo error but not on every path.

The probe reruns the first `n` paths of a run (`run.tipping_paths`) under the same point with
every random draw scaled by (1 + `NUDGE_ULPS` eps) (`engine.model.kernel.step_draws`) and counts
the paths whose total liquidated notional L moves by more than `TIPPING_RTOL` of itself:

    tipping[p] = |L[p] - L'[p]| > TIPPING_RTOL * max(|L[p]|, |L'[p]|)

`tipping_share` is the fraction of the sampled paths that tip, per point. A share that rises
along a policy lever says that the lever brings paths closer to such a threshold (the ADL
queue tips paths that pro-rata ADL does not).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

# A path "tips" when the nudge moves its liquidated total by more than this (relative);
# accumulated float32 rounding alone moves it by about 1e-6.
TIPPING_RTOL = 1e-3
# How far the probe moves every draw, in ulps of the run's dtype. A path's log price is the
# sum of ~100 steps' returns, so its own rounding error is ~100 ulps of one step's draw: a
# 1-ulp nudge leaves 98% of the paths of configs/quick.toml bit-identical and misses most
# tipping paths. Measured there (512 paths, seed 7, paths that tip at the two points without
# a breaker): 1 ulp 0 to 1, 128 ulps 2 to 4, 1,024 ulps 8 to 13; on an H200 the run ended more
# than 0.1% apart from the CPU's on 8 paths.
NUDGE_ULPS = 128.0
OUTPUT = "liquidated_total"


def tips(base: np.ndarray, nudged: np.ndarray, rtol: float = TIPPING_RTOL) -> np.ndarray:
    """Per-path flags `[paths]` bool: liquidated totals `[paths]` (USD) of the same paths,
    as drawn and nudged, differ by more than `rtol` of the larger (0 and 0 do not tip)."""
    a, b = np.asarray(base, np.float64), np.asarray(nudged, np.float64)
    return np.abs(a - b) > rtol * np.maximum(np.abs(a), np.abs(b))


class TippingProbe:
    """Liquidated totals of the first `n_sample` global paths of each point, as drawn
    (`keep`, from the run's chunks) and nudged (`compare`, from the probe's chunks)."""

    def __init__(self, n_sample: int, n_points: int):
        self.n_sample = n_sample
        self.base: list[list[np.ndarray]] = [[] for _ in range(n_points)]
        self.flags: list[list[np.ndarray]] = [[] for _ in range(n_points)]

    def chunk(self, run_chunk: int, unit: int) -> int:
        """Paths per compiled call of the probe: the run's chunk when it is at most twice the
        sample in whole `unit`s (compiling a kernel costs more than that much compute: on
        configs/quick.toml 5 s against 0.1 s), otherwise the sample's, which keeps its cost
        that of the sample when the run's chunks are large (accelerators, long runs)."""
        own = max(unit, -(-self.n_sample // unit) * unit)
        return run_chunk if run_chunk <= 2 * own else own

    def starts(self, chunk: int) -> range:
        """Global start of each probe chunk of `chunk` paths."""
        return range(0, self.n_sample, chunk)

    def _sampled(self, start: int, outputs: dict) -> np.ndarray:
        return np.asarray(outputs[OUTPUT])[: max(self.n_sample - start, 0)]

    def keep(self, point: int, start: int, outputs: dict) -> None:
        """Record the sampled paths of a run chunk starting at global path `start`."""
        if start < self.n_sample:
            self.base[point].append(self._sampled(start, outputs))

    def compare(self, point: int, start: int, nudged: dict) -> None:
        """Flag the sampled paths of a nudged chunk starting at global path `start` (chunks in
        path order, sized independently of the run's)."""
        moved = self._sampled(start, nudged)
        base = np.concatenate(self.base[point])[start : start + moved.size]
        self.flags[point].append(tips(base, moved))

    def result(self, point: int) -> dict[str, np.ndarray]:
        """`tipping_share` (fraction of the sampled paths) and `tipping_sampled` (paths) of a
        point; empty when the probe is off."""
        if not self.n_sample:
            return {}
        flags = np.concatenate(self.flags[point])
        return {"tipping_share": np.asarray(flags.mean()), "tipping_sampled": np.int32(flags.size)}


def summary_line(cube: xr.Dataset) -> str:
    """One line, in plain words, on a run's tipping share (its range and highest point when a
    sweep has several points), or "" when the run had the probe off."""
    if "tipping_share" not in cube:
        return ""
    share, sampled = cube["tipping_share"], int(cube["tipping_sampled"].max())
    text = (
        "Paths at a tipping point (a rounding-sized change of their random draws, like the one "
        f"between a CPU and a GPU, moves their liquidations by more than {TIPPING_RTOL:.1%}): "
    )
    lo, hi = float(share.min()), float(share.max())
    if lo == hi:
        return text + f"{hi:.1%} of {sampled} sampled"
    at = share.argmax(dim=share.dims)
    top = share.isel(at)
    labels = {c: top[c].item() for c in top.coords if top[c].ndim == 0 and c != "point"}
    where = ", ".join(f"{k}={v}" for k, v in (labels or {d: int(i) for d, i in at.items()}).items())
    return text + f"{lo:.1%} to {hi:.1%} of {sampled} sampled, highest at {where}"
