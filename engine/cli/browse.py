"""`liqstress compare`, `list`, `validate`, `make-book`, `events`: read runs, configs and the
event library, write synthetic books."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import typer.core
from rich.table import Table

from engine.cli.run import warn
from engine.cli.shell import app, fail, lazy, out, warning
from engine.config import events as E
from engine.config import synthetic
from engine.config.errors import ConfigError
from engine.config.files import load_config, load_study
from engine.config.observables import observables
from engine.runs import listing, rundir
from engine.sim.process import EXIT_FAILED, EXIT_USAGE

R = lazy("engine.report.compare")
execute = lazy("engine.runs.execute")


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (or cube.nc files) to compare.")],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write report.md and plots/ (default: the run directory for one run, "
            "runs/<timestamp>_compare for several).",
        ),
    ] = None,
) -> None:
    """Compare the policies of one or more runs: metric tables, paired differences, plots."""
    try:
        cubes = []
        for d in run_dirs:
            cube = execute.load_cube(d)
            name = str(cube.attrs.get("run_id", d.name))
            if any(name == c[0] for c in cubes):
                name = f"{name}_{len(cubes)}"
            cubes.append((name, cube))
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    if out_dir is None:
        one = run_dirs[0]
        out_dir = (
            one if len(run_dirs) == 1 and one.is_dir() else rundir.default_run_dir(Path("runs"), "compare")
        )
    pols = R.policies(cubes)
    out().print(R.rich_table(pols, R.lead_asset(cubes[0][1]), "liqstress compare"))
    warn(pols)
    try:
        rep = R.write_report(cubes, out_dir)
    except OSError as e:
        raise fail(f"cannot write the report: {e}", EXIT_FAILED) from None
    out().print(f"report: {rep}")


@app.command("list")
def list_(
    root: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("runs"),
) -> None:
    """Show past runs: config name, size and status."""
    infos = listing.list_runs(root)
    if not infos:
        out().print(f"no runs under {root}/")
        return
    t = Table(title=f"runs under {root}/")
    for col in ("run", "config", "created (UTC)", "points", "paths", "parts", "size", "status"):
        t.add_column(col, justify="right" if col in ("points", "paths", "parts", "size") else "left")
    colors = {"complete": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}
    colors["unreadable"] = "red"
    for r in infos:
        t.add_row(
            r.run_id,
            r.config_name,
            r.created,
            str(r.n_points),
            f"{r.n_paths:,}",
            f"{r.parts_done}/{r.parts_total}",
            f"{r.size_bytes / 2**20:.1f} MB",
            f"[{colors.get(r.status, 'white')}]{r.status}[/]",
        )
    out().print(t)


@app.command()
def validate(
    config: Annotated[str, typer.Argument(help="Config file or shipped config name.")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a field: key=value.")] = None,
) -> None:
    """Check a config file (and overrides) without running it."""
    try:
        study = load_study(config, list(overrides or []))
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    cfg = study.config
    axes = ", ".join(f"{a.path} ({len(a.values)})" for a in study.axes) or "none"
    out().print(
        f"{config}: ok: {cfg.name}: {len(cfg.market.assets)} assets, {cfg.run.steps} steps, "
        f"{cfg.run.n_paths:,} paths; sweep axes: {axes}; {len(study.points)} points in "
        f"{len(study.parts())} parts; baseline: {study.label(study.baseline)}",
        highlight=False,
        soft_wrap=True,
    )
    for line in study.warnings:
        warning(line)


@app.command("make-book")
def make_book(
    out_file: Annotated[Path, typer.Argument(help="File to write: .csv or .parquet.")],
    config: Annotated[
        str | None, typer.Option("--config", help="Scenario whose assets, open interest and book to follow.")
    ] = None,
    positions: Annotated[int, typer.Option("--positions", help="Number of positions.")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Random seed (as run.seed).")] = 0,
    cross_share: Annotated[
        float, typer.Option("--cross-share", help="Share of the positions that are cross margin (0 to 1).")
    ] = 0.0,
    accounts: Annotated[
        int | None,
        typer.Option("--accounts", help="Cross-margin accounts the cross positions are spread over."),
    ] = None,
    collateral_share: Annotated[
        float | None,
        typer.Option(
            "--collateral-share",
            help="Share of the accounts posting margin in one of the scenario's collateral assets "
            f"[default: {synthetic.COLLATERAL_SHARE}].",
        ),
    ] = None,
    stop_share: Annotated[
        float, typer.Option("--stop-share", help="Share of the isolated positions with a stop price.")
    ] = 0.0,
) -> None:
    """Write a synthetic positions file (for `book.positions`) following a scenario's book.
    A request beyond the memory available is refused with the memory it needs."""
    try:
        # the scenario's own book (and its sweep) is not read: the file written may be it
        cfg = load_config(config)
        table = synthetic.make_positions(
            cfg,
            positions,
            seed,
            cross_share=cross_share,
            accounts=accounts or 0,
            collateral_share=synthetic.COLLATERAL_SHARE if collateral_share is None else collateral_share,
            stop_share=stop_share,
        )
        # None: not given (an option given that cannot change the book is a warning)
        for note in synthetic.idle_options(
            cfg, cross_share=cross_share, accounts=accounts, collateral_share=collateral_share
        ):
            warning(note)
        synthetic.write_positions(table, out_file)
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    except OSError as e:
        raise fail(f"cannot write {out_file}: {e}", EXIT_FAILED) from None
    out().print(f"{positions:,} positions: {out_file}")


def _figure(f: E.Figure | None, fmt) -> str:
    """A figure for a table: its value, or its range where sources disagree."""
    if f is None:
        return "–"
    if f.low is not None and fmt(f.low) != fmt(f.high):
        return f"{fmt(f.low)}–{fmt(f.high)}"
    return fmt(f.central)


def _neutral(ev: E.Event) -> str:
    """The pre-event figures the book map takes as neutral (the event lacks them), by figure:
    "funding_8h (ETH, SOL); ..."."""
    _, missing = observables(ev, list(ev.pre_event.assets))
    by_field: dict[str, list[str]] = {}
    for item in missing:
        asset, field = item.split(".", 1)
        by_field.setdefault(field, []).append(asset)
    return "; ".join(f"{field} ({', '.join(assets)})" for field, assets in by_field.items()) or "none"


@app.command()
def events(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Event files to check (default: the shipped library).")
    ] = None,
) -> None:
    """List the event library (engine/events/) or check event files: date, reported
    liquidations, long share and traders liquidated, each with its sources in the file, and
    the pre-event figures the book map takes as neutral because the event lacks them."""
    try:
        found = {str(p): E.load_event(p) for p in files} if files else E.library()
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    t = Table(title=f"{len(found)} event(s)")
    for col in ("event", "date", "liquidations (USD)", "long share", "traders liquidated", "assets"):
        t.add_column(col)
    for name, ev in found.items():
        o = ev.outcomes
        t.add_row(
            name,
            str(ev.date),
            _figure(o.liquidations_usd, lambda x: f"{x / 1e9:.2f} B"),
            _figure(o.long_share, lambda x: f"{x:.0%}"),
            _figure(o.traders_liquidated, lambda x: f"{x:,.0f}"),
            ", ".join(ev.pre_event.assets),
        )
    out().print(t)
    for name, ev in found.items():
        out().print(f"{name}: the book map takes as neutral: {_neutral(ev)}", highlight=False, soft_wrap=True)
