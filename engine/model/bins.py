"""Fixed histogram bins for streaming quantiles: chunk counts add up exactly.

Quantiles and expected shortfall are read from per-bin statistics, so memory does not grow
with the number of paths and the result does not depend on chunking. Bins:

- `usd`: exact zero, then log bins from 1 USD to 1e14 USD, 300 per decade (0.77% wide), for
  positive and negative values (mirrored);
- `fraction`: exact zero, then 4,000 linear bins on (0, 1];
- `ratio`: 8,000 linear bins on [-1, 1];
- `count`: one bin per integer 0 .. max;
- `asinh`: bins of equal width in asinh(x / scale) on [lo, hi]: fine near 0, coarse far out
  (the fan chart of log prices).

Values beyond a kind's range are clipped into its end bins (`index`).

Estimator (`order_statistics`). The N values seen are x_(0) <= ... <= x_(N-1). A bin knows
how many of them it holds (c), and, for the loss distributions, their exact sum, minimum and
maximum (min and max are order-free, so they too are independent of chunking). Its members
are placed as: c = 1: the sum; c >= 2: the minimum and maximum at the ends, and the c - 2
others evenly spaced around their exact mean (s - min - max) / (c - 2), at most as far apart
as c values spread evenly over [min, max] and never beyond them. An order statistic that sits
alone in its bin, or is its bin's minimum or maximum, is therefore exact; any other is within
its bin's [min, max]. With counts only (fan charts), members sit evenly inside the bin
bounds.

The q-quantile is NumPy's default 'linear' one on these placed values: rank h = q (N - 1),
interpolated between x_(floor h) and x_(ceil h), which may lie in different bins.
Expected shortfall at level a is the mean of the worst k = (1 - a) N values (the largest
floor(k) in full, the next one with weight k - floor(k)) of the same placed values, computed
as the a-quantile plus the mean excess over it. Whole bins contribute their exact sums, so
ES is exact but for the tail members of the bin where the tail starts, and by construction
never below the a-quantile: every tail value is at least that quantile.

`index` works on NumPy and JAX arrays alike (pass the array module).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PER_DECADE = 300
DECADES = 14


@dataclass(frozen=True)
class Bins:
    kind: str  # usd | fraction | ratio | count | linear | asinh
    n: int  # number of bins
    lo: float = 0.0
    hi: float = 1.0
    per_decade: int = PER_DECADE  # usd bins only
    scale: float = 1.0  # asinh bins only

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
        else:  # ratio / linear / asinh: equal widths in u
            u, ulo, uhi = self._u(x, xp), *self._u_range()
            i = xp.clip(xp.floor((u - ulo) / (uhi - ulo) * self.n), 0, self.n - 1)
        return i.astype(xp.int32)

    def _u(self, x, xp=np):
        return xp.arcsinh(x / self.scale) if self.kind == "asinh" else x

    def _u_range(self) -> tuple[float, float]:
        return float(self._u(self.lo)), float(self._u(self.hi))

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
            edges = np.linspace(*self._u_range(), self.n + 1)
            if self.kind == "asinh":
                edges = self.scale * np.sinh(edges)
            lo, hi = edges[:-1], edges[1:]
        return lo, hi


def usd() -> Bins:
    return Bins("usd", 2 * PER_DECADE * DECADES + 1)


def fraction() -> Bins:
    return Bins("fraction", 4001)


def ratio() -> Bins:
    return Bins("ratio", 8000, -1.0, 1.0)


def count(max_count: int) -> Bins:
    return Bins("count", max_count + 1)


# Fan charts, kept small because these histograms ride in the scan carry through every step.
# Log mark relative to the start: 640 asinh bins on [-6, 6] (a fall to 0.25% of the start
# price, a rise to 403 times it), 0.26% wide at 0, 0.6% at -0.4, 1.6% at -1.2, so that no
# realistic path leaves the range; a band that still falls in an end bin is marked clipped.
# Cumulative liquidations (USD): 40 log bins per decade (6% wide).
FAN_PRICE = Bins("asinh", 640, -6.0, 6.0, scale=0.2)
FAN_USD = Bins("usd", 2 * 40 * DECADES + 1, per_decade=40)


def _lerp(a, b, t):
    """a + t (b - a) as NumPy's quantile computes it (monotone in t, exact at t = 0 and 1)."""
    d = b - a
    return np.where(t >= 0.5, b - d * (1 - t), a + d * t)


def tail_weight(n, level: float) -> np.ndarray:
    """k = (1 - level) n: how many paths lie beyond the level-quantile (rounded to 1e-9 so
    that e.g. 10 paths at 0.9 give exactly 1)."""
    return np.round((1.0 - level) * np.asarray(n, float), 9)


class BinStats:
    """Per-bin statistics of some columns: counts `[bins, cols]`, and optionally exact sums,
    minima and maxima of the members `[bins, cols]` (else members are spread over `bounds`)."""

    def __init__(
        self,
        counts: np.ndarray,
        bounds: tuple[np.ndarray, np.ndarray] | None,
        sums: np.ndarray | None = None,
        mins: np.ndarray | None = None,
        maxs: np.ndarray | None = None,
    ):
        cols = lambda a: np.asarray(a, float).reshape(np.shape(counts)[0], -1)
        self.c = cols(counts)
        self.cum = np.cumsum(self.c, axis=0)
        self.n = self.cum[-1]
        self.exact = sums is not None
        if self.exact:
            self.s, self.m, self.M = cols(sums), cols(mins), cols(maxs)
        else:
            lo, hi = (np.asarray(b, float)[:, None] for b in bounds)
            self.m, self.M = np.broadcast_to(lo, self.c.shape), np.broadcast_to(hi, self.c.shape)

    def locate(self, rank: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bin `[cols]` of the (integer) rank `[cols]` in columns j `[cols]`, and the rank's
        position among that bin's members."""
        b = np.minimum(np.sum(self.cum[:, j] <= rank[None, :], axis=0), self.c.shape[0] - 1)
        return b, rank - (self.cum[b, j] - self.c[b, j])

    def _interior(self, b: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spacing of the members between the bin's min and max (exact statistics)."""
        c, m, M = self.c[b, j], self.m[b, j], self.M[b, j]
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = np.clip((self.s[b, j] - m - M) / (c - 2), m, M)
            room = 2 * np.minimum(mu - m, M - mu) / (c - 3)
            d = np.where(c > 3, np.minimum((M - m) / (c - 1), room), 0.0)
        return mu, d

    def placed(self, b: np.ndarray, j: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Value of member `pos` (0 = smallest) of bin b in column j."""
        c, m, M = self.c[b, j], self.m[b, j], self.M[b, j]
        if not self.exact:
            return m + (pos + 0.5) / np.maximum(c, 1) * (M - m)
        mu, d = self._interior(b, j)
        with np.errstate(invalid="ignore"):
            inner = np.clip(mu + d * (pos - (c - 1) / 2), m, M)
        single = self.s[b, j]
        return np.where(c == 1, single, np.where(pos <= 0, m, np.where(pos >= c - 1, M, inner)))

    def sum_from(self, b: np.ndarray, j: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Sum of the placed members `pos .. c - 1` of bin b in column j (exact statistics)."""
        c, M = self.c[b, j], self.M[b, j]
        mu, d = self._interior(b, j)
        p = c - 1 - pos  # interior members from pos on
        interior = M + p * (mu + d * (pos - 1) / 2)
        return np.where(pos <= 0, self.s[b, j], np.where(pos >= c, 0.0, np.where(pos == c - 1, M, interior)))

    def order_statistic(self, rank: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Placed value of each (integer) rank `[cols]` in columns j `[cols]`."""
        b, pos = self.locate(rank, j)
        return self.placed(b, j, pos)

    def quantile(self, q: float) -> np.ndarray:
        """NumPy-'linear' q-quantile of every column `[cols]` (NaN for an empty column)."""
        j = np.arange(self.c.shape[1])
        h = q * np.maximum(self.n - 1, 0)
        below = np.floor(h)
        above = np.minimum(below + 1, np.maximum(self.n - 1, 0))
        out = _lerp(self.order_statistic(below, j), self.order_statistic(above, j), h - below)
        return np.where(self.n > 0, out, np.nan)

    def clipped(self, q: float) -> np.ndarray:
        """Whether the q-quantile of a column `[cols]` reads an end bin (a value that may lie
        beyond the bins' range)."""
        j = np.arange(self.c.shape[1])
        h = q * np.maximum(self.n - 1, 0)
        ends = [self.locate(r, j)[0] for r in (np.floor(h), np.ceil(h))]
        last = self.c.shape[0] - 1
        return np.any([(e == 0) | (e == last) for e in ends], axis=0) & (self.n > 0)

    def tail_mean(self, level: float) -> np.ndarray:
        """Expected shortfall `[cols]`: mean of the worst (largest) `1 - level` share, as the
        level-quantile plus the mean excess of the tail over it (never below the quantile)."""
        j = np.arange(self.c.shape[1])
        q = self.quantile(level)
        k = np.maximum(tail_weight(self.n, level), 1e-300)
        whole = np.floor(k)
        first = np.maximum(self.n - np.ceil(k), 0)  # lowest rank in the tail
        w_first = np.where(k > whole, k - whole, 1.0)
        b, pos = self.locate(first, j)
        # members of the boundary bin above the first tail rank, and that rank's share
        above = self.sum_from(b, j, pos + 1) - (self.c[b, j] - 1 - pos) * q
        first_excess = w_first * (self.placed(b, j, pos) - q)
        higher = np.arange(self.c.shape[0])[:, None] > b[None, :]
        excess_bins = np.where(higher, np.maximum(self.s - self.c * q[None, :], 0.0), 0.0).sum(0)
        excess = excess_bins + np.maximum(above, 0.0) + np.maximum(first_excess, 0.0)
        return np.where(self.n > 0, q + excess / k, np.nan)


def quantiles(stats: BinStats, qs, shape: tuple[int, ...]) -> np.ndarray:
    """Quantiles `[len(qs), *shape]` of the columns of `stats`."""
    return np.stack([stats.quantile(q) for q in qs]).reshape((len(qs),) + shape)


def quantiles_from_counts(counts: np.ndarray, bins: Bins, qs) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles `[len(qs), ...]` from counts `[n, ...]` (members spread evenly inside each
    bin), and whether each reads an end bin (possibly clipped) `[len(qs), ...]`."""
    stats = BinStats(counts, bins.bounds())
    shape = counts.shape[1:]
    clipped = np.stack([stats.clipped(q) for q in qs]).reshape((len(qs),) + shape)
    return quantiles(stats, qs, shape), clipped
