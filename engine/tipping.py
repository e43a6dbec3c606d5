"""Tipping paths: how many paths of a run a one-ulp change of the random numbers can flip.

A cascade near its threshold (one more cohort liquidated or not, a breaker that trips or
not) turns a rounding difference into a different outcome. Such paths are why two backends
(CPU, GPU) or two dtypes, fed the same seed, agree on the distribution of a run's outputs
within Monte Carlo error but not on every path.

The probe reruns the first `n` paths of a run (`run.tipping_paths`) under the same point with
every random draw moved by one ulp toward +inf (`engine.kernel.step_draws`, `nudge=1`) and
counts the paths whose total liquidated notional moves by more than `TIPPING_RTOL` of itself:

    tipping[p] = |L[p] - L'[p]| > TIPPING_RTOL * max(|L[p]|, |L'[p]|)

`tipping_share` is the fraction of the sampled paths that tip (per point). A share that rises
along a policy lever says that the lever moves the book closer to a cascade's edge.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

# A path "tips" when a one-ulp change moves its liquidated total by more than this (relative);
# accumulated float32 rounding alone moves it by about 1e-6.
TIPPING_RTOL = 1e-3
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

    def starts(self, chunk: int) -> range:
        """Global start of each chunk of `chunk` paths that holds sampled paths."""
        return range(0, self.n_sample, chunk)

    def _sampled(self, start: int, outputs: dict) -> np.ndarray:
        return np.asarray(outputs[OUTPUT])[: max(self.n_sample - start, 0)]

    def keep(self, point: int, start: int, outputs: dict) -> None:
        """Record the sampled paths of a run chunk starting at global path `start`."""
        if start < self.n_sample:
            self.base[point].append(self._sampled(start, outputs))

    def compare(self, point: int, start: int, nudged: dict) -> None:
        """Flag the sampled paths of a nudged chunk (chunks in the order `keep` saw them)."""
        base = self.base[point][len(self.flags[point])]
        self.flags[point].append(tips(base, self._sampled(start, nudged)))

    def result(self, point: int) -> dict[str, np.ndarray]:
        """`tipping_share` (fraction of the sampled paths) and `tipping_sampled` (paths) of a
        point; empty when the probe is off."""
        if not self.n_sample:
            return {}
        flags = np.concatenate(self.flags[point])
        return {"tipping_share": np.asarray(flags.mean()), "tipping_sampled": np.asarray(flags.size, np.int32)}


def summary_line(cube: xr.Dataset) -> str:
    """One line on a run's tipping share (its range and highest point when a sweep has several
    points), or "" when the run had the probe off."""
    if "tipping_share" not in cube:
        return ""
    share, sampled = cube["tipping_share"], int(cube["tipping_sampled"].max())
    text = f"Tipping paths (liquidations move by > {TIPPING_RTOL:.1%} when the draws move by one ulp): "
    lo, hi = float(share.min()), float(share.max())
    if lo == hi:
        return text + f"{hi:.1%} of {sampled} sampled"
    top = share.isel(share.argmax(dim=share.dims))
    names = [c for c in top.coords if top[c].ndim == 0 and c != "point"] or ["point"]
    where = ", ".join(f"{c}={top[c].item()}" for c in names)
    return text + f"{lo:.1%} to {hi:.1%} of {sampled} sampled, highest at {where}"
