"""The figures of a report, from the policies of result cubes (`engine.report.results`):

- `loss_distributions.png`: median, 90/99/99.9% quantiles and ES99 of the loss variables
  per policy;
- `heatmap.png`: ES99 of liquidations and P(bad debt) over two sweep axes (other axes at
  the baseline's values), or `sweep.png`, the mean and ES99 along the one axis there is;
- `fan_charts.png`: bands of the mark price and cumulative liquidations over time, for the
  baseline, with the medians of up to four other policies.

Quantiles and ES99 with too few paths to estimate them (`engine.report.summary.estimate`) are
drawn where they lie but marked as not estimates: hollow grey markers, dotted grey lines,
hatched heatmap cells whose values end in `*`, each keyed in a legend or title. Clipped fan
bands are gaps, and fan bands with too few paths are left out, both named in the title.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from engine.report.results import LOSSES, Z95, PolicyResult, lead, value_text
from engine.report.summary import estimate, paths_needed
from engine.report.ticks import Amounts
from engine.report.units import usd
from engine.sim.reduce import CLIPPED, ESTIMATED, quantile_status

MAX_FAN_OTHERS = 4
MARGIN = 0.05  # of the data's span, beyond the outermost markers
FLAGGED = "too few paths (not an estimate)"
FLAG_COLOR = "0.55"  # grey: drawn where it lies, but not an estimate
FLAG_MARK = "*"  # after a heatmap cell's value that is not an estimate


def _amount_limits(values: np.ndarray) -> tuple[float, float] | None:
    """x-limits that hold every marker with a margin, or None when all values are zero."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo == hi == 0:
        return None
    pad = MARGIN * ((hi - lo) or abs(hi))
    return lo - pad, hi + pad


def _zero_panel(ax) -> None:
    """A panel whose values are all 0: one tick at 0 near the left, not matplotlib's ±0.04."""
    ax.set_xlim(-MARGIN, 1.0)
    ax.set_xticks([0.0])
    ax.text(0.5, 0.5, "0 on every path", transform=ax.transAxes, ha="center", va="center", fontsize=9)


def _with_status(ds: xr.Dataset, name: str, levels: tuple[float, ...]) -> list[tuple[float, bool]]:
    """(value in USD, estimable) of the quantiles `levels` of loss `name`, then of its ES99: the
    cube keeps the value of a flagged statistic, which the plots draw as not an estimate."""
    out = []
    for lv in (*levels, None):
        raw = ds[f"es99_{name}"] if lv is None else ds[name].sel(quantile=lv)
        out.append((float(lead(raw)), not math.isnan(float(lead(estimate(ds, name, lv))))))
    return out


def plot_loss_distributions(pols: list[PolicyResult], path: Path) -> Figure:
    """Median, q90, q99, q99.9 and ES99 of each loss per policy (one row each), legend below.
    Quantiles and ES99 with too few paths to estimate them are hollow grey markers, off the
    policy's line (`FLAGGED` in the legend)."""
    levels = (0.5, 0.9, 0.99, 0.999)
    markers = {0.5: ("o", "median"), 0.9: ("|", "q90"), 0.99: ("D", "q99"), 0.999: ("^", "q99.9")}
    n = len(pols)
    fig = Figure(figsize=(10, 2.2 + 0.32 * n * 2), dpi=80, layout="constrained")
    axes = fig.subplots(2, 2, sharey=True)
    ys = np.arange(n)[::-1]
    any_flagged = False
    for ax, (name, title) in zip(axes.flat, LOSSES):
        shown = []
        for y, p in zip(ys, pols):
            stats = _with_status(p.ds, name, levels)
            shown += [v for v, _ in stats]
            color = "C3" if p.baseline else "C0"
            estimated = [v for v, ok in stats[:-1] if ok]
            if estimated:
                ax.plot([estimated[0], estimated[-1]], [y, y], color=color, lw=1.5, alpha=0.6)
            looks = [(markers[lv][0], 5, color) for lv in levels] + [("X", 6, "k")]
            for (v, ok), (marker, ms, c) in zip(stats, looks):
                style = {"color": c} if ok else {"mfc": "none", "mec": FLAG_COLOR, "color": FLAG_COLOR}
                ax.plot(v, y, marker, ms=ms, **style)
            any_flagged |= not all(ok for _, ok in stats)
        ax.set_title(f"{title} (USD)", fontsize=10)
        ax.xaxis.set_major_formatter(Amounts())
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # room for labels like "3.225 B"
        limits = _amount_limits(np.asarray(shown))
        if limits is None:
            _zero_panel(ax)
        else:
            ax.set_xlim(*limits)
        ax.set_ylim(ys[-1] - 0.6, ys[0] + 0.6)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0, 0].set_yticks(ys, [p.label + (" *" if p.baseline else "") for p in pols], fontsize=8)
    keys = [Line2D([], [], ls="", marker=m, color="0.3", ms=5, label=lab) for m, lab in markers.values()]
    keys += [Line2D([], [], ls="", marker="X", color="k", ms=6, label="ES99")]
    keys += [
        Line2D([], [], color=c, lw=1.5, alpha=0.6, label=lab)
        for c, lab in (("C3", "baseline"), ("C0", "other"))[: 1 + (n > 1)]
    ]
    if any_flagged:
        keys += [Line2D([], [], ls="", marker="o", mfc="none", mec=FLAG_COLOR, ms=5, label=FLAGGED)]
    fig.legend(handles=keys, loc="outside lower center", ncol=len(keys), fontsize=8)
    fig.suptitle("Loss distributions per policy (* baseline)", fontsize=11)
    fig.savefig(path)
    return fig


def _axis_ticks(cube: xr.Dataset, dim: str) -> list[str]:
    return [value_text(v) for v in cube[dim].values]


def plot_heatmap(cube: xr.Dataset, dims: tuple[str, str], path: Path) -> Figure:
    """ES99 of liquidations and P(bad debt) over two sweep axes, other axes at the baseline.
    ES99 cells with too few paths behind them are hatched and their values marked `FLAG_MARK`."""
    x, y = dims
    base = cube.stack(point=[d for d in str(cube.attrs["sweep_dims"]).split()]).isel(
        point=int(cube.attrs.get("baseline_point", 0))
    )
    fixed = {d: base[d].values.item() for d in str(cube.attrs["sweep_dims"]).split() if d not in dims}
    sub = cube.sel(fixed) if fixed else cube
    es_flagged = estimate(sub, "liquidated_total").isnull().transpose(y, x).values
    panels = (
        ("es99_liquidated_total", "ES99 of liquidations (USD)", usd, es_flagged),
        ("p_bad_debt", "P(bad debt > 0)", lambda v: f"{v:.3f}", np.zeros_like(es_flagged)),
    )
    fig = Figure(figsize=(10, 4), dpi=80)
    axes = fig.subplots(1, 2)
    for ax, (var, title, fmt, flagged) in zip(axes, panels):
        z = sub[var].transpose(y, x).values
        im = ax.imshow(z, origin="lower", aspect="auto", cmap="magma_r")
        ax.set_xticks(range(z.shape[1]), _axis_ticks(sub, x), fontsize=8)
        ax.set_yticks(range(z.shape[0]), _axis_ticks(sub, y), fontsize=8)
        ax.set_xlabel(cube[x].attrs.get("sweep_path", x))
        ax.set_ylabel(cube[y].attrs.get("sweep_path", y))
        ax.set_title(title, fontsize=10)
        hi = np.nanmax(z) if np.isfinite(z).any() else 0
        for (i, j), v in np.ndenumerate(z):
            if flagged[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", ec=FLAG_COLOR, lw=0))
            ax.text(
                j,
                i,
                fmt(v) + FLAG_MARK * bool(flagged[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if hi > 0 and v > 0.6 * hi else "black",
            )
        fig.colorbar(im, ax=ax, format=Amounts() if var.startswith("es99") else None)
    note = ", ".join(f"{k}={value_text(v)}" for k, v in fixed.items())
    title = "Sweep heatmap" + (f" at {note}" if note else "")
    if es_flagged.any():
        title += f"\n{FLAG_MARK}, hatched: ES99 from {FLAGGED}; it needs {paths_needed():,} paths"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    return fig


def plot_sweep_line(cube: xr.Dataset, dim: str, path: Path) -> Figure:
    """Mean (with 95% MC interval) and ES99 of liquidations along the one sweep axis; ES99
    with too few paths behind it is a dotted grey line of hollow markers (`FLAGGED`)."""
    dims = str(cube.attrs["sweep_dims"]).split()
    base = cube.stack(point=dims).isel(point=int(cube.attrs.get("baseline_point", 0)))
    sub = cube.sel({d: base[d].values.item() for d in dims if d != dim})
    xs = np.arange(sub.sizes[dim])
    fig = Figure(figsize=(7, 4), dpi=80)
    ax = fig.subplots()
    mean, se = sub["liquidated_total_mean"].values, sub["liquidated_total_mc_se"].values
    ax.errorbar(xs, mean, yerr=Z95 * se, marker="o", capsize=3, label="mean ± 95% MC interval")
    es = sub["es99_liquidated_total"].values
    flagged = estimate(sub, "liquidated_total").isnull().values
    if not flagged.all():
        ax.plot(xs, np.where(flagged, np.nan, es), "s--", color="C1", label="ES99")
    if flagged.any():
        ax.plot(
            xs, np.where(flagged, es, np.nan), "s:", color=FLAG_COLOR, mfc="none", label=f"ES99: {FLAGGED}"
        )
    ax.plot(xs, estimate(sub, "liquidated_total", 0.5).values, "^:", color="C2", label="median")
    ax.set_xticks(xs, _axis_ticks(sub, dim))
    ax.set_xlabel(cube[dim].attrs.get("sweep_path", dim))
    ax.set_ylabel("liquidated notional (USD)")
    ax.yaxis.set_major_formatter(Amounts())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return fig


def _clipped_note(pols: list[PolicyResult], variables: list[str]) -> str:
    """A line saying why fan-chart bands have gaps, if any band shown is clipped (NaN)."""
    clipped = any(
        bool((p.ds[f"{var}_status"] == CLIPPED).any())
        for p in pols
        for var in variables
        if f"{var}_status" in p.ds
    )
    if not clipped:
        return ""
    return "\ngaps: the band lies beyond the fan-chart histogram's range there (clipped, not an estimate)"


def _band_estimable(ds: xr.Dataset, lo: float, hi: float) -> bool:
    """Whether the cube estimates both edges of the fan band `lo`-`hi` (cubes without the
    flags: judged by `n_paths`)."""
    if "band_quantile_status" in ds:
        status = ds["band_quantile_status"].sel(band_quantile=[lo, hi]).values
    else:
        status = quantile_status(int(ds.attrs["n_paths"]), [lo, hi])
    return bool((status == ESTIMATED).all())


def plot_fan_charts(pols: list[PolicyResult], path: Path) -> Figure:
    """Bands of the mark price and cumulative liquidations `[time]` for the baseline, medians of
    up to `MAX_FAN_OTHERS` other policies; clipped (NaN) bands are gaps, named in the title, and
    bands with too few paths to estimate them are left out, also named."""
    ref = next(p for p in pols if p.baseline)
    others = [p for p in pols if not p.baseline]
    if len(others) > MAX_FAN_OTHERS:
        pick = np.linspace(0, len(others) - 1, MAX_FAN_OTHERS).round().astype(int)
        others = [others[i] for i in sorted(set(pick))]
    assets = [str(a) for a in ref.ds.asset.values][:4]
    fig = Figure(figsize=(3.2 * len(assets) + 1, 5.5), dpi=80, layout="constrained")
    axes = fig.subplots(2, len(assets), squeeze=False)
    rows = (
        ("mark_price_band", "mark price (USD)"),
        ("cum_liquidations_band", "cumulative liquidations (USD)"),
    )
    bands = ((0.01, 0.99, 0.15), (0.05, 0.95, 0.25), (0.25, 0.75, 0.4))
    shown = [b for b in bands if _band_estimable(ref.ds, *b[:2])]
    for r, (var, ylabel) in enumerate(rows):
        for c, a in enumerate(assets):
            ax = axes[r, c]
            band = ref.ds[var].sel(asset=a)
            t = ref.ds["time"].values / 60.0
            for lo, hi, alpha in shown:
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
            ax.yaxis.set_major_formatter(Amounts())
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(a, fontsize=10)
            if r == 1:
                ax.set_xlabel("hours", fontsize=8)
            if c == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=7)
    others_text = ", medians for others" if others else ""
    note = _clipped_note([ref, *others], [var for var, _ in rows])
    note += "".join(
        f"\n{lo:.0%}-{hi:.0%} band not drawn: {FLAGGED}; it needs {paths_needed(lo):,} paths"
        for lo, hi, _ in bands
        if not _band_estimable(ref.ds, lo, hi)
    )
    fig.suptitle(f"Fan charts: bands for the baseline ({ref.label}){others_text}{note}", fontsize=10)
    fig.savefig(path)
    return fig


def heatmap_dims(cube: xr.Dataset) -> list[str]:
    """Sweep axes with more than one value (the first two go into the heatmap)."""
    return [d for d in str(cube.attrs.get("sweep_dims", "")).split() if d in cube.dims and cube.sizes[d] > 1]
