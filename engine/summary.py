"""A plain-text summary of a simulation's key figures (rich table)."""

from __future__ import annotations

import io

import xarray as xr
from rich.console import Console
from rich.table import Table

ROWS = (
    ("liquidated_total", "Liquidated, all assets (USD)"),
    ("trader_loss", "Trader losses (USD)"),
    ("insurance_fund_draw", "Insurance fund draw (USD)"),
    ("adl_notional", "ADL notional (USD)"),
    ("bad_debt", "Bad debt (USD)"),
)


def _usd(x: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:,.2f} {unit}"
    return f"{x:,.0f}"


def summary_table(ds: xr.Dataset, point: int = 0) -> str:
    """Median, 99% quantile, ES99 and mean +- MC error of the key outputs at one point."""
    p = ds.isel(point=point)
    t = Table(title=f"liqstress: {int(ds.attrs['n_paths']):,} paths, point {point}")
    for col in ("metric", "median", "q99", "ES99", "mean", "± MC s.e."):
        t.add_column(col, justify="right" if col != "metric" else "left")
    for name, label in ROWS:
        q = p[name]
        t.add_row(
            label, _usd(float(q.sel(quantile=0.5))), _usd(float(q.sel(quantile=0.99))),
            _usd(float(p[f"es99_{name}"])), _usd(float(p[f"{name}_mean"])),
            _usd(float(p[f"{name}_mc_se"])),
        )
    for a in ds.asset.values:
        dd = p["max_drawdown"].sel(asset=a)
        t.add_row(
            f"Max drawdown {a}", f"{float(dd.sel(quantile=0.5)):.1%}",
            f"{float(dd.sel(quantile=0.99)):.1%}", "", f"{float(p['max_drawdown_mean'].sel(asset=a)):.1%}",
            f"{float(p['max_drawdown_mc_se'].sel(asset=a)):.2%}",
        )
    long = float(p["liquidated_notional_mean"].sel(side="long").sum())
    total = float(p["liquidated_total_mean"])
    t.add_row("Long share of liquidations", f"{long / total:.1%}" if total > 0 else "n/a", "", "", "", "")
    t.add_row("P(bad debt > 0)", f"{float(p['p_bad_debt']):.3f}", "", "", "", "")
    buf = io.StringIO()
    Console(file=buf, width=110, force_terminal=False).print(t)
    return buf.getvalue()
