"""Policy comparison: key-metric tables with paired differences, notes, and the report.

The policies and their differences come from `engine.report.results`, the figures from
`engine.report.plots`. `report.md` also warns where a kernel limit bit on some paths
(`diagnostics`), explains fund draws above the fund's size (`fund_note`), and says why
another run's rows are unpaired (`pairing_notes`). `write_report` writes `report.md` and
`plots/*.png`.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from rich.console import Group
from rich.table import Table

from engine.report import plots
from engine.report.results import (
    DIFFS,
    Z95,
    PolicyResult,
    cube_config,
    difference,
    lead_asset,
    metrics,
    policies,
)
from engine.report.summary import book_rows, cell, few_paths_note, short_usd
from engine.report.units import usd
from engine.sim import tipping

MAX_LISTED = 4  # policies named in a note; the rest are counted
BASELINE_DIFF = "0 ± 0"  # the baseline against itself: every per-path difference is 0
# What each kernel diagnostic (`engine.model.outputs.DIAGNOSTICS`) means for the figures, and the fix.
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
            "had a step with more jumps than the kernel counts (engine.model.params.JUMP_MAX), so "
            "their jump moves are understated"
        ),
        "lower `market.jump_intensity_per_day` or `run.dt_minutes` (fewer jumps per step)",
    ),
}


def pct(x: float) -> str:
    return f"{x:.1%}"


def _diff_text(name: str, d: float, se: float) -> str:
    """`d ± 1.96 se` (`± n/e` without a standard error)."""
    if name == "max_drawdown":
        return f"{d:+.2%} ± {cell(Z95 * se, lambda x: f'{x:.2%}')}"
    return f"{usd(d, signed=True)} ± {cell(Z95 * se, usd)}"


def tables(
    pols: list[PolicyResult], asset: str
) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
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


def _terminal_table(title: str, head: list[str], rows: list[list[str]], caption: str | None = None) -> Table:
    """A table of the terminal: policy labels wrap (at their commas), numbers never do, so
    that it fits `WIDTH` columns without cutting a number to "…"."""
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for h in head:
        t.add_column(h, justify="left" if h == "policy" else "right", no_wrap=h != "policy")
    for r in rows:
        t.add_row(*r)
    return t


def rich_table(pols: list[PolicyResult], asset: str, title: str) -> Group:
    """The key metrics and the difference of mean liquidations against the baseline, for the
    terminal: two tables (liquidations; bad debt and the insurance fund) that fit an 80-column
    terminal (`engine.report.summary.WIDTH`); unpaired rows (another run's paths) are marked."""
    ref = next(p for p in pols if p.baseline)
    labels, liq, losses = [], [], []
    for p in pols:
        m = metrics(p)
        labels.append(p.label + (" (baseline)" if p.baseline else "" if p.paired else " (unpaired)"))
        if p.baseline:
            diff = BASELINE_DIFF
        else:
            d, se, _ = difference(p, ref, "liquidated_total")
            diff = f"{usd(d, signed=True, short=True)} ± {cell(Z95 * se, short_usd)}"
        liq.append([cell(m[k], short_usd) for k in ("liq_median", "liq_q99", "liq_es99")] + [diff])
        losses.append(
            [short_usd(m["bad_debt_mean"]), f"{m['p_bad_debt']:.3f}", short_usd(m["fund_mean"])]
            + [cell(m["fund_q99"], short_usd)]
        )
    unpaired = sorted({p.run for p in pols if not p.paired})
    notes = [
        "Δ mean: mean difference against the baseline, ± its 95% interval"
        + (
            f"; unpaired rows ({', '.join(unpaired)}: other paths than the baseline's) combine "
            "both runs' standard errors (report.md says why)"
            if unpaired
            else " (paired: the same paths)"
        )
        + ".",
        *few_paths_notes(pols),
    ]
    return Group(
        _terminal_table(
            f"{title}: liquidated notional, all assets (USD)",
            ["policy", "median", "q99", "ES99", "Δ mean"],
            [[label, *r] for label, r in zip(labels, liq)],
        ),
        _terminal_table(
            "bad debt and insurance fund (USD; means unless marked)",
            ["policy", "bad debt", "P(bad debt)", "fund draw", "fund q99"],
            [[label, *r] for label, r in zip(labels, losses)],
            "\n".join(notes),
        ),
    )


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
    cfg = cube_config(cube)
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
    """Warnings: the runs' own (`warnings` of the cube: levers that cannot change anything, an
    odd book), then one per kernel limit that bit (`DIAGNOSTIC_ADVICE`): how many paths of which
    policies, what it means, and what to change. Empty when there is nothing to say."""
    out = list(dict.fromkeys(w for p in pols for w in str(p.ds.attrs.get("warnings", "")).splitlines() if w))
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


def write_plots(
    cubes: list[tuple[str, xr.Dataset]], pols: list[PolicyResult], folder: Path
) -> list[tuple[str, str]]:
    """Draw the report's figures into `folder`; (title, file name) of each, in report order."""
    folder.mkdir(parents=True, exist_ok=True)
    plots.plot_loss_distributions(pols, folder / "loss_distributions.png")
    images = [("Loss distributions per policy", "loss_distributions.png")]
    for run, cube in cubes:
        dims = plots.heatmap_dims(cube)
        suffix = "" if len(cubes) == 1 else f"_{run}"
        if len(dims) >= 2:
            plots.plot_heatmap(cube, (dims[0], dims[1]), folder / f"heatmap{suffix}.png")
            images.append((f"Heatmap over {dims[0]} and {dims[1]} ({run})", f"heatmap{suffix}.png"))
        elif len(dims) == 1:
            plots.plot_sweep_line(cube, dims[0], folder / f"sweep{suffix}.png")
            images.append((f"Liquidations along {dims[0]} ({run})", f"sweep{suffix}.png"))
    plots.plot_fan_charts(pols, folder / "fan_charts.png")
    images.append(("Fan charts of price and cumulative liquidations", "fan_charts.png"))
    return images


def _run_lines(cubes: list[tuple[str, xr.Dataset]]) -> list[str]:
    """One bullet per run: title, paths, seed, grid, source, and its tipping share if measured."""
    out = []
    for run, cube in cubes:
        dims = str(cube.attrs.get("sweep_dims", "")).split()
        grid = " × ".join(f"{d} ({cube.sizes[d]})" for d in dims) or "a single point"
        out.append(
            f"- `{run}`: {cube.attrs.get('title', '')}; {int(cube.attrs['n_paths']):,} paths, seed "
            f"{cube.attrs['seed']}, grid {grid}; {cube.attrs.get('source', '')}"
        )
        if tip := tipping.summary_line(cube):
            out.append(f"  {tip}")
    return out


def _book_section(pols: list[PolicyResult]) -> list[str]:
    """ "What the book did" (`engine.report.summary.book_rows`, means over paths) per policy,
    where some policy's book did more than liquidate isolated positions."""
    rows = [book_rows(p.ds) for p in pols]
    labels = list(dict.fromkeys(label for r in rows for label, _ in r))  # first seen first
    if len(labels) <= 1:
        return []
    table = [[p.label] + [dict(r).get(label, "") for label in labels] for p, r in zip(pols, rows)]
    return ["## What the book did (means over paths)", "", _markdown(["policy", *labels], table), ""]


def write_report(cubes: list[tuple[str, xr.Dataset]], out: Path) -> Path:
    """Write `out/report.md` and `out/plots/*.png` comparing the policies of the cubes."""
    pols = policies(cubes)
    ref = next(p for p in pols if p.baseline)
    asset = lead_asset(cubes[0][1])
    head, rows, dhead, drows = tables(pols, asset)
    images = write_plots(cubes, pols, out / "plots")
    warnings = diagnostics(pols)
    note = fund_note(pols)
    kind = "comparison" if len(cubes) > 1 else "report"
    text = [
        f"# liqstress {kind}: {', '.join(run for run, _ in cubes)}",
        "",
        *_run_lines(cubes),
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
        *_book_section(pols),
        "## Plots",
        "",
    ]
    text += [f"### {title}\n\n![{title}](plots/{f})\n" for title, f in images]
    path = out / "report.md"
    path.write_text("\n".join(text), encoding="utf-8")
    return path
