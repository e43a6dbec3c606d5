"""Fixed histogram bins for streaming quantiles: chunk counts add up exactly.

Quantiles and expected shortfall are read from per-bin counts and per-bin sums, so memory does
not grow with the number of paths and the result does not depend on chunking. Resolution:

- `usd`: exact zero, then log bins from 1 USD to 1e14 USD, 300 per decade (0.77% wide), for
  positive and negative values (mirrored);
- `fraction`: exact zero, then 4,000 linear bins on (0, 1];
- `ratio`: 8,000 linear bins on [-1, 1] (values outside are clipped into the end bins);
- `count`: one bin per integer 0 .. max.

`index` works on NumPy and JAX arrays alike (pass the array module).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PER_DECADE = 300
DECADES = 14


@dataclass(frozen=True)
class Bins:
    kind: str  # usd | fraction | ratio | count | linear
    n: int  # number of bins
    lo: float = 0.0
    hi: float = 1.0
    per_decade: int = PER_DECADE  # usd bins only

    def index(self, x, xp=np):
        """Bin index of each value (same shape as x, int32)."""
        if self.kind == "usd":
            mag = xp.floor(xp.log10(xp.maximum(xp.abs(x), 1.0)) * self.per_decade)
            mag = xp.minimum(mag, self.per_decade * DECADES - 1) + 1
            half = self.per_decade * DECADES
            i = xp.where(x > 0, half + mag, xp.where(x < 0, half - mag, half))
        elif self.kind == "fraction":
            i = xp.where(x > 0, xp.ceil(xp.minimum(x, 1.0) * (self.n - 1)), 0)
        elif self.kind == "count":
            i = xp.clip(xp.round(x), 0, self.n - 1)
        else:  # ratio / linear
            i = xp.clip(xp.floor((x - self.lo) / (self.hi - self.lo) * self.n), 0, self.n - 1)
        return i.astype(xp.int32)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper value of every bin `[n]` (equal for the exact zero / integer bins)."""
        if self.kind == "usd":
            half = self.per_decade * DECADES
            mag = np.arange(1, half + 1)
            lo_pos = np.where(mag == 1, 0.0, 10.0 ** ((mag - 1) / self.per_decade))
            hi_pos = 10.0 ** (mag / self.per_decade)
            lo = np.concatenate([-hi_pos[::-1], [0.0], lo_pos])
            hi = np.concatenate([-lo_pos[::-1], [0.0], hi_pos])
        elif self.kind == "fraction":
            k = np.arange(self.n)
            lo = np.where(k == 0, 0.0, (k - 1) / (self.n - 1))
            hi = k / (self.n - 1)
        elif self.kind == "count":
            lo = hi = np.arange(self.n, dtype=float)
        else:
            edges = np.linspace(self.lo, self.hi, self.n + 1)
            lo, hi = edges[:-1], edges[1:]
        return lo, hi

    def log_interpolated(self) -> np.ndarray:
        """Bins `[n]` whose interior is interpolated in log space (the usd bins away from 0)."""
        lo, hi = self.bounds()
        return (self.kind == "usd") & (lo * hi > 0)


def usd() -> Bins:
    return Bins("usd", 2 * PER_DECADE * DECADES + 1)


def fraction() -> Bins:
    return Bins("fraction", 4001)


def ratio() -> Bins:
    return Bins("ratio", 8000, -1.0, 1.0)


def count(max_count: int) -> Bins:
    return Bins("count", max_count + 1)


# Fan charts: log mark relative to the start, 0.25% wide bins; cumulative liquidations (USD),
# 40 log bins per decade (6% wide): fan bands are for plotting, and these histograms are
# carried through every step of the scan, so they are kept small.
FAN_PRICE = Bins("linear", 640, -1.2, 0.4)
FAN_USD = Bins("usd", 2 * 40 * DECADES + 1, per_decade=40)


def quantiles_from_counts(counts: np.ndarray, bins: Bins, qs) -> np.ndarray:
    """Quantiles `[len(qs), ...]` from counts `[n, ...]`, interpolating inside the bin.

    The q-quantile is the value of rank q*(N-1) (NumPy's default 'linear' definition),
    placed uniformly (log-uniformly for usd bins) among the bin's members.
    """
    lo, hi = bins.bounds()
    logi = bins.log_interpolated()
    c = counts.reshape(counts.shape[0], -1).astype(float)
    cum = np.cumsum(c, axis=0)
    n = cum[-1]
    out = np.zeros((len(qs), c.shape[1]))
    for j in range(c.shape[1]):
        if n[j] == 0:
            out[:, j] = np.nan
            continue
        for iq, q in enumerate(qs):
            rank = q * (n[j] - 1)
            b = int(np.searchsorted(cum[:, j], rank, side="right"))
            b = min(b, len(lo) - 1)
            before = cum[b, j] - c[b, j]
            frac = (rank - before + 0.5) / c[b, j] if c[b, j] > 0 else 0.5
            frac = min(max(frac, 0.0), 1.0)
            if logi[b]:
                sgn = np.sign(hi[b])
                a, z = np.log(abs(lo[b])), np.log(abs(hi[b]))
                out[iq, j] = sgn * np.exp(a + frac * (z - a))
            else:
                out[iq, j] = lo[b] + frac * (hi[b] - lo[b])
    return out.reshape((len(qs),) + counts.shape[1:])


def tail_mean_from_bins(counts: np.ndarray, sums: np.ndarray, level: float) -> np.ndarray:
    """Expected shortfall: mean of the worst (largest) `1 - level` share of paths `[...]`.

    Whole bins contribute their exact sums; the bin at the boundary contributes its mean times
    the number of members needed.
    """
    c = counts.reshape(counts.shape[0], -1).astype(float)
    s = sums.reshape(sums.shape[0], -1)
    n = c.sum(0)
    k = np.maximum((1.0 - level) * n, 1e-300)
    rc = np.cumsum(c[::-1], 0)
    rs = np.cumsum(s[::-1], 0)
    out = np.zeros(c.shape[1])
    for j in range(c.shape[1]):
        if n[j] == 0:
            out[j] = np.nan
            continue
        b = int(np.searchsorted(rc[:, j], k[j], side="left"))
        b = min(b, c.shape[0] - 1)
        whole_c = rc[b - 1, j] if b > 0 else 0.0
        whole_s = rs[b - 1, j] if b > 0 else 0.0
        cb = c[::-1][b, j]
        mean_b = s[::-1][b, j] / cb if cb > 0 else 0.0
        out[j] = (whole_s + (k[j] - whole_c) * mean_b) / k[j]
    return out.reshape(counts.shape[1:])
