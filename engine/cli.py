"""Command-line interface `liqstress` (also `python -m engine`): a thin shell over
`engine.config`, `engine.runs`, `engine.sim.distributed` and `engine.report` that parses
options, prints, and maps exceptions to exit codes.

    liqstress run [CONFIG] [--run-dir DIR] [--paths N] [--seed S] [--set key=value ...]
    liqstress run --resume DIR
    liqstress compare RUN [RUN ...] [--out DIR]
    liqstress list [RUNS_ROOT]
    liqstress run CONFIG --run-dir DIR --shard i/n   (one slice of a sweep; see README)
    liqstress run CONFIG --coordinator HOST:PORT --num-processes N --process-id I
                                                    (one process of N; or --distributed)
    liqstress validate CONFIG [--set key=value ...]
    liqstress combine DIR

With no command it runs the default scenario. Exit codes: 0 success; 2 invalid config or
usage (one message, nothing written); 1 runtime failure (parts already written are kept for
`--resume`); 130 interrupted (Ctrl-C or SIGTERM; also resumable): `engine.sim.distributed.EXIT_*`.
"""

# Longer than the ~450 lines a module should have, and kept whole: it holds only the option
# declarations and the printing of every command, which read best side by side; the work is
# done by `engine.runs.launch`, `engine.runs.execute`, `engine.sim.distributed` and `engine.report`.

from __future__ import annotations

import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
import typer.core
from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.config.errors import ConfigError, SimulationError
from engine.config.files import load_study
from engine.report import compare as R
from engine.report.progress import BarReporter, FirstChunk, LogReporter
from engine.report.summary import summary_table
from engine.runs import execute, launch, listing, rundir
from engine.runs.rundir import RunDir
from engine.sim import distributed, tipping
from engine.sim.distributed import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Interrupts
from engine.sim.simulate import plan


class _Group(typer.core.TyperGroup):
    """Plain (click) help, whose command summaries (the docstrings' first paragraphs) wrap at
    the terminal's width where click would cut them with "..."."""

    def format_commands(self, ctx, formatter) -> None:
        rows = [
            (name, cmd.short_help or " ".join((cmd.help or "").split("\n\n")[0].split()))
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# rich_markup_mode=None: rich's help cuts long words and option values with "…" at 80 columns
app = typer.Typer(
    cls=_Group,
    add_completion=False,
    help="Monte Carlo stress tests of liquidation cascades: run policy sweeps, compare them.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_argv: list[str] = []


def _out() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160)


def _err() -> Console:
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _fail(message: str, code: int) -> typer.Exit:
    _err().print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    return typer.Exit(code)


def _join_processes(
    coordinator: str | None, num_processes: int | None, process_id: int | None, cluster: bool
) -> bool:
    """Join JAX's distributed runtime if any option of a multi-process run is given (missing
    ones auto-detected); True if joined. Exit 2 on inconsistent options, 1 if joining fails."""
    if not cluster and (coordinator, num_processes, process_id) == (None, None, None):
        return False
    if None not in (num_processes, process_id) and process_id >= num_processes:
        raise _fail(
            f"--process-id must be below --num-processes ({num_processes}), got {process_id}", EXIT_USAGE
        )
    try:
        distributed.initialize(coordinator, num_processes, process_id)
    except ValueError as e:
        raise _fail(f"cannot join a multi-process run: {e}", EXIT_USAGE) from None
    except RuntimeError as e:
        raise _fail(f"cannot join a multi-process run: {e}", EXIT_FAILED) from None
    return True


def _warn(pols: list[R.PolicyResult]) -> None:
    """The kernel's diagnostics (paths where a static limit bit) as warnings on stderr."""
    for line in R.diagnostics(pols):
        _err().print(Text("warning: ", style="bold yellow") + Text(line), soft_wrap=True)


def _summary(cube, run_id: str) -> None:
    pols = R.policies([(run_id, cube)])
    if str(cube.attrs.get("sweep_dims", "")).strip():
        _out().print(
            R.rich_table(
                pols, R.lead_asset(cube), f"liqstress {run_id}: {int(cube.attrs['n_paths']):,} paths"
            )
        )
    else:
        _out().print(summary_table(cube.expand_dims("point")), end="")
    if tip := tipping.summary_line(cube):
        _out().print(tip)
    _warn(pols)


def _version() -> str:
    """The installed distribution's version; the package's own in a checkout run without install."""
    try:
        return metadata.version("liqstress")
    except metadata.PackageNotFoundError:
        from engine import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        _out().print(f"liqstress {_version()}", highlight=False)
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """With no command: run the default scenario (like `liqstress run`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@app.command()
def run(
    config: Annotated[
        str | None,
        typer.Argument(
            help="Config file, or the name of a shipped config (quick, oct10_2025, ...). Default: the 10 Oct 2025 scenario.",
            show_default=False,
        ),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Write the run exactly here (must be new or empty).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue an interrupted run directory; skips finished parts."),
    ] = None,
    paths: Annotated[
        int | None, typer.Option("--paths", min=1, help="Monte Carlo paths (run.n_paths).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed (run.seed).")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a field: key=value (a TOML value, or one bare word as a string), e.g. policy.leverage_cap=20 or "
            "sweep.policy.leverage_cap=[5,10]. Repeatable.",
        ),
    ] = None,
    runs_root: Annotated[Path, typer.Option("--runs-root", help="Parent of new run directories.")] = Path(
        "runs"
    ),
    write_report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write report.md and plots.")
    ] = True,
    bar: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar (default: on a terminal) or log lines.",
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="Run only slice i of n (0 <= i < n) of the sweep's parts, e.g. as a SLURM array task; "
            "all shards share --run-dir and the last to finish writes cube.nc.",
            show_default=False,
        ),
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator",
            envvar=distributed.ENV_COORDINATOR,
            help="HOST:PORT of process 0 of a multi-process run (with --num-processes and --process-id); "
            "process 0 writes the run directory, the others only simulate.",
            show_default=False,
        ),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            "--num-processes",
            min=1,
            envvar=distributed.ENV_NUM_PROCESSES,
            help="Processes of a multi-process run.",
            show_default=False,
        ),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(
            "--process-id",
            min=0,
            envvar=distributed.ENV_PROCESS_ID,
            help="This process's index in a multi-process run (0 to --num-processes minus 1).",
            show_default=False,
        ),
    ] = None,
    cluster: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Join a multi-process run that JAX finds by itself (SLURM, Open MPI: one task per "
            "node or GPU).",
        ),
    ] = False,
) -> None:
    """Run a scenario and its sweep; write cube.nc, manifest.json, config.toml and a report."""
    if _join_processes(coordinator, num_processes, process_id, cluster) and not distributed.is_writer():
        raise typer.Exit(distributed.following(tell=lambda message: _fail(message, EXIT_FAILED)))
    with distributed.leading() as leader:
        _run(leader, config, run_dir, resume, paths, seed, overrides, runs_root, write_report, bar, shard)


def _run(
    leader: distributed.Leader,
    config: str | None,
    run_dir: Path | None,
    resume: Path | None,
    paths: int | None,
    seed: int | None,
    overrides: list[str] | None,
    runs_root: Path,
    write_report: bool,
    bar: bool | None,
    shard: str | None,
) -> None:
    """`run` on process 0 (the only process of most runs), with the options of `run`."""
    try:
        the_shard = _parse_shard(shard) if shard is not None else None
        command = "liqstress " + " ".join(shlex.quote(a) for a in _argv)
        the_run = launch.start(
            config,
            sets=overrides or (),
            n_paths=paths,
            seed=seed,
            run_dir=run_dir,
            resume=resume,
            shard=the_shard,
            runs_root=runs_root,
            command=command,
        )
        state = launch.resume_state(the_run) if resume is not None else "run"
    except ConfigError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    if state == "complete":
        _already_complete(the_run, write_report)
        return
    if state == "rebuild":
        _say_rebuilding(the_run)

    path, study = the_run.path, the_run.study
    shard_opt = f" --shard {the_shard[0]}/{the_shard[1]}" if the_shard else ""
    again = f"liqstress run --resume {path}{shard_opt}"
    title = f"{study.name}: {len(study.points)} points x {study.config.run.n_paths:,} paths"
    use_bar = _err().is_terminal if bar is None else bar
    reporter = BarReporter(_err(), study.name) if use_bar else LogReporter(sys.stderr, title)
    _err().print(f"{study.name}: {plan(study.config).describe()}", highlight=False, soft_wrap=True)
    try:
        with Interrupts() as interrupts, reporter:
            progress = interrupts.checked(FirstChunk(reporter, _say))
            cube = execute.execute(the_run, progress=progress, shard=the_shard, leader=leader)
    except KeyboardInterrupt:
        raise _fail(
            f"interrupted; finished parts are kept: continue with `{again}`", EXIT_INTERRUPTED
        ) from None
    except ConfigError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    except (SimulationError, OSError, ValueError, RuntimeError) as e:
        raise _fail(f"{e}\nfinished parts are kept in {path}; continue with `{again}`", EXIT_FAILED) from None
    if cube is None:
        _shard_done(the_run, the_shard)
        return
    _show_cube(the_run, cube, write_report)


def _parse_shard(text: str) -> tuple[int, int]:
    """`--shard i/n` -> (i, n) with 0 <= i < n, or `ConfigError` naming `--shard`."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/8), got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def _say(line: str) -> None:
    _err().print(line, highlight=False, soft_wrap=True)


def _shard_done(the_run: RunDir, shard: tuple[int, int]) -> None:
    """The end of a shard that did not assemble the cube: whether others must still finish."""
    rest = (
        "the run is complete"
        if the_run.manifest["status"] == "complete"
        else "other shards' parts are not done yet: the last shard to finish writes cube.nc "
        f"(or run `liqstress combine {the_run.path}` once they are)"
    )
    _out().print(f"shard {shard[0]}/{shard[1]}: its parts are done; {rest}")
    _out().print(f"run directory: {the_run.path}")


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
        raise _fail(str(e), EXIT_USAGE) from None
    if out_dir is None:
        one = run_dirs[0]
        out_dir = (
            one if len(run_dirs) == 1 and one.is_dir() else rundir.default_run_dir(Path("runs"), "compare")
        )
    pols = R.policies(cubes)
    _out().print(R.rich_table(pols, R.lead_asset(cubes[0][1]), "liqstress compare"))
    _warn(pols)
    try:
        rep = R.write_report(cubes, out_dir)
    except OSError as e:
        raise _fail(f"cannot write the report: {e}", EXIT_FAILED) from None
    _out().print(f"report: {rep}")


@app.command("list")
def list_(
    root: Annotated[Path, typer.Argument(help="Directory holding run directories.")] = Path("runs"),
) -> None:
    """Show past runs: config name, size and status."""
    infos = listing.list_runs(root)
    if not infos:
        _out().print(f"no runs under {root}/")
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
    _out().print(t)


@app.command()
def validate(
    config: Annotated[str, typer.Argument(help="Config file or shipped config name.")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a field: key=value.")] = None,
) -> None:
    """Check a config file (and overrides) without running it."""
    try:
        study = load_study(config, list(overrides or []))
    except ConfigError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    cfg = study.config
    axes = ", ".join(f"{a.path} ({len(a.values)})" for a in study.axes) or "none"
    _out().print(
        f"{config}: ok: {cfg.name}: {len(cfg.market.assets)} assets, {cfg.run.steps} steps, "
        f"{cfg.run.n_paths:,} paths; sweep axes: {axes}; {len(study.points)} points in "
        f"{len(study.parts())} parts; baseline: {study.label(study.baseline)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def combine(
    run_dir: Annotated[
        Path, typer.Argument(help="Run directory whose parts are all done (e.g. by --shard jobs).")
    ],
    write_report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write report.md and plots.")
    ] = True,
) -> None:
    """Assemble cube.nc of a run whose parts are all done; exit 2 naming the parts that are not."""
    try:
        the_run = rundir.open_run(run_dir, flag="combine")
        if launch.resume_state(the_run) == "rebuild":
            _say_rebuilding(the_run)
        with Interrupts():
            cube = execute.combine(the_run)
    except KeyboardInterrupt:
        raise _fail(
            f"interrupted; the parts are kept: `liqstress combine {run_dir}` again", EXIT_INTERRUPTED
        ) from None
    except ConfigError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    except (OSError, ValueError, RuntimeError) as e:
        raise _fail(f"cannot assemble the cube: {e}", EXIT_FAILED) from None
    if cube is None:
        _already_complete(the_run, write_report)
        return
    _show_cube(the_run, cube, write_report)


def _say_rebuilding(the_run: RunDir) -> None:
    _err().print(f"{the_run.path}: {rundir.CUBE} is missing or damaged; rebuilding it from the parts")


def _already_complete(the_run: RunDir, write_report: bool) -> None:
    """`run --resume` or `combine` of a complete run with an intact cube: the summary, and the
    report if an interrupted or failed session left it unfinished."""
    _out().print(f"{the_run.path}: already complete")
    try:
        cube = execute.load_cube(the_run.path)
    except ConfigError as e:
        raise _fail(str(e), EXIT_FAILED) from None
    if write_report and the_run.manifest.get("report") == "pending":
        _out().print("its report was not finished: writing it")
        _show_cube(the_run, cube, write_report)
        return
    _summary(cube, the_run.manifest["run_id"])
    _out().print(f"run directory: {the_run.path}")


def _show_cube(the_run: RunDir, cube, write_report: bool) -> None:
    """The end of `run` and `combine`: the summary table, the report, the run directory.

    The manifest's `report` is `pending` while the report is written and `done` after, so a
    later `--resume` (or `combine`) finishes a report that was interrupted or failed."""
    _summary(cube, the_run.manifest["run_id"])
    if write_report:
        again = f"write it with `liqstress run --resume {the_run.path}`"
        try:
            with Interrupts():
                the_run.mark(report="pending")
                rep = R.write_report([(the_run.manifest["run_id"], cube)], the_run.path)
                the_run.mark(report="done")
        except KeyboardInterrupt:
            raise _fail(
                f"interrupted while writing the report; the cube is complete: {again}", EXIT_INTERRUPTED
            ) from None
        except (OSError, ValueError, RuntimeError) as e:
            raise _fail(f"the cube is written, but the report failed: {e}; {again}", EXIT_FAILED) from None
        _out().print(f"report: {rep}")
    _out().print(f"run directory: {the_run.path}")


def _fit(kind: str, config: Path, run_dir: Path | None, runs_root: Path, load, execute, dry_run: bool, plan):
    """Validate (exit 2, nothing written), choose the run directory, run (exit 1 on failure,
    130 interrupted). With `dry_run`, print `plan(loaded config)` instead of running.
    Returns (summary, run directory), or None after a dry run."""
    try:
        loaded = load(config)
        target = (
            run_dir
            if run_dir is not None
            else rundir.default_run_dir(runs_root, f"{kind}_{loaded.scenario.name}")
        )
        rundir.check_new_run_dir(target)
    except ConfigError as e:
        raise _fail(str(e), 2) from None
    if dry_run:
        _out().print(
            f"{config}: ok: {plan(loaded)}; would write to {target}", highlight=False, soft_wrap=True
        )
        return None
    try:
        return execute(config, target, log=lambda line: _err().print(line, highlight=False)), target
    except (SimulationError, OSError, ValueError, RuntimeError) as e:
        raise _fail(f"{kind} failed: {e}", 1) from None
    except KeyboardInterrupt:
        raise _fail(f"{kind} interrupted; nothing more is written", 130) from None


ConfigArg = Annotated[
    Path,
    typer.Argument(
        help="Config file, or the name of a shipped one (calibrate_oct10_2025, optimise_oct10_2025)."
    ),
]
RunDirOpt = Annotated[
    Path | None, typer.Option("--run-dir", help="Write results exactly here (new or empty).")
]
RunsRootOpt = Annotated[Path, typer.Option("--runs-root", help="Parent of new run directories.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Validate the config and say what would run; write nothing.")
]


def _calibration_plan(cc) -> str:
    s = cc.calibration
    return (
        f"calibration of {cc.scenario.name}: {len(cc.params)} free parameters, {len(cc.targets)} targets, "
        f"seeds {list(s.seeds)}, {s.iterations} iterations of {s.n_paths} paths"
    )


def _optimisation_plan(oc) -> str:
    s = oc.optimise
    return (
        f"optimisation of {oc.scenario.name}: levers {[lv.path for lv in oc.levers]}, "
        f"{oc.constraint.statistic} <= {oc.bound:,.4g} at confidence {s.confidence}, "
        f"{s.iterations} iterations of {s.n_paths} paths, exact check on {s.check_paths} paths"
    )


@app.command()
def calibrate(
    config: ConfigArg,
    run_dir: RunDirOpt = None,
    runs_root: RunsRootOpt = Path("runs"),
    dry_run: DryRunOpt = False,
) -> None:
    """Fit free parameters to observed targets (relaxed kernel, optax); one fit per seed."""
    from engine.fit import calibrate as fit
    from engine.report.fits import write_calibration

    def execute(path, target, log):
        cc = fit.load_calibration(path)
        return write_calibration(cc, fit.calibrate(cc, fit.logged_progress(cc, log)), target)

    done = _fit(
        "calibrate", config, run_dir, runs_root, fit.load_calibration, execute, dry_run, _calibration_plan
    )
    if done is None:
        return
    summary, target = done
    t = Table(title="calibration (mean and sd over converged seeds)")
    for col in ("parameter", "fitted (mean)", "sd over seeds"):
        t.add_column(col)
    for p in summary["params"]:
        t.add_row(p["path"], f"{p['mean']:.4g}", f"{p['std_over_seeds']:.2g}")
    _out().print(t)
    t = Table(title="targets")
    for col in ("statistic", "target ± tolerance", "fitted", "flag"):
        t.add_column(col)
    for x in summary["targets"]:
        flag = "" if x["within_tolerance"] else "[red]outside tolerance[/]"
        t.add_row(
            x["statistic"], f"{x['target']:.4g} ± {x['tolerance']:.3g}", f"{x['fitted_mean']:.4g}", flag
        )
    _out().print(t)
    for line in summary["warnings"]:
        _err().print(Text("warning: ", style="bold yellow") + Text(line), soft_wrap=True)
    _out().print(f"run directory: {target}  (fitted_scenario.toml runs with `liqstress run`)")


@app.command()
def optimise(
    config: ConfigArg,
    run_dir: RunDirOpt = None,
    runs_root: RunsRootOpt = Path("runs"),
    dry_run: DryRunOpt = False,
) -> None:
    """Least restrictive policy under a tail-risk constraint (gradient search, exact check)."""
    from engine.fit import optimise as fit
    from engine.report.fits import write_optimisation

    def execute(path, target, log):
        oc = fit.load_optimisation(path)
        return write_optimisation(oc, fit.optimise(oc, log), target)

    done = _fit(
        "optimise", config, run_dir, runs_root, fit.load_optimisation, execute, dry_run, _optimisation_plan
    )
    if done is None:
        return
    summary, target = done
    c = summary["check"]

    def fmt(values) -> str:
        return ", ".join(f"{n} = {v:.4g}" for n, v in zip(summary["levers"], values))

    _out().print(
        f"optimum: {fmt(summary['optimum'])}; {summary['constraint']} = {c['statistic']:,.4g} ± {c['mc_se']:,.3g} "
        f"(bound {summary['bound']:,.4g}); P(feasible) = {c['p_feasible']:.3f} "
        f"(required {summary['confidence']}); as good as the best grid point: "
        f"{summary['optimum_at_least_as_good_as_grid']}",
        highlight=False,
        soft_wrap=True,
    )
    rec = summary["recommended"]
    if summary["optimum_accepted"]:
        _out().print("accepted: feasible at the required confidence", highlight=False)
    elif rec is None:
        _err().print(
            Text("warning: ", style="bold yellow")
            + Text(
                f"optimum not accepted: P(feasible) below {summary['confidence']}, and no grid point reaches it"
            )
        )
    else:
        _err().print(
            Text("warning: ", style="bold yellow")
            + Text(
                f"optimum not accepted: P(feasible) below {summary['confidence']}; the cheapest grid point that reaches it: "
                f"{fmt(rec['values'])} (cost {rec['cost']:.3f}, P(feasible) = {rec['p_feasible']:.3f})"
            ),
            soft_wrap=True,
        )
    _out().print(f"run directory: {target}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run benchmarks/run.py of a source checkout (arguments pass through, e.g. --quick);
    results go to a new runs/<time>_bench_<name>/, to benchmarks/results/ only with --save."""
    import subprocess

    import engine

    script = Path(engine.__file__).resolve().parents[1] / "benchmarks" / "run.py"
    if not script.is_file():
        raise _fail(
            f"{script} not found: benchmarks live in the source checkout (pip install -e .)", EXIT_USAGE
        )
    raise typer.Exit(subprocess.call([sys.executable, str(script), *ctx.args]))


def main(argv: list[str] | None = None) -> None:
    """Entry point of `liqstress` and `python -m engine`."""
    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    app(args=_argv, prog_name="liqstress")
