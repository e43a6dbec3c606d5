"""How amounts read in text: the one USD formatter of tables and reports, and the suffixes
(k, M, B, T) that the plots' tick labels (`engine.report.ticks`) share with it."""

from __future__ import annotations

UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
# Significant digits of `usd(short=True)`: terminal tables fit 80 columns with them, and the
# Monte Carlo error of a run's figures is rarely below a tenth of a percent.
SHORT_DIGITS = 3


def usd(x: float, signed: bool = False, short: bool = False) -> str:
    """A USD amount for tables: `1.234e9` -> "1.23 B", `950.4` -> "950"; `signed` writes a
    "+" before a positive amount (differences). Two decimals after the suffix, whole dollars
    below a thousand; `short`: three significant digits (`13.54e9` -> "13.5 B", `274.6e6` ->
    "275 M"), for the terminal's tables."""
    sign = "+" if signed and x > 0 else ""
    if short:
        x = float(f"{x:.{SHORT_DIGITS}g}")  # rounded first, so that 999.7 k reads "1.00 M"
    for div, unit in UNITS:
        if abs(x) >= div:
            v = x / div
            decimals = SHORT_DIGITS - len(f"{abs(v):.0f}") if short else 2
            return f"{sign}{v:,.{max(decimals, 0)}f} {unit}"
    return f"{sign}{x:,.0f}"
