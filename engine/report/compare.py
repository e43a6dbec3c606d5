"""Policy comparison: key-metric tables with paired differences, and plots, from result cubes.

A *policy* is one grid point of a run's cube. Within one run every point saw the same paths
(common random numbers), and the cube's `<name>_diff_mean` / `<name>_diff_se` are the paired
differences against the run's baseline point: their 95% intervals are `mean ± 1.96 se` and
far narrower than the spread of either point. Points of *other* runs are compared with the
first run's baseline by the difference of their means with the unpaired standard error
`sqrt(se_a² + se_b²)` (conservative when the runs share seed and paths; correct otherwise):
the per-path outputs needed for a paired error are not kept.

`report.md` also warns where a kernel limit bit on some paths (`diagnostics`), explains fund
draws above the fund's size (`fund_note`), and says why another run's rows are unpaired
(`pairing_notes`). `write_report` writes `report.md` and `plots/*.png`:
- `loss_distributions.png`: median, 90/99/99.9% quantiles and ES99 of the loss variables
  per policy;
- `heatmap.png`: ES99 of liquidations and P(bad debt) over two sweep axes (other axes at
  the baseline's values), or `sweep.png`, the mean and ES99 along the one axis there is;
- `fan_charts.png`: bands of the mark price and cumulative liquidations over time, for the
  baseline, with the medians of up to four other policies.
Quantiles and ES99 with too few paths to estimate them (`engine.summary.estimate`) are drawn
where they lie but marked as not estimates: hollow grey markers, dotted grey lines, hatched
heatmap cells whose values end in `*`, each keyed in a legend or title. Clipped fan bands are
gaps, and fan bands with too few paths are left out, both named in the title.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from rich.table import Table

from engine.report.summary import cell, estimate, few_paths_note, paths_needed
from engine.report.ticks import Amounts
from engine.report.units import usd
from engine.sim import tipping
from engine.sim.reduce import CLIPPED, ESTIMATED, quantile_status

Z95 = 1.959963984540054
LOSSES = (
    ("liquidated_total", "Liquidated notional"),
    ("bad_debt", "Bad debt"),
    ("insurance_fund_draw", "Insurance-fund draw"),
    ("trader_loss", "Trader losses"),
)
DIFFS = ("liquidated_total", "bad_debt", "insurance_fund_draw", "trader_loss", "max_drawdown")
MAX_FAN_OTHERS = 4
MAX_LISTED = 4  # policies named in a note; the rest are counted
BASELINE_DIFF = "0 ± 0"  # the baseline against itself: every per-path difference is 0
FUND_PATH = "policy.insurance_fund_usd"
# What each kernel diagnostic (`engine.outputs.DIAGNOSTICS`) means for the figures, and the fix.
DIAGNOSTIC_ADVICE = {
    "n_cascade_unconverged": (
        (
            "ran out of cascade rounds with positions still beyond their liquidation price, which "
            "waited for the next step, so the cascade within a step and its price impact are understated"
        ),
        "raise `run.cascade_rounds`",
    ),
    "n_jump_truncated": (
        (
            "had a step with more jumps than the kernel counts (engine.params.JUMP_MAX), so "
            "their jump moves are understated"
        ),
        "lower `market.jump_intensity_per_day` or `run.dt_minutes` (fewer jumps per step)",
    ),
}


@dataclass(frozen=True)
class PolicyResult:
    """One grid point of one run: its statistics (no sweep dims) and how to compare it."""

    label: str
    ds: xr.Dataset
    run: str
    baseline: bool  # the reference of the comparison
    paired: bool  # its differences to the reference are paired (same run)
    fund_usd: float = math.nan  # the insurance fund at t0 (USD)


def _fmt_value(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    return f"{v:g}" if isinstance(v, float) else str(v)


def _config(cube: xr.Dataset) -> dict:
    """The run's resolved config (the cube's `config` attribute), or {} for a cube without one."""
    return tomllib.loads(str(cube.attrs.get("config", "")))


def policies(cubes: list[tuple[str, xr.Dataset]]) -> list[PolicyResult]:
    """The policies of one or more cubes, the first cube's baseline marked as the reference."""
    out = []
    for k, (run, cube) in enumerate(cubes):
        dims = [d for d in str(cube.attrs.get("sweep_dims", "")).split() if d in cube.dims]
        prefix = f"{run}: " if len(cubes) > 1 else ""
        base = int(cube.attrs.get("baseline_point", 0))
        fund = float(_config(cube).get("policy", {}).get("insurance_fund_usd", math.nan))
        fund_dim = next((d for d in dims if cube[d].attrs.get("sweep_path") == FUND_PATH), None)
        if not dims:
            name = str(cube.attrs.get("title", run)).removeprefix("liqstress loss distributions: ")
            out.append(PolicyResult(run if len(cubes) > 1 else name, cube, run, k == 0, k == 0, fund))
            continue
        stacked = cube.stack(point=dims)
        for i in range(stacked.sizes["point"]):
            p = stacked.isel(point=i)
            label = ", ".join(f"{d}={_fmt_value(p[d].values)}" for d in dims)
            fund_here = float(p[fund_dim]) if fund_dim else fund
            p = p.drop_vars(["point", *dims])
            out.append(PolicyResult(prefix + label, p, run, k == 0 and i == base, k == 0, fund_here))
    return out


def _lead(da: xr.DataArray) -> xr.DataArray:
    return da.isel(asset=0) if "asset" in da.dims else da


def metrics(p: PolicyResult) -> dict[str, float]:
    """The key figures of a policy (USD, drawdown as a fraction of the lead asset's price);
    NaN for a quantile or ES99 with too few paths to estimate it."""
    ds = p.ds
    q = lambda name, level: float(_lead(estimate(ds, name, level)))
    return {
        "liq_median": q("liquidated_total", 0.5),
        "liq_q99": q("liquidated_total", 0.99),
        "liq_es99": q("liquidated_total", None),
        "bad_debt_mean": float(ds["bad_debt_mean"]),
        "p_bad_debt": float(ds["p_bad_debt"]),
        "fund_mean": float(ds["insurance_fund_draw_mean"]),
        "fund_q99": q("insurance_fund_draw", 0.99),
        "dd_median": q("max_drawdown", 0.5),
        "dd_q99": q("max_drawdown", 0.99),
    }


def difference(p: PolicyResult, ref: PolicyResult, name: str) -> tuple[float, float, bool]:
    """Mean difference of `name` against the reference, its standard error, and whether paired."""
    if p.paired:
        return float(_lead(p.ds[f"{name}_diff_mean"])), float(_lead(p.ds[f"{name}_diff_se"])), True
    d = float(_lead(p.ds[f"{name}_mean"])) - float(_lead(ref.ds[f"{name}_mean"]))
    se = math.hypot(float(_lead(p.ds[f"{name}_mc_se"])), float(_lead(ref.ds[f"{name}_mc_se"])))
    return d, se, False


def pct(x: float) -> str:
    return f"{x:.1%}"


def _diff_text(name: str, d: float, se: float) -> str:
    if name == "max_drawdown":
        return f"{d:+.2%} ± {Z95 * se:.2%}"
    return f"{usd(d, signed=True)} ± {usd(Z95 * se)}"


def lead_asset(cube: xr.Dataset) -> str:
    return str(cube.asset.values[0])


def tables(pols: list[PolicyResult], asset: str) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """Header and rows of the metrics table and of the differences table (quantiles and ES99
    with too few paths to estimate them read `n/e`)."""
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
                cell(m["liq_median"], usd),
                cell(m["liq_q99"], usd),
                cell(m["liq_es99"], usd),
                usd(m["bad_debt_mean"]),
                f"{m['p_bad_debt']:.3f}",
                usd(m["fund_mean"]),
                cell(m["fund_q99"], usd),
                cell(m["dd_median"], pct),
                cell(m["dd_q99"], pct),
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
            drows.append([p.label, *(BASELINE_DIFF for _ in DIFFS), "the baseline itself"])
            continue
        cells = []
        for name in DIFFS:
            d, se, _ = difference(p, ref, name)
            cells.append(_diff_text(name, d, se))
        drows.append([p.label, *cells, "paired" if p.paired else "unpaired"])
    return head, rows, dhead, drows


def few_paths_notes(pols: list[PolicyResult]) -> list[str]:
    """What the policies' runs have too few paths to estimate (one note per run size)."""
    sizes = dict.fromkeys(int(p.ds.attrs["n_paths"]) for p in pols)
    return [note for n in sizes if (note := few_paths_note(n))]


def rich_table(pols: list[PolicyResult], asset: str, title: str) -> Table:
    """The metrics and the paired difference of liquidations, for the terminal."""
    _, rows, _, drows = tables(pols, asset)
    diff_by_label = {r[0]: r[1] for r in drows}
    t = Table(title=title, caption="\n".join(few_paths_notes(pols)) or None)
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
        t.add_row(*r[:8], diff_by_label[p.label] + (" (baseline)" if p.baseline else ""))
    return t


def fund_note(pols: list[PolicyResult]) -> str | None:
    """Why an insurance-fund draw can exceed the fund's size, if a figure shown does."""
    over = []
    for p in pols:
        shown = max(float(p.ds["insurance_fund_draw"].max()), float(p.ds["es99_insurance_fund_draw"]))
        if shown > p.fund_usd:
            over.append(f"{p.label} (up to {usd(shown)} against {usd(p.fund_usd)})")
    if not over:
        return None
    return (
        "Insurance-fund draws above the fund's size (`policy.insurance_fund_usd`) are not an error: "
        "leftover margin and liquidation fees flow into the fund during the run (`fund_inflow`) "
        "before shortfalls draw on it, so a path can draw more in total than the fund held at the "
        "start while the fund never goes below zero. Seen at: "
        + "; ".join(over[:MAX_LISTED])
        + (f"; and {len(over) - MAX_LISTED} more policies" if len(over) > MAX_LISTED else "")
        + "."
    )


def _path_setup(cube: xr.Dataset) -> dict:
    """What decides a run's paths: seed, paths, steps, and the config's market, book and scenario."""
    cfg = _config(cube)
    keys = ("seed", "n_paths", "steps", "dt_minutes")
    return {**{k: cube.attrs.get(k) for k in keys}, **{s: cfg.get(s) for s in ("market", "book", "scenario")}}


def pairing_notes(cubes: list[tuple[str, xr.Dataset]]) -> list[str]:
    """One plain sentence per run after the first: why its rows are unpaired, and what that means."""
    ref_run, ref = cubes[0]
    a = _path_setup(ref)
    notes = []
    for run, cube in cubes[1:]:
        b = _path_setup(cube)
        drawn = [f"{k} {b[k]} vs {a[k]}" for k in ("seed", "n_paths", "steps", "dt_minutes") if a[k] != b[k]]
        setup = [k for k in ("market", "book", "scenario") if a[k] != b[k]]
        if drawn or setup:
            why = "; ".join([*(["other " + ", ".join(setup)] if setup else []), *drawn])
            notes.append(
                f"`{run}` is **unpaired** with `{ref_run}` ({why}): its paths are not those of the "
                f"baseline, so its rows compare two independent estimates"
                + (", and the differences mix the change of scenario with that of policy" if setup else "")
                + "; the interval combines both standard errors."
            )
        else:
            notes.append(
                f"`{run}` is **unpaired** with `{ref_run}` although it drew the same paths (same seed, "
                "paths and scenario): the per-path outputs that pairing needs are not kept, so its "
                "interval combines both standard errors and is wider than a paired one."
            )
    return notes


def diagnostics(pols: list[PolicyResult]) -> list[str]:
    """Warnings, one per kernel limit that bit (`DIAGNOSTIC_ADVICE`): how many paths of which
    policies, what it means, and what to change. Empty when no path was affected."""
    out = []
    for name, (meaning, fix) in DIAGNOSTIC_ADVICE.items():
        hit = [(p, int(p.ds[name])) for p in pols if name in p.ds and int(p.ds[name]) > 0]
        if hit:
            where = "; ".join(f"{p.label}: {n:,} of {int(p.ds.attrs['n_paths']):,}" for p, n in hit)
            out.append(f"{sum(n for _, n in hit):,} paths {meaning} ({where}): {fix}.")
    return out


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


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
        out.append((float(_lead(raw)), not math.isnan(float(_lead(estimate(ds, name, lv))))))
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
    return [_fmt_value(v) for v in cube[dim].values]


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
    note = ", ".join(f"{k}={_fmt_value(v)}" for k, v in fixed.items())
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
    warnings = diagnostics(pols)
    note = fund_note(pols)
    kind = "comparison" if len(cubes) > 1 else "report"
    text = [
        f"# liqstress {kind}: {', '.join(run for run, _ in cubes)}",
        "",
        *runs_lines,
        "",
        *(["## Warnings", "", *(f"- {w}" for w in warnings), ""] if warnings else []),
        (
            f"Baseline: **{ref.label}**. Quantiles and ES99 are across paths; liquidations are summed "
            f"over assets and sides; drawdown is the maximum peak-to-trough fall of the {asset} mark price."
        ),
        "",
        "## Key metrics per policy",
        "",
        _markdown(head, rows),
        "",
        *([note, ""] if note else []),
        *(f"{line}\n" for line in few_paths_notes(pols)),
        "## Differences of means against the baseline (95% interval)",
        "",
        (
            "Paired differences: every policy of a run saw the same paths (common random numbers), "
            "so the interval is that of the per-path difference, `mean ± 1.96 s.e.`; the baseline "
            f"against itself is {BASELINE_DIFF}."
        ),
        "",
        *(f"- {n}" for n in pairing_notes(cubes)),
        *([""] if len(cubes) > 1 else []),
        _markdown(dhead, drows) if len(drows) > 1 else "(only one policy)",
        "",
        "## Plots",
        "",
    ]
    text += [f"### {title}\n\n![{title}](plots/{f})\n" for title, f in images]
    path = out / "report.md"
    path.write_text("\n".join(text), encoding="utf-8")
    return path
