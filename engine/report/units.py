"""How amounts read in text: the one USD formatter of tables and reports, and the suffixes
(k, M, B, T) that the plots' tick labels (`engine.report.ticks`) share with it."""

from __future__ import annotations

UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def usd(x: float, signed: bool = False) -> str:
    """A USD amount for tables: `1.234e9` -> "1.23 B", `950.4` -> "950"; `signed` writes a
    "+" before a positive amount (differences). Two decimals after the suffix, whole dollars
    below a thousand."""
    sign = "+" if signed and x > 0 else ""
    for div, unit in UNITS:
        if abs(x) >= div:
            return f"{sign}{x / div:,.2f} {unit}"
    return f"{sign}{x:,.0f}"
