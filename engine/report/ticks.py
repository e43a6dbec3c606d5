"""Tick labels of the plots: amounts with k/M/B/T suffixes, and log axes in plain numbers."""

from __future__ import annotations

import itertools
import math

from matplotlib.axis import Axis
from matplotlib.ticker import Formatter, FuncFormatter

from engine.report.units import UNITS


def amount(x: float, step: float | None = None, scale: float | None = None) -> str:
    """`1.5e9` -> "1.5 B", `0.3` -> "0.3". With `step` (the spacing of neighbouring ticks) as
    many decimals as keep them apart ("3.2225 B"); else three significant digits. The suffix
    is that of `scale` (default `x`), so an axis's ticks share one: "0.5 B", "1.0 B"."""
    scale = abs(x if scale is None else scale)
    # beyond a thousand T the suffixes stop helping: 2.18e+20
    big = scale >= 1e15
    div, unit = next(((d, u) for d, u in UNITS if scale >= d and not big), (1.0, ""))
    suffix = f" {unit}" if unit else ""
    if x == 0:
        return "0"
    if step and not big:
        return f"{x / div:.{_decimals(step / div)}f}{suffix}"
    return f"{x / div:.3g}{suffix}"


def _decimals(step: float, most: int = 6) -> int:
    """The fewest decimals that write `step` exactly (2.5 -> 1, 0.0025 -> 4), at most `most`."""
    return next((d for d in range(most) if abs(step * 10**d - round(step * 10**d)) < 1e-6), most)


class Amounts(Formatter):
    """Tick labels of an amount axis: `amount` at the precision the tick spacing needs."""

    def __call__(self, x: float, pos=None) -> str:
        return amount(x)

    def format_ticks(self, values) -> list[str]:
        steps = [abs(b - a) for a, b in itertools.pairwise(values) if b != a]
        scale = max((abs(v) for v in values), default=0.0)
        return [amount(x, min(steps) if steps else None, scale) for x in values]


def plain_log_axis(axis: Axis) -> None:
    """Label a log-scaled axis "0.3", "20", "1.5 M" instead of matplotlib's `3×10^-1`.

    Minor ticks (2..9 × 10^k) are labelled only where the view spans few decades: all of them
    under one decade, those at 2, 3 and 5 × 10^k under two, none beyond (they would overlap).
    """

    def minor(x: float, _pos=None) -> str:
        lo, hi = sorted(axis.get_view_interval())
        if x <= 0 or lo <= 0:
            return ""
        decades = math.log10(hi / lo)
        mantissa = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
        keep = decades < 1 or (decades < 2 and mantissa in (2, 3, 5))
        return amount(x) if keep else ""

    axis.set_major_formatter(FuncFormatter(lambda x, _pos=None: amount(x)))
    axis.set_minor_formatter(FuncFormatter(minor))
