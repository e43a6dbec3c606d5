"""Streaming reductions of per-path outputs into loss distributions, on the host.

For every output and policy point the accumulator keeps histogram counts and per-bin sums
(`engine.bins`), the path count, sums of x and x^2, the number of paths with x > 0, and sums
of the paired difference to the baseline point (same paths, common random numbers). Nothing
grows with the number of paths.

Sums are added atom by atom (`ATOM` consecutive global paths, in path order), so the result
is bitwise the same whatever the chunk size, as long as chunks are whole atoms.
"""

from __future__ import annotations

import numpy as np

from engine import bins as B
from engine.outputs import OUTPUTS
from engine.params import Static

ATOM = 256
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
BAND_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
ES_LEVEL = 0.99


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
        self.bins = {o.name: o.bins(static) for o in OUTPUTS}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.bin_sums: dict[str, np.ndarray] = {}
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
        self.moments[name] = _Moments(shape)
        self.paired[name] = _Moments(shape)
        self.positive[name] = np.zeros(shape, np.int64)

    def add(self, outputs: dict, fan: dict, valid: int, baseline: dict | None = None):
        """Add a chunk: outputs `{name: [paths, ...]}` of which the first `valid` paths count,
        fan histograms of the chunk, and the baseline point's outputs on the same paths."""
        self.n += valid
        self.nonfinite += int(np.sum(np.asarray(outputs["nonfinite"])[:valid]))
        self.jump_truncated += int(np.sum(np.asarray(outputs["jump_truncated"])[:valid]))
        for o in OUTPUTS:
            x = np.asarray(outputs[o.name])[:valid].astype(np.float64)
            if o.name not in self.counts:
                self._init(o.name, x.shape[1:])
            idx = self.bins[o.name].index(x)
            flat_shape = int(np.prod(x.shape[1:], dtype=int))
            nb = self.bins[o.name].n
            cols = (idx.reshape(valid, -1) + np.arange(flat_shape)[None, :] * nb).reshape(-1)
            cnt = np.bincount(cols, minlength=nb * flat_shape).reshape(flat_shape, nb).T
            sums = np.bincount(cols, weights=x.reshape(-1), minlength=nb * flat_shape)
            self.counts[o.name] += cnt.reshape(self.counts[o.name].shape)
            self.bin_sums[o.name] += sums.reshape(flat_shape, nb).T.reshape(self.bin_sums[o.name].shape)
            self.moments[o.name].add(x, valid)
            self.positive[o.name] += np.sum(x > 0, axis=0)
            if baseline is not None:
                base = np.asarray(baseline[o.name])[:valid].astype(np.float64)
                self.paired[o.name].add(x - base, valid)
        price, liq = (np.asarray(fan[k], np.int64) for k in ("price", "liquidated"))
        self.fan_price = price if self.fan_price is None else self.fan_price + price
        self.fan_liq = liq if self.fan_liq is None else self.fan_liq + liq

    def result(self, price0: np.ndarray) -> dict[str, np.ndarray]:
        """Statistics of this point: `{variable: array}` (see `engine.simulate` for the list)."""
        out: dict[str, np.ndarray] = {"n_paths": np.asarray(self.n), "n_nonfinite": np.asarray(self.nonfinite)}
        # kernel diagnostics: paths whose cascade ran out of rounds, or with a truncated jump count
        out["n_cascade_unconverged"] = self.positive["residual_notional"].astype(np.int32)
        out["n_jump_truncated"] = np.asarray(self.jump_truncated, np.int32)
        for o in OUTPUTS:
            name = o.name
            out[name] = B.quantiles_from_counts(self.counts[name], self.bins[name], QUANTILES)
            out[f"{name}_mean"], out[f"{name}_mc_se"] = self.moments[name].mean_se(self.n)
            out[f"{name}_diff_mean"], out[f"{name}_diff_se"] = self.paired[name].mean_se(self.n)
            out[f"p_{name}_positive"] = self.positive[name] / self.n
            if o.loss:
                out[f"es99_{name}"] = B.tail_mean_from_bins(
                    self.counts[name], self.bin_sums[name], ES_LEVEL
                )
        # fan charts: [time, asset, bins] -> [time, asset, band_quantile]
        fp = np.moveaxis(self.fan_price, 2, 0)
        q = B.quantiles_from_counts(fp, B.FAN_PRICE, BAND_QUANTILES)  # [bq, time, asset]
        out["mark_price_band"] = np.moveaxis(price0[None, None, :] * np.exp(q), 0, -1)
        fl = np.moveaxis(self.fan_liq, 2, 0)
        out["cum_liquidations_band"] = np.moveaxis(
            B.quantiles_from_counts(fl, B.FAN_USD, BAND_QUANTILES), 0, -1
        )
        return out
