"""Streaming reductions of per-path outputs into loss distributions, on the host.

For every output and policy point the accumulator keeps histogram counts and per-bin sums,
minima and maxima (`engine.model.bins`), the path count, sums of x and x^2, the number of paths
with x > 0, and sums of the paired difference to the baseline point (same paths, common
random numbers). Nothing grows with the number of paths.

Sums are added atom by atom (`ATOM` consecutive global paths, in path order), so the result
is bitwise the same whatever the chunk size, as long as chunks are whole atoms.

Too few paths. A q-quantile is reported as estimated only when at least one path lies beyond
it on average, n (1 - q) >= 1 (and n q >= 1 below the median): q99.9 needs 1,000 paths. ES99
needs `MIN_ES_TAIL_PATHS` (100) tail paths, so 10,000 paths. Otherwise the cube's status
flags (`quantile_status`, `es99_status`, `band_quantile_status`) say `too_few_paths`, and the
summary and report show the entry as not estimable.
"""

from __future__ import annotations

import numpy as np

from engine.model import bins as B
from engine.model.outputs import OUTPUTS
from engine.model.params import Static
from engine.sim.fallback import flagged

ATOM = 256
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
BAND_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
ES_LEVEL = 0.99
MIN_ES_TAIL_PATHS = 100
# CF flag values of the status variables: quantiles and ES; fan-chart bands
ESTIMATED, TOO_FEW_PATHS = 0, 1
IN_RANGE, CLIPPED = 0, 1


def quantile_status(n_paths: int, levels) -> np.ndarray:
    """`TOO_FEW_PATHS` for each level `[levels]` with fewer than one path beyond it on average
    (on the nearer side), else `ESTIMATED` (int8)."""
    side = np.minimum(np.asarray(levels, float), 1.0 - np.asarray(levels, float))
    few = B.tail_weight(n_paths, 1.0 - side) < 1
    return np.where(few, TOO_FEW_PATHS, ESTIMATED).astype(np.int8)


def es_status(n_paths: int) -> np.ndarray:
    """`TOO_FEW_PATHS` when ES99 averages fewer than `MIN_ES_TAIL_PATHS` paths (int8)."""
    few = B.tail_weight(n_paths, ES_LEVEL) < MIN_ES_TAIL_PATHS
    return np.asarray(TOO_FEW_PATHS if few else ESTIMATED, np.int8)


def _atom_sums(x: np.ndarray, valid: int) -> np.ndarray:
    """Sums of each atom `[atoms, ...]` of the first `valid` rows of x `[paths, ...]`."""
    x = np.asarray(x[:valid], np.float64)
    pad = (-valid) % ATOM
    if pad:
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:])])
    return x.reshape((-1, ATOM) + x.shape[1:]).sum(axis=1)


class _Moments:
    """Order-fixed sums of x and x^2 (one row per atom, added in path order)."""

    def __init__(self, shape):
        self.s1 = np.zeros(shape)
        self.s2 = np.zeros(shape)

    def add(self, x: np.ndarray, valid: int):
        a1, a2 = _atom_sums(x, valid), _atom_sums(np.square(x, dtype=np.float64), valid)
        # accumulate is strictly sequential (sum may pair), which fixes the order
        self.s1 = np.add.accumulate(np.concatenate([self.s1[None], a1]), axis=0)[-1]
        self.s2 = np.add.accumulate(np.concatenate([self.s2[None], a2]), axis=0)[-1]

    def mean_se(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        mean = self.s1 / n
        var = np.maximum(self.s2 / n - mean**2, 0.0) * n / max(n - 1, 1)
        return mean, np.sqrt(var / n)


class PointAccumulator:
    """Distribution statistics of one policy point over all paths seen so far."""

    def __init__(self, static: Static):
        self.static = static
        self.n = 0
        self.nonfinite = 0
        self.jump_truncated = 0
        self.handed_over = 0
        self.bins = {o.name: o.bins(static) for o in OUTPUTS}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.bin_sums: dict[str, np.ndarray] = {}
        self.bin_min: dict[str, np.ndarray] = {}
        self.bin_max: dict[str, np.ndarray] = {}
        self.moments: dict[str, _Moments] = {}
        self.paired: dict[str, _Moments] = {}
        self.positive: dict[str, np.ndarray] = {}
        self.fan_price = None
        self.fan_liq = None

    def _init(self, name: str, shape: tuple[int, ...]):
        nb = self.bins[name].n
        self.shapes[name] = shape
        self.counts[name] = np.zeros((nb,) + shape, np.int64)
        self.bin_sums[name] = np.zeros((nb,) + shape)
        self.bin_min[name] = np.full((nb,) + shape, np.inf)
        self.bin_max[name] = np.full((nb,) + shape, -np.inf)
        self.moments[name] = _Moments(shape)
        self.paired[name] = _Moments(shape)
        self.positive[name] = np.zeros(shape, np.int64)

    def add(self, outputs: dict, fan: dict, valid: int, baseline: dict | None = None):
        """Add a chunk: outputs `{name: [paths, ...]}` of which the first `valid` paths count,
        fan histograms of the chunk, and the baseline point's outputs on the same paths."""
        self.n += valid
        self.nonfinite += int(np.sum(np.asarray(outputs["nonfinite"])[:valid]))
        self.jump_truncated += int(np.sum(np.asarray(outputs["jump_truncated"])[:valid]))
        self.handed_over += flagged(outputs, valid).size  # 0 in the forms that hand nothing over
        for o in OUTPUTS:
            x = np.asarray(outputs[o.name])[:valid].astype(np.float64)
            if o.name not in self.counts:
                self._init(o.name, x.shape[1:])
            self._add_binned(o.name, x, valid)
            self.moments[o.name].add(x, valid)
            self.positive[o.name] += np.sum(x > 0, axis=0)
            if baseline is not None:
                base = np.asarray(baseline[o.name])[:valid].astype(np.float64)
                self.paired[o.name].add(x - base, valid)
        price, liq = (np.asarray(fan[k], np.int64) for k in ("price", "liquidated"))
        self.fan_price = price if self.fan_price is None else self.fan_price + price
        self.fan_liq = liq if self.fan_liq is None else self.fan_liq + liq

    def _add_binned(self, name: str, x: np.ndarray, valid: int):
        """Per-bin counts, sums, minima and maxima of x `[valid, ...]`; each bin's sum grows
        atom by atom in path order (`ufunc.at` applies repeated indices in order)."""
        idx = self.bins[name].index(x).reshape(valid, -1)
        flat = idx.shape[1]
        cells = (idx * flat + np.arange(flat)[None, :]).reshape(-1)  # into [bins, flat] arrays
        values = x.reshape(-1)
        n_atoms = -(-valid // ATOM)
        atom = np.repeat(np.arange(valid) // ATOM, flat)
        # one sum per (cell, atom), in path order; keys sort by cell, then atom
        keys, which = np.unique(cells.astype(np.int64) * n_atoms + atom, return_inverse=True)
        np.add.at(self.bin_sums[name].reshape(-1), keys // n_atoms, np.bincount(which, weights=values))
        self.counts[name].reshape(-1)[:] += np.bincount(cells, minlength=self.counts[name].size)
        np.minimum.at(self.bin_min[name].reshape(-1), cells, values)
        np.maximum.at(self.bin_max[name].reshape(-1), cells, values)

    def stats(self, name: str) -> B.BinStats:
        """The binned statistics of output `name` (columns: its trailing dims, flattened)."""
        return B.BinStats(
            self.counts[name], None, self.bin_sums[name], self.bin_min[name], self.bin_max[name]
        )

    def result(self, price0: np.ndarray) -> dict[str, np.ndarray]:
        """Statistics of this point: `{variable: array}` (see `engine.sim.simulate` for the list)."""
        out: dict[str, np.ndarray] = {
            "n_paths": np.asarray(self.n),
            "n_nonfinite": np.asarray(self.nonfinite),
        }
        # kernel diagnostics: paths whose cascade ran out of rounds, or with a truncated jump count
        out["n_cascade_unconverged"] = self.positive["residual_notional"].astype(np.float64)
        out["n_jump_truncated"] = np.asarray(self.jump_truncated, np.float64)
        out["n_dense_fallback"] = np.asarray(self.handed_over, np.float64)
        out["quantile_status"] = quantile_status(self.n, QUANTILES)
        out["band_quantile_status"] = quantile_status(self.n, BAND_QUANTILES)
        out["es99_status"] = es_status(self.n)
        for o in OUTPUTS:
            name = o.name
            stats = self.stats(name)
            out[name] = B.quantiles(stats, QUANTILES, self.shapes[name])
            out[f"{name}_mean"], out[f"{name}_mc_se"] = self.moments[name].mean_se(self.n)
            out[f"{name}_diff_mean"], out[f"{name}_diff_se"] = self.paired[name].mean_se(self.n)
            out[f"p_{name}_positive"] = self.positive[name] / self.n
            if o.loss:
                out[f"es99_{name}"] = stats.tail_mean(ES_LEVEL).reshape(self.shapes[name])
        q, clipped = _band(self.fan_price, B.FAN_PRICE)
        out["mark_price_band"] = price0[None, :, None] * np.exp(q)
        out["mark_price_band_status"] = clipped
        out["cum_liquidations_band"], out["cum_liquidations_band_status"] = _band(self.fan_liq, B.FAN_USD)
        return out


def _band(hist: np.ndarray, bins: B.Bins) -> tuple[np.ndarray, np.ndarray]:
    """Fan-chart bands `[time, asset, band_quantile]` of histograms `[time, asset, bins]`: NaN
    where the band reads an end bin (values may lie beyond the range), flagged `CLIPPED`."""
    q, clipped = B.quantiles_from_counts(np.moveaxis(hist, 2, 0), bins, BAND_QUANTILES)
    q, clipped = np.moveaxis(q, 0, -1), np.moveaxis(clipped, 0, -1)
    return np.where(clipped, np.nan, q), np.where(clipped, CLIPPED, IN_RANGE).astype(np.int8)
