"""`liqstress run` and `combine`: start, join or resume a run directory, execute it, show its cube."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from engine.cli.shell import ARGV, app, err, fail, lazy, out, print_version, say, warning
from engine.config.errors import ConfigError, SimulationError
from engine.runs import rundir
from engine.sim.process import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Interrupts,
)

if TYPE_CHECKING:
    from engine.runs.rundir import RunDir

R = lazy("engine.report.compare")
reporting = lazy("engine.report.progress")
summary = lazy("engine.report.summary")
execute = lazy("engine.runs.execute")
launch = lazy("engine.runs.launch")
distributed = lazy("engine.sim.distributed")
tipping = lazy("engine.sim.tipping")
simulate = lazy("engine.sim.simulate")


def join_processes(
    coordinator: str | None, num_processes: int | None, process_id: int | None, cluster: bool
) -> bool:
    """Join JAX's distributed runtime if any option of a multi-process run is given (missing
    ones auto-detected); True if joined. Exit 2 on inconsistent options, 1 if joining fails."""
    if not cluster and (coordinator, num_processes, process_id) == (None, None, None):
        return False
    if None not in (num_processes, process_id) and process_id >= num_processes:
        raise fail(
            f"--process-id must be below --num-processes ({num_processes}), got {process_id}", EXIT_USAGE
        )
    try:
        distributed.initialize(coordinator, num_processes, process_id)
    except ValueError as e:
        raise fail(f"cannot join a multi-process run: {e}", EXIT_USAGE) from None
    except RuntimeError as e:
        raise fail(f"cannot join a multi-process run: {e}", EXIT_FAILED) from None
    return True


def warn(pols: list[R.PolicyResult]) -> None:
    """The kernel's diagnostics (paths where a static limit bit) as warnings on stderr."""
    for line in R.diagnostics(pols):
        warning(line)


def show_summary(cube, run_id: str) -> None:
    pols = R.policies([(run_id, cube)])
    if str(cube.attrs.get("sweep_dims", "")).strip():
        out().print(
            R.rich_table(
                pols, R.lead_asset(cube), f"liqstress {run_id}: {int(cube.attrs['n_paths']):,} paths"
            )
        )
    else:
        out().print(summary.summary_table(cube.expand_dims("point")), end="")
    if tip := tipping.summary_line(cube):
        out().print(tip)
    warn(pols)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=print_version, help="Print the version and exit."),
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
            envvar=ENV_COORDINATOR,
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
            envvar=ENV_NUM_PROCESSES,
            help="Processes of a multi-process run.",
            show_default=False,
        ),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(
            "--process-id",
            min=0,
            envvar=ENV_PROCESS_ID,
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
    if join_processes(coordinator, num_processes, process_id, cluster) and not distributed.is_writer():
        raise typer.Exit(distributed.following(tell=lambda message: fail(message, EXIT_FAILED)))
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
        command = "liqstress " + " ".join(shlex.quote(a) for a in ARGV)
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
        raise fail(str(e), EXIT_USAGE) from None
    if state == "complete":
        _already_complete(the_run, write_report)
        return
    if state == "rebuild":
        _say_rebuilding(the_run)

    path, study = the_run.path, the_run.study
    shard_opt = f" --shard {the_shard[0]}/{the_shard[1]}" if the_shard else ""
    again = f"liqstress run --resume {path}{shard_opt}"
    title = f"{study.name}: {len(study.points)} points x {study.config.run.n_paths:,} paths"
    use_bar = err().is_terminal if bar is None else bar
    reporter = (
        reporting.BarReporter(err(), study.name) if use_bar else reporting.LogReporter(sys.stderr, title)
    )
    err().print(
        f"{study.name}: {simulate.plan(study.config, study.points).describe()}",
        highlight=False,
        soft_wrap=True,
    )
    for line in study.warnings:
        warning(line)
    try:
        with Interrupts() as interrupts, reporter:
            progress = interrupts.checked(reporting.Forecast(reporter, say))
            cube = execute.execute(
                the_run, progress=progress, shard=the_shard, leader=leader, report=write_report
            )
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; finished parts are kept: continue with `{again}`", EXIT_INTERRUPTED
        ) from None
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    except (SimulationError, OSError, ValueError, RuntimeError) as e:
        raise fail(f"{e}\nfinished parts are kept in {path}; continue with `{again}`", EXIT_FAILED) from None
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


def _shard_done(the_run: RunDir, shard: tuple[int, int]) -> None:
    """The end of a shard that did not assemble the cube: whether others must still finish."""
    rest = (
        "the run is complete"
        if the_run.manifest["status"] == "complete"
        else "other shards' parts are not done yet: the last shard to finish writes cube.nc "
        f"(or run `liqstress combine {the_run.path}` once they are)"
    )
    out().print(f"shard {shard[0]}/{shard[1]}: its parts are done; {rest}")
    out().print(f"run directory: {the_run.path}")


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
            cube = execute.combine(the_run, report=write_report)
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; the parts are kept: `liqstress combine {run_dir}` again", EXIT_INTERRUPTED
        ) from None
    except ConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    except (OSError, ValueError, RuntimeError) as e:
        raise fail(f"cannot assemble the cube: {e}", EXIT_FAILED) from None
    if cube is None:
        _already_complete(the_run, write_report)
        return
    _show_cube(the_run, cube, write_report)


def _say_rebuilding(the_run: RunDir) -> None:
    err().print(f"{the_run.path}: {rundir.CUBE} is missing or damaged; rebuilding it from the parts")


def _already_complete(the_run: RunDir, write_report: bool) -> None:
    """`run --resume` or `combine` of a complete run with an intact cube: the summary, and the
    report if an interrupted or failed session left it unfinished."""
    out().print(f"{the_run.path}: already complete")
    try:
        cube = execute.load_cube(the_run.path)
    except ConfigError as e:
        raise fail(str(e), EXIT_FAILED) from None
    if write_report and the_run.manifest.get("report") == "pending":
        out().print("its report was not finished: writing it")
        _show_cube(the_run, cube, write_report)
        return
    show_summary(cube, the_run.manifest["run_id"])
    out().print(f"run directory: {the_run.path}")


def _show_cube(the_run: RunDir, cube, write_report: bool) -> None:
    """The end of `run` and `combine`: the summary table, the report, the run directory.

    The manifest's `report` is `pending` while the report is written and `done` after, so a
    later `--resume` (or `combine`) finishes a report that was interrupted or failed."""
    show_summary(cube, the_run.manifest["run_id"])
    if write_report:
        again = f"write it with `liqstress run --resume {the_run.path}`"
        try:
            with Interrupts():  # the report is `pending` since the cube was marked complete
                rep = R.write_report([(the_run.manifest["run_id"], cube)], the_run.path)
                the_run.mark(report="done")
        except KeyboardInterrupt:
            raise fail(
                f"interrupted while writing the report; the cube is complete: {again}", EXIT_INTERRUPTED
            ) from None
        except (OSError, ValueError, RuntimeError) as e:
            raise fail(f"the cube is written, but the report failed: {e}; {again}", EXIT_FAILED) from None
        out().print(f"report: {rep}")
    out().print(f"run directory: {the_run.path}")
