"""Policy comparison: key-metric tables with paired differences, and plots, from result cubes.

A *policy* is one grid point of a run's cube. Within one run every point saw the same paths
(common random numbers), and the cube's `<name>_diff_mean` / `<name>_diff_se` are the paired
differences against the run's baseline point: their 95% intervals are `mean ± 1.96 se` and
far narrower than the spread of either point. Points of *other* runs are compared with the
first run's baseline by the difference of their means with the unpaired standard error
`sqrt(se_a² + se_b²)` (conservative when the runs share seed and paths; correct otherwise):
the per-path outputs needed for a paired error are not kept.

`write_report` writes `report.md` and `plots/*.png`:
- `loss_distributions.png`: median, 90/99/99.9% quantiles and ES99 of the loss variables
  per policy;
- `heatmap.png`: ES99 of liquidations and P(bad debt) over two sweep axes (other axes at
  the baseline's values), or `sweep.png`, the mean and ES99 along the one axis there is;
- `fan_charts.png`: bands of the mark price and cumulative liquidations over time, for the
  baseline, with the medians of up to four other policies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from rich.table import Table

from engine import tipping

Z95 = 1.959963984540054
LOSSES = (
    ("liquidated_total", "Liquidated notional"),
    ("bad_debt", "Bad debt"),
    ("insurance_fund_draw", "Insurance-fund draw"),
    ("trader_loss", "Trader losses"),
)
DIFFS = ("liquidated_total", "bad_debt", "insurance_fund_draw", "trader_loss", "max_drawdown")
MAX_FAN_OTHERS = 4


@dataclass(frozen=True)
class Policy:
    """One grid point of one run: its statistics (no sweep dims) and how to compare it."""

    label: str
    ds: xr.Dataset
    run: str
    baseline: bool  # the reference of the comparison
    paired: bool  # its differences to the reference are paired (same run)


def _fmt_value(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    return f"{v:g}" if isinstance(v, float) else str(v)


def policies(cubes: list[tuple[str, xr.Dataset]]) -> list[Policy]:
    """The policies of one or more cubes, the first cube's baseline marked as the reference."""
    out = []
    for k, (run, cube) in enumerate(cubes):
        dims = [d for d in str(cube.attrs.get("sweep_dims", "")).split() if d in cube.dims]
        prefix = f"{run}: " if len(cubes) > 1 else ""
        base = int(cube.attrs.get("baseline_point", 0))
        if not dims:
            name = str(cube.attrs.get("title", run)).removeprefix("liqstress loss distributions: ")
            out.append(Policy(run if len(cubes) > 1 else name, cube, run, k == 0, k == 0))
            continue
        stacked = cube.stack(point=dims)
        for i in range(stacked.sizes["point"]):
            p = stacked.isel(point=i)
            label = ", ".join(f"{d}={_fmt_value(p[d].values)}" for d in dims)
            p = p.drop_vars(["point", *dims])
            out.append(Policy(prefix + label, p, run, k == 0 and i == base, k == 0))
    return out


def _lead(da: xr.DataArray) -> xr.DataArray:
    return da.isel(asset=0) if "asset" in da.dims else da


def metrics(p: Policy) -> dict[str, float]:
    """The key figures of a policy (USD, drawdown as a fraction of the lead asset's price)."""
    ds = p.ds
    q = lambda name, level: float(_lead(ds[name]).sel(quantile=level))
    return {
        "liq_median": q("liquidated_total", 0.5),
        "liq_q99": q("liquidated_total", 0.99),
        "liq_es99": float(ds["es99_liquidated_total"]),
        "bad_debt_mean": float(ds["bad_debt_mean"]),
        "p_bad_debt": float(ds["p_bad_debt"]),
        "fund_mean": float(ds["insurance_fund_draw_mean"]),
        "fund_q99": q("insurance_fund_draw", 0.99),
        "dd_median": q("max_drawdown", 0.5),
        "dd_q99": q("max_drawdown", 0.99),
    }


def difference(p: Policy, ref: Policy, name: str) -> tuple[float, float, bool]:
    """Mean difference of `name` against the reference, its standard error, and whether paired."""
    if p.paired:
        return float(_lead(p.ds[f"{name}_diff_mean"])), float(_lead(p.ds[f"{name}_diff_se"])), True
    d = float(_lead(p.ds[f"{name}_mean"])) - float(_lead(ref.ds[f"{name}_mean"]))
    se = math.hypot(float(_lead(p.ds[f"{name}_mc_se"])), float(_lead(ref.ds[f"{name}_mc_se"])))
    return d, se, False


def usd(x: float, signed: bool = False) -> str:
    sign = "+" if signed and x > 0 else ""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{sign}{x / div:,.2f} {unit}"
    return f"{sign}{x:,.0f}"


def _diff_text(name: str, d: float, se: float) -> str:
    if name == "max_drawdown":
        return f"{d:+.2%} ± {Z95 * se:.2%}"
    return f"{usd(d, signed=True)} ± {usd(Z95 * se)}"


def lead_asset(cube: xr.Dataset) -> str:
    return str(cube.asset.values[0])


def tables(pols: list[Policy], asset: str) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """Header and rows of the metrics table and of the differences table."""
    ref = next(p for p in pols if p.baseline)
    head = [
        "policy",
        "liq. median",
        "liq. q99",
        "liq. ES99",
        "bad debt mean",
        "P(bad debt)",
        "fund draw mean",
        "fund draw q99",
        f"{asset} drawdown median",
        f"{asset} drawdown q99",
    ]
    rows = []
    for p in pols:
        m = metrics(p)
        rows.append(
            [
                p.label + (" (baseline)" if p.baseline else ""),
                usd(m["liq_median"]),
                usd(m["liq_q99"]),
                usd(m["liq_es99"]),
                usd(m["bad_debt_mean"]),
                f"{m['p_bad_debt']:.3f}",
                usd(m["fund_mean"]),
                usd(m["fund_q99"]),
                f"{m['dd_median']:.1%}",
                f"{m['dd_q99']:.1%}",
            ]
        )
    dhead = [
        "policy",
        "Δ liquidated",
        "Δ bad debt",
        "Δ fund draw",
        "Δ trader loss",
        f"Δ {asset} drawdown",
        "pairing",
    ]
    drows = []
    for p in pols:
        if p.baseline:
            continue
        cells = []
        for name in DIFFS:
            d, se, _ = difference(p, ref, name)
            cells.append(_diff_text(name, d, se))
        drows.append([p.label, *cells, "paired" if p.paired else "unpaired"])
    return head, rows, dhead, drows


def rich_table(pols: list[Policy], asset: str, title: str) -> Table:
    """The metrics and the paired difference of liquidations, for the terminal."""
    _, rows, _, drows = tables(pols, asset)
    diff_by_label = {r[0]: r[1] for r in drows}
    t = Table(title=title)
    short = [
        "policy",
        "liq. median",
        "liq. q99",
        "liq. ES99",
        "bad debt",
        "P(bad debt)",
        "fund draw",
        "fund q99",
        "Δ liq. (95%)",
    ]
    for h in short:
        t.add_column(h, justify="left" if h == "policy" else "right", no_wrap=h == "policy")
    for p, r in zip(pols, rows):
        t.add_row(*r[:8], "baseline" if p.baseline else diff_by_label.get(p.label, ""))
    return t


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def _usd_tick(x: float, _pos=None) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g}"


_USD_AXIS = FuncFormatter(_usd_tick)


def plot_loss_distributions(pols: list[Policy], path: Path) -> None:
    levels = (0.5, 0.9, 0.99, 0.999)
    markers = {0.5: ("o", "median"), 0.9: ("|", "q90"), 0.99: ("D", "q99"), 0.999: ("^", "q99.9")}
    n = len(pols)
    fig = Figure(figsize=(10, 1.6 + 0.32 * n * 2), dpi=80)
    axes = fig.subplots(2, 2, sharey=True)
    ys = np.arange(n)[::-1]
    for ax, (name, title) in zip(axes.flat, LOSSES):
        for y, p in zip(ys, pols):
            qs = [float(p.ds[name].sel(quantile=lv)) for lv in levels]
            color = "C3" if p.baseline else "C0"
            ax.plot([qs[0], qs[-1]], [y, y], color=color, lw=1.5, alpha=0.6)
            for lv, q in zip(levels, qs):
                m, lab = markers[lv]
                ax.plot(q, y, m, color=color, ms=5, label=lab if y == ys[0] else None)
            ax.plot(
                float(p.ds[f"es99_{name}"]), y, "x", color="k", ms=6, label="ES99" if y == ys[0] else None
            )
        ax.set_title(f"{title} (USD)", fontsize=10)
        ax.xaxis.set_major_formatter(_USD_AXIS)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0, 0].set_yticks(ys, [p.label + (" *" if p.baseline else "") for p in pols], fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Loss distributions per policy (* baseline)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)


def _axis_ticks(cube: xr.Dataset, dim: str) -> list[str]:
    return [_fmt_value(v) for v in cube[dim].values]


def plot_heatmap(cube: xr.Dataset, dims: tuple[str, str], path: Path) -> None:
    """ES99 of liquidations and P(bad debt) over two sweep axes, other axes at the baseline."""
    x, y = dims
    base = cube.stack(point=[d for d in str(cube.attrs["sweep_dims"]).split()]).isel(
        point=int(cube.attrs.get("baseline_point", 0))
    )
    fixed = {d: base[d].values.item() for d in str(cube.attrs["sweep_dims"]).split() if d not in dims}
    sub = cube.sel(fixed) if fixed else cube
    panels = (
        ("es99_liquidated_total", "ES99 of liquidations (USD)", usd),
        ("p_bad_debt", "P(bad debt > 0)", lambda v: f"{v:.3f}"),
    )
    fig = Figure(figsize=(10, 4), dpi=80)
    axes = fig.subplots(1, 2)
    for ax, (var, title, fmt) in zip(axes, panels):
        z = sub[var].transpose(y, x).values
        im = ax.imshow(z, origin="lower", aspect="auto", cmap="magma_r")
        ax.set_xticks(range(z.shape[1]), _axis_ticks(sub, x), fontsize=8)
        ax.set_yticks(range(z.shape[0]), _axis_ticks(sub, y), fontsize=8)
        ax.set_xlabel(cube[x].attrs.get("sweep_path", x))
        ax.set_ylabel(cube[y].attrs.get("sweep_path", y))
        ax.set_title(title, fontsize=10)
        hi = np.nanmax(z) if np.isfinite(z).any() else 0
        for (i, j), v in np.ndenumerate(z):
            ax.text(
                j,
                i,
                fmt(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if hi > 0 and v > 0.6 * hi else "black",
            )
        fig.colorbar(im, ax=ax, format=_USD_AXIS if var.startswith("es99") else None)
    note = ", ".join(f"{k}={_fmt_value(v)}" for k, v in fixed.items())
    fig.suptitle("Sweep heatmap" + (f" at {note}" if note else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path)


def plot_sweep_line(cube: xr.Dataset, dim: str, path: Path) -> None:
    """Mean (with 95% MC interval) and ES99 of liquidations along the one sweep axis."""
    dims = str(cube.attrs["sweep_dims"]).split()
    base = cube.stack(point=dims).isel(point=int(cube.attrs.get("baseline_point", 0)))
    sub = cube.sel({d: base[d].values.item() for d in dims if d != dim})
    xs = np.arange(sub.sizes[dim])
    fig = Figure(figsize=(7, 4), dpi=80)
    ax = fig.subplots()
    mean, se = sub["liquidated_total_mean"].values, sub["liquidated_total_mc_se"].values
    ax.errorbar(xs, mean, yerr=Z95 * se, marker="o", capsize=3, label="mean ± 95% MC interval")
    ax.plot(xs, sub["es99_liquidated_total"].values, "s--", label="ES99")
    ax.plot(xs, sub["liquidated_total"].sel(quantile=0.5).values, "^:", label="median")
    ax.set_xticks(xs, _axis_ticks(sub, dim))
    ax.set_xlabel(cube[dim].attrs.get("sweep_path", dim))
    ax.set_ylabel("liquidated notional (USD)")
    ax.yaxis.set_major_formatter(_USD_AXIS)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_fan_charts(pols: list[Policy], path: Path) -> None:
    ref = next(p for p in pols if p.baseline)
    others = [p for p in pols if not p.baseline]
    if len(others) > MAX_FAN_OTHERS:
        pick = np.linspace(0, len(others) - 1, MAX_FAN_OTHERS).round().astype(int)
        others = [others[i] for i in sorted(set(pick))]
    assets = [str(a) for a in ref.ds.asset.values][:4]
    fig = Figure(figsize=(3.2 * len(assets) + 1, 5.5), dpi=80)
    axes = fig.subplots(2, len(assets), squeeze=False)
    rows = (
        ("mark_price_band", "mark price (USD)"),
        ("cum_liquidations_band", "cumulative liquidations (USD)"),
    )
    for r, (var, ylabel) in enumerate(rows):
        for c, a in enumerate(assets):
            ax = axes[r, c]
            band = ref.ds[var].sel(asset=a)
            t = ref.ds["time"].values / 60.0
            for lo, hi, alpha in ((0.01, 0.99, 0.15), (0.05, 0.95, 0.25), (0.25, 0.75, 0.4)):
                ax.fill_between(
                    t,
                    band.sel(band_quantile=lo),
                    band.sel(band_quantile=hi),
                    color="C0",
                    alpha=alpha,
                    lw=0,
                    label=f"{lo:.0%}-{hi:.0%}" if (r, c) == (0, 0) else None,
                )
            ax.plot(
                t,
                band.sel(band_quantile=0.5),
                color="C0",
                lw=1.5,
                label=f"median: {ref.label}" if (r, c) == (0, 0) else None,
            )
            for k, p in enumerate(others):
                ax.plot(
                    p.ds["time"].values / 60.0,
                    p.ds[var].sel(asset=a, band_quantile=0.5),
                    lw=1,
                    ls="--",
                    color=f"C{k + 1}",
                    label=f"median: {p.label}" if (r, c) == (0, 0) else None,
                )
            ax.yaxis.set_major_formatter(_USD_AXIS)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(a, fontsize=10)
            if r == 1:
                ax.set_xlabel("hours", fontsize=8)
            if c == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7)
    fig.suptitle(f"Fan charts: bands for the baseline ({ref.label}), medians for others", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)


def heatmap_dims(cube: xr.Dataset) -> list[str]:
    """Sweep axes with more than one value (the first two go into the heatmap)."""
    return [d for d in str(cube.attrs.get("sweep_dims", "")).split() if d in cube.dims and cube.sizes[d] > 1]


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def write_report(cubes: list[tuple[str, xr.Dataset]], out: Path) -> Path:
    """Write `out/report.md` and `out/plots/*.png` comparing the policies of the cubes."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    pols = policies(cubes)
    ref = next(p for p in pols if p.baseline)
    asset = lead_asset(cubes[0][1])
    head, rows, dhead, drows = tables(pols, asset)
    images = []
    plot_loss_distributions(pols, plots / "loss_distributions.png")
    images.append(("Loss distributions per policy", "loss_distributions.png"))
    for run, cube in cubes:
        dims = heatmap_dims(cube)
        suffix = "" if len(cubes) == 1 else f"_{run}"
        if len(dims) >= 2:
            plot_heatmap(cube, (dims[0], dims[1]), plots / f"heatmap{suffix}.png")
            images.append((f"Heatmap over {dims[0]} and {dims[1]} ({run})", f"heatmap{suffix}.png"))
        elif len(dims) == 1:
            plot_sweep_line(cube, dims[0], plots / f"sweep{suffix}.png")
            images.append((f"Liquidations along {dims[0]} ({run})", f"sweep{suffix}.png"))
    plot_fan_charts(pols, plots / "fan_charts.png")
    images.append(("Fan charts of price and cumulative liquidations", "fan_charts.png"))

    runs_lines = []
    for run, cube in cubes:
        dims = str(cube.attrs.get("sweep_dims", "")).split()
        grid = " × ".join(f"{d} ({cube.sizes[d]})" for d in dims) or "a single point"
        runs_lines.append(
            f"- `{run}`: {cube.attrs.get('title', '')}; {int(cube.attrs['n_paths']):,} paths, seed "
            f"{cube.attrs['seed']}, grid {grid}; {cube.attrs.get('source', '')}"
        )
        if tip := tipping.summary_line(cube):
            runs_lines.append(f"  {tip}")
    unpaired = any(not p.paired for p in pols)
    text = [
        f"# liqstress comparison: {', '.join(run for run, _ in cubes)}",
        "",
        *runs_lines,
        "",
        (
            f"Baseline: **{ref.label}**. Quantiles and ES99 are across paths; liquidations are summed "
            f"over assets and sides; drawdown is the maximum peak-to-trough fall of the {asset} mark price."
        ),
        "",
        "## Key metrics per policy",
        "",
        _markdown(head, rows),
        "",
        "## Differences of means against the baseline (95% interval)",
        "",
        "Paired differences: every policy of a run saw the same paths (common random numbers), so the "
        "interval is that of the per-path difference, `mean ± 1.96 s.e.`"
        + (
            " Rows marked *unpaired* come from another run: their interval combines the two runs' "
            "standard errors and is conservative."
            if unpaired
            else ""
        ),
        "",
        _markdown(dhead, drows) if drows else "(only one policy)",
        "",
        "## Plots",
        "",
    ]
    text += [f"### {title}\n\n![{title}](plots/{f})\n" for title, f in images]
    path = out / "report.md"
    path.write_text("\n".join(text), encoding="utf-8")
    return path
