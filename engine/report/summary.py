"""A plain-text summary of a simulation's key figures (rich table).

Quantiles and ES99 that the cube flags as not estimable (too few paths; `engine.sim.reduce`) are
shown as `n/e`, with a note that says what each needs; so is a standard error from one path.
Runs of fewer than 100 paths also get a warning. The table fits an 80-column terminal
(`WIDTH`): amounts in three significant digits, long labels wrapped.
"""

from __future__ import annotations

import io
import math

import xarray as xr
from rich.console import Console
from rich.table import Table

from engine.report.units import usd
from engine.sim.reduce import ES_LEVEL, ESTIMATED, MIN_ES_TAIL_PATHS, QUANTILES, es_status, quantile_status

NOT_ESTIMABLE = "n/e"
# Below this many paths even q99 is not estimable: the whole table describes a handful of paths.
FEW_PATHS = 100
# A standard error needs two paths: from one the cube's sample variance (and so its s.e.) is 0.
MIN_SE_PATHS = 2
# Columns of the terminal: `summary_table` renders at this width, and the tables `compare`
# prints fit it.
WIDTH = 80

ROWS = (
    ("liquidated_total", "Liquidated, all assets"),
    ("trader_loss", "Trader losses"),
    ("insurance_fund_draw", "Insurance fund draw"),
    ("adl_notional", "ADL notional"),
    ("bad_debt", "Bad debt"),
    ("largest_account_loss", "Largest loss of one account"),
)


def short_usd(x: float) -> str:
    """A USD amount for the terminal's tables (three significant digits)."""
    return usd(x, short=True)


def estimate(ds: xr.Dataset, name: str, level: float | None = None) -> xr.DataArray:
    """Quantile `level` of output `name` (level None: its ES99), NaN where the cube flags it
    as not estimable. Cubes written before the flags existed are judged by `n_paths`."""
    n = int(ds.attrs["n_paths"])
    if level is None:
        value = ds[f"es99_{name}"]
        status = ds["es99_status"] if "es99_status" in ds else es_status(n)
    else:
        value = ds[name].sel(quantile=level)
        status = (
            ds["quantile_status"].sel(quantile=level)
            if "quantile_status" in ds
            else quantile_status(n, [level])[0]
        )
    return value.where(status == ESTIMATED)


def cell(x: float, fmt) -> str:
    """`fmt(x)`, or `NOT_ESTIMABLE` for NaN (a flagged estimate)."""
    return NOT_ESTIMABLE if math.isnan(x) else fmt(x)


def paths_needed(level: float | None = None) -> int:
    """Fewest paths for the quantile at `level` (None: ES99) to be estimable."""
    beyond = (1.0 - ES_LEVEL) / MIN_ES_TAIL_PATHS if level is None else min(level, 1.0 - level)
    return math.ceil(round(1.0 / beyond, 6))


def mc_error(n_paths: int, se: float) -> float:
    """A Monte Carlo standard error, NaN (shown `n/e`) when `n_paths` is too few to have one."""
    return se if n_paths >= MIN_SE_PATHS else math.nan


def few_paths_note(n_paths: int) -> str:
    """What a run of `n_paths` cannot estimate and what each statistic needs ('' if none)."""
    levels = [q for q, s in zip(QUANTILES, quantile_status(n_paths, QUANTILES)) if s != ESTIMATED]
    needs = {f"q{100 * q:g}": (paths_needed(q), "") for q in levels}
    if es_status(n_paths) != ESTIMATED:
        needs["ES99"] = (paths_needed(), f" ({MIN_ES_TAIL_PATHS} paths beyond q99)")
    if n_paths < MIN_SE_PATHS:
        needs["a standard error"] = (MIN_SE_PATHS, "")
    if not needs:
        return ""
    paths = f"{n_paths:,} path{'s' * (n_paths != 1)}"
    listed = ", ".join(f"{k} needs {v:,}{why}" for k, (v, why) in needs.items())
    note = (
        f"{NOT_ESTIMABLE}: not estimable from {paths} ({listed}); "
        f"rerun with --paths {max(v for v, _ in needs.values())} to estimate them all."
    )
    if n_paths < FEW_PATHS:
        note = f"Warning: only {paths}: the figures describe these paths, not the loss distribution. {note}"
    return note


def render(table) -> str:
    """A rich renderable as the text of an 80-column terminal (`WIDTH`)."""
    buf = io.StringIO()
    Console(file=buf, width=WIDTH, force_terminal=False).print(table)
    return buf.getvalue()


def summary_table(ds: xr.Dataset, point: int = 0) -> str:
    """Median, 99% quantile, ES99 and mean +- MC error of the key outputs at one point, as
    text at most `WIDTH` columns wide (amounts in USD, three significant digits)."""
    p = ds.isel(point=point)
    n = int(ds.attrs["n_paths"])
    t = Table(
        title=f"liqstress: {n:,} paths, point {point} (amounts in USD)", caption=few_paths_note(n) or None
    )
    t.add_column("metric")
    for col in ("median", "q99", "ES99", "mean", "± MC s.e."):
        t.add_column(col, justify="right", no_wrap=True)
    for name, label in ROWS:
        t.add_row(
            label,
            cell(float(estimate(p, name, 0.5)), short_usd),
            cell(float(estimate(p, name, 0.99)), short_usd),
            cell(float(estimate(p, name)), short_usd),
            short_usd(float(p[f"{name}_mean"])),
            cell(mc_error(n, float(p[f"{name}_mc_se"])), short_usd),
        )
    pct = lambda v: f"{v:.1%}"
    for a in ds.asset.values:
        dd = p.sel(asset=a)
        t.add_row(
            f"Max drawdown {a}",
            cell(float(estimate(dd, "max_drawdown", 0.5)), pct),
            cell(float(estimate(dd, "max_drawdown", 0.99)), pct),
            "",
            pct(float(dd["max_drawdown_mean"])),
            cell(mc_error(n, float(dd["max_drawdown_mc_se"])), lambda v: f"{v:.2%}"),
        )
    long = float(p["liquidated_notional_mean"].sel(side="long").sum())
    total = float(p["liquidated_total_mean"])
    t.add_row("Long share of liquidations", f"{long / total:.1%}" if total > 0 else "n/a", "", "", "", "")
    t.add_row("P(bad debt > 0)", f"{float(p['p_bad_debt']):.3f}", "", "", "", "")
    for label, value in book_rows(p, short_usd):
        t.add_row(label, value, "", "", "", "")
    return render(t)


def book_rows(p: xr.Dataset, fmt=usd) -> list[tuple[str, str]]:
    """Rows on what the book's detail did at one point (means over paths), where it did
    something: stops, positions and accounts liquidated, notional closed by holders next to the
    liquidated, cross-margin and collateral shares; amounts written by `fmt`."""
    if "stop_notional_mean" not in p:  # a cube written before books had detail
        return []
    mean = lambda name: float(p[f"{name}_mean"].sum())
    total = mean("liquidated_total")
    share = lambda x: f"{x / total:.1%}" if total > 0 else "n/a"
    by_mode = p["liquidated_entry_by_mode_mean"]
    entry = float(by_mode.sum())
    rows = [("Positions liquidated (mean)", f"{mean('positions_liquidated'):,.0f}")]
    if "voluntary_closed_mean" in p and mean("voluntary_closed") > 0:
        # holders' voluntary closing (`market.derisk`) next to the forced kind
        rows.append(("Liquidated (mean, USD)", fmt(total)))
        rows.append(("Closed by holders (mean, USD)", fmt(mean("voluntary_closed"))))
    if mean("stop_notional") > 0:
        rows.append(("Stop orders triggered (mean, USD)", fmt(mean("stop_notional"))))
    if float(by_mode.sel(margin_mode="cross")) > 0:
        cross = float(by_mode.sel(margin_mode="cross")) / entry
        rows.append(("Accounts liquidated (mean)", f"{mean('accounts_liquidated'):,.0f}"))
        rows.append(("Cross-margin share of liquidations (at entry)", f"{cross:.1%}"))
        rows.append(("Share of liquidations caused by collateral", share(mean("collateral_liquidated"))))
    return rows
