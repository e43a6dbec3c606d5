"""`liqstress calibrate`, `optimise` and `bench`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core
from rich.table import Table

from engine.cli.shell import app, err, fail, out, warning
from engine.config.errors import ConfigError, SimulationError
from engine.config.files import read_toml, resolve_config_path
from engine.report.units import usd
from engine.runs import rundir
from engine.sim.process import EXIT_USAGE


def _fit(
    kind: str,
    config: Path,
    run_dir: Path | None,
    runs_root: Path,
    load,
    execute,
    dry_run: bool,
    plan,
    name=lambda loaded: loaded.scenario.name,
):
    """Validate (exit 2, nothing written), choose the run directory, run (exit 1 on failure,
    130 interrupted). With `dry_run`, print `plan(loaded config)` instead of running.
    Returns (summary, run directory), or None after a dry run."""
    try:
        loaded = load(config)
        target = (
            run_dir if run_dir is not None else rundir.default_run_dir(runs_root, f"{kind}_{name(loaded)}")
        )
        rundir.check_new_run_dir(target)
    except ConfigError as e:
        raise fail(str(e), 2) from None
    if dry_run:
        out().print(f"{config}: ok: {plan(loaded)}; would write to {target}", highlight=False, soft_wrap=True)
        return None
    try:
        return execute(config, target, log=lambda line: err().print(line, highlight=False)), target
    except (SimulationError, OSError, ValueError, RuntimeError) as e:
        raise fail(f"{kind} failed: {e}", 1) from None
    except KeyboardInterrupt:
        raise fail(f"{kind} interrupted; nothing more is written", 130) from None


ConfigArg = Annotated[
    Path,
    typer.Argument(
        help="Config file, or the name of a shipped one (calibrate_oct10_2025, joint_events, optimise_oct10_2025)."
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
        f"{oc.constraint.statistic} <= {usd(oc.bound)} at confidence {s.confidence}, "
        f"{s.iterations} iterations of {s.n_paths} paths, exact check on {s.check_paths} paths"
    )


def _joint_plan(jc) -> str:
    s = jc.calibration
    return (
        f"joint calibration over {len(jc.events)} events ({', '.join(jc.events)}): {len(jc.params)} shared "
        f"parameters and one shock per event, seeds {list(s.seeds)}, {s.iterations} iterations of {s.n_paths} paths"
    )


def _backtest_plan(jc, held: list[str]) -> str:
    """What `liqstress backtest` runs: per held-out event, a joint fit on the others with the
    backtest's seeds, then its exact-kernel prediction on fresh paths."""
    s, b = jc.calibration, jc.backtest
    seeds = list(b.seeds or s.seeds)
    return (
        f"backtest holding out {', '.join(held)} one at a time ({len(held)} folds): each fold fits "
        f"{len(jc.params)} shared parameters and the other events' shocks on {len(jc.events) - 1} events "
        f"(seeds {seeds}{'' if b.seeds else ', the calibration seeds'}, {s.iterations} iterations of "
        f"{s.n_paths} paths), then predicts the held-out event on {b.n_paths:,} exact-kernel paths "
        f"(seed {b.seed}, {b.band:.0%} band)"
    )


def _is_joint(config: Path) -> bool:
    """Whether the config file is a joint calibration over events (its `kind`)."""
    try:
        return read_toml(resolve_config_path(config)).get("kind") == "joint_calibration"
    except ConfigError:
        return False


def _load_joint(config: Path):
    from engine.fit.event_setup import load_joint

    return load_joint(config)[0]


def _calibrate_joint(config: Path, run_dir: Path | None, runs_root: Path, dry_run: bool) -> None:
    """`liqstress calibrate` of a joint config (`engine.fit.joint`)."""
    from engine.fit import joint
    from engine.fit.event_problem import problems
    from engine.fit.event_setup import load_joint
    from engine.report.validation import se_text, write_joint

    def execute(path, target, log):
        jc, events = load_joint(path)
        probs = problems(jc, events)
        fits = joint.calibrate_joint(jc, events, probs, log)
        a = joint.assess_joint(fits)
        log("curvature: the Jacobian of every target at the fitted values")
        seed = next(f.seed for f, ok in zip(fits, a.converged) if ok)
        cur = joint.curvature(jc, probs, a.values, a.shocks, seed)
        return write_joint(jc, probs, fits, a, cur, target)

    done = _fit(
        "calibrate",
        config,
        run_dir,
        runs_root,
        _load_joint,
        execute,
        dry_run,
        _joint_plan,
        lambda jc: Path(config).stem,
    )
    if done is None:
        return
    summary, target = done
    t = Table(title="joint calibration (mean and sd over converged seeds)")
    for col in ("parameter", "fitted (mean)", "sd over seeds", "curvature s.e."):
        t.add_column(col)
    for p in summary["params"]:
        t.add_row(p["path"], f"{p['mean']:.4g}", f"{p['std_over_seeds']:.2g}", se_text(p["curvature_se"]))
    for name, x in summary["shocks"].items():
        t.add_row(
            f"shock of {name}", f"{x['mean']:.4g}", f"{x['std_over_seeds']:.2g}", se_text(x["curvature_se"])
        )
    out().print(t)
    out().print(f"run directory: {target}  (report.md: targets per event and the parameters' correlations)")


@app.command()
def calibrate(
    config: ConfigArg,
    run_dir: RunDirOpt = None,
    runs_root: RunsRootOpt = Path("runs"),
    dry_run: DryRunOpt = False,
) -> None:
    """Fit free parameters to observed targets (relaxed kernel, optax); one fit per seed. A
    joint config (`kind = "joint_calibration"`) fits shared parameters over several events."""
    if _is_joint(config):
        return _calibrate_joint(config, run_dir, runs_root, dry_run)
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
    out().print(t)
    t = Table(title="targets")
    for col in ("statistic", "target ± tolerance", "fitted", "flag"):
        t.add_column(col)
    for x in summary["targets"]:
        flag = "" if x["within_tolerance"] else "[red]outside tolerance[/]"
        t.add_row(
            x["statistic"], f"{x['target']:.4g} ± {x['tolerance']:.3g}", f"{x['fitted_mean']:.4g}", flag
        )
    out().print(t)
    for line in summary["warnings"]:
        warning(line)
    out().print(f"run directory: {target}  (fitted_scenario.toml runs with `liqstress run`)")


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

    out().print(
        f"optimum: {fmt(summary['optimum'])}; {summary['constraint']} = {usd(c['statistic'])} ± {usd(c['mc_se'])} "
        f"(bound {usd(summary['bound'])}); P(feasible) = {c['p_feasible']:.3f} "
        f"(required {summary['confidence']}); as good as the best grid point: "
        f"{summary['optimum_at_least_as_good_as_grid']}",
        highlight=False,
        soft_wrap=True,
    )
    for line in summary["warnings"]:
        warning(line)
    rec = summary["recommended"]
    if summary["optimum_accepted"]:
        out().print("accepted: feasible at the required confidence", highlight=False)
    elif rec is None:
        warning(
            f"optimum not accepted: P(feasible) below {summary['confidence']}, and no grid point reaches it"
        )
    else:
        warning(
            f"optimum not accepted: P(feasible) below {summary['confidence']}; the cheapest grid point that "
            f"reaches it: {fmt(rec['values'])} (cost {rec['cost']:.3f}, P(feasible) = {rec['p_feasible']:.3f})"
        )
    out().print(f"run directory: {target}")


@app.command()
def backtest(
    config: Annotated[
        Path, typer.Argument(help="A joint calibration config, or the name of a shipped one.")
    ] = Path("joint_events"),
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write validation.md, validation.json and validation.png here (replaced whole); "
            "default: a new runs/<time>_backtest_<name>/.",
        ),
    ] = None,
    event: Annotated[
        list[str] | None, typer.Option("--event", help="Hold out only this event (repeatable).")
    ] = None,
    runs_root: RunsRootOpt = Path("runs"),
    dry_run: DryRunOpt = False,
) -> None:
    """Leave-one-event-out validation: fit on all events but one, predict the one left out."""
    from engine.fit import backtest as bt
    from engine.fit.event_problem import problems
    from engine.fit.event_setup import load_joint
    from engine.report.validation import fmt, reported, write_validation

    try:
        jc, events = load_joint(config)
        unknown = [e for e in event or [] if e not in events]
        if unknown:
            raise ConfigError(f"--event {unknown[0]}: not an event of {config}; allowed: {list(events)}")
        target = (
            out_dir
            if out_dir is not None
            else rundir.default_run_dir(runs_root, f"backtest_{Path(config).stem}")
        )
        if target.exists() and not target.is_dir():
            raise ConfigError(f"--out {target}: exists and is not a directory")
    except ConfigError as e:
        raise fail(str(e), 2) from None
    held = list(dict.fromkeys(event or events))
    if dry_run:
        out().print(
            f"{config}: ok: {_backtest_plan(jc, held)}; would write to {target}",
            highlight=False,
            soft_wrap=True,
        )
        return
    command = " ".join(
        ["liqstress backtest", str(config)]
        + ([f"--out {out_dir}"] if out_dir else [])
        + [f"--event {e}" for e in event or []]
    )
    log = lambda line: err().print(line, highlight=False)
    try:
        probs = problems(jc, events)
        folds = bt.backtest(jc, events, probs, log=log, only=held)
        write_validation(jc, folds, probs, target, command)
    except (SimulationError, OSError, ValueError, RuntimeError) as e:
        raise fail(f"backtest failed: {e}", 1) from None
    except KeyboardInterrupt:
        raise fail("backtest interrupted; nothing more is written", 130) from None
    t = Table(title="held-out events: predicted median against reported")
    for col in ("event", "target", "reported", "predicted", "goal"):
        t.add_column(col)
    for f in folds:
        for r in f.results:
            goal = "" if r.met is None else ("met" if r.met else "[red]missed[/]")
            t.add_row(f.event, r.target.label, reported(r.target), fmt(r.target.kind, r.median), goal)
    out().print(t)
    out().print(f"written: {target / 'validation.md'}, validation.json, validation.png")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks of a source checkout: --quick the small variants of W1-W4 (about 2
    minutes on 2 idle cores), without it their full sizes (hours).

    Arguments pass through to benchmarks/run.py; results go to a new runs/<time>_bench_<name>/,
    to benchmarks/results/ only with --save."""
    import subprocess

    import engine

    script = Path(engine.__file__).resolve().parents[1] / "benchmarks" / "run.py"
    if not script.is_file():
        raise fail(
            f"{script} not found: benchmarks live in the source checkout (pip install -e .)", EXIT_USAGE
        )
    raise typer.Exit(subprocess.call([sys.executable, str(script), *ctx.args]))
