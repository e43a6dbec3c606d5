"""The reports of a calibration and of a policy optimisation, from their results.

`write_calibration` writes `fitted.json`, `loss_curve.png`, `report.md` and
`fitted_scenario.toml` (`engine.fit.calibrate`); `write_optimisation` writes `optimum.json`,
`trajectory.png` and `report.md` (`engine.fit.optimise`). Both return the JSON summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tomli_w
from matplotlib.figure import Figure

from engine.fit.calibrate import (
    NOT_CONVERGED_RATIO,
    SIGNIFICANT_DIGITS,
    Assessment,
    CalibrationConfig,
    Fit,
    assess,
    fitted_config,
    flags,
)
from engine.fit.optimise import OptimisationConfig, Result, judge, tail_warnings
from engine.report.ticks import plain_log_axis
from engine.report.units import usd
from engine.runs.rundir import write_text_atomic

NOT_CONVERGED_RULE = f"best loss > {NOT_CONVERGED_RATIO} x the median best loss over seeds"


# ----------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------


def write_calibration(cc: CalibrationConfig, fits: list[Fit], run_dir: Path) -> dict:
    """fitted.json, loss_curve.png, report.md and fitted_scenario.toml in `run_dir`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    a = assess(cc, fits)
    summary = calibration_summary(cc, fits, a)
    write_text_atomic(run_dir / "fitted.json", json.dumps(summary, indent=2))
    loss_curve(fits).savefig(run_dir / "loss_curve.png", dpi=100)
    (run_dir / "report.md").write_text(calibration_markdown(cc, fits, a))
    fitted = fitted_config(cc, a.values)
    (run_dir / "fitted_scenario.toml").write_text(
        tomli_w.dumps(fitted.model_dump(mode="json", exclude_none=True))
    )
    return summary


def calibration_summary(cc: CalibrationConfig, fits: list[Fit], a: Assessment) -> dict:
    """The contents of fitted.json: per parameter and target their fitted means (over converged
    seeds) and per-seed values, and per seed its losses and whether it converged."""
    vals = np.stack([f.values for f in fits])
    stats = np.stack([f.statistics for f in fits])
    return {
        "params": [
            {
                "path": p.path,
                "lower": p.lower,
                "upper": p.upper,
                "mean": float(m),
                "std_over_seeds": float(s),
                "per_seed": [float(x) for x in vals[:, i]],
            }
            for i, (p, m, s) in enumerate(zip(cc.params, a.values, a.spread))
        ],
        "targets": [
            {
                "statistic": t.statistic,
                "target": t.value,
                "tolerance": t.tolerance,
                "fitted_mean": float(a.statistics[i]),
                "within_tolerance": bool(a.within[i]),
                "per_seed": [float(x) for x in stats[:, i]],
            }
            for i, t in enumerate(cc.targets)
        ],
        "seeds": [f.seed for f in fits],
        "converged": [bool(c) for c in a.converged],
        "best_loss": [f.loss for f in fits],
        "final_loss": [f.losses[-1] for f in fits],
        "not_converged_rule": NOT_CONVERGED_RULE,
        "warnings": flags(cc, fits, a),
        "settings": cc.calibration.model_dump(),
    }


def loss_curve(fits: list[Fit]) -> Figure:
    """The loss per iteration of each seed (log scale)."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for f in fits:
        ax.plot(f.losses, label=f"seed {f.seed}")
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (weighted, scaled squared error)")
    ax.legend()
    fig.tight_layout()
    return fig


def calibration_markdown(cc: CalibrationConfig, fits: list[Fit], a: Assessment) -> str:
    """report.md of a calibration: seeds, fitted parameters, targets, the loss curve."""
    intro = (
        f"Scenario `{cc.scenario.name}`, {cc.calibration.n_paths} paths per seed, "
        f"seeds {[f.seed for f in fits]}, temperature {cc.calibration.temperature}. Means and spreads are over "
        f"the converged seeds (a seed is not converged when {NOT_CONVERGED_RULE})."
    )
    lines = [
        "# Calibration report",
        "",
        intro,
        "",
        "## Seeds",
        "",
        "| seed | best loss | converged |",
        "|---|---|---|",
    ]
    lines += [
        f"| {f.seed} | {f.loss:.4g} | {'yes' if c else '**not converged**'} |"
        for f, c in zip(fits, a.converged)
    ]
    lines += [
        "",
        "## Fitted parameters",
        "",
        "| parameter | lower | upper | fitted (mean) | spread over seeds (sd) |",
        "|---|---|---|---|---|",
    ]
    for p, m, s in zip(cc.params, a.values, a.spread):
        lines.append(f"| `{p.path}` | {p.lower:g} | {p.upper:g} | {m:.4g} | {s:.2g} |")
    lines += [
        "",
        "## Targets",
        "",
        "| statistic | target | tolerance | fitted (mean) | flag | source |",
        "|---|---|---|---|---|---|",
    ]
    for t, st, ok in zip(cc.targets, a.statistics, a.within):
        flag = "" if ok else "**outside tolerance**"
        lines.append(
            f"| `{t.statistic}` | {t.value:.4g} | {t.tolerance:.3g} | {st:.4g} | {flag} | {t.source} |"
        )
    runnable = (
        f"`fitted_scenario.toml` (the fitted means, {SIGNIFICANT_DIGITS} significant digits) runs as is: "
        "`liqstress run fitted_scenario.toml`."
    )
    lines += ["", "![loss curve](loss_curve.png)", "", runnable, ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Policy optimisation
# ----------------------------------------------------------------------------------------


def write_optimisation(oc: OptimisationConfig, res: Result, run_dir: Path) -> dict:
    """optimum.json, report.md and trajectory.png (over the grid when there are two levers)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = optimisation_summary(oc, res)
    write_text_atomic(run_dir / "optimum.json", json.dumps(summary, indent=2))
    trajectory_figure(oc, res).savefig(run_dir / "trajectory.png", dpi=100)
    (run_dir / "report.md").write_text(optimisation_markdown(oc, res, summary))
    return summary


def optimisation_summary(oc: OptimisationConfig, res: Result) -> dict:
    """The contents of optimum.json: the optimum, its exact check, the grid, the search, and
    the verdict of `engine.fit.optimise.judge`."""
    return {
        "levers": [lv.path for lv in oc.levers],
        "optimum": res.values.tolist(),
        "constraint": oc.constraint.statistic,
        "bound": oc.bound,
        "confidence": oc.optimise.confidence,
        "check": res.check,
        "best_grid": res.best_grid,
        "grid": res.grid,
        "trajectory": res.trajectory,
        "start": res.start,
        "searched": res.searched,
        **judge(oc, res),
        "warnings": tail_warnings(oc),
    }


def trajectory_figure(oc: OptimisationConfig, res: Result) -> Figure:
    """The search path over the grid's feasibility (two levers), else the constrained
    statistic per iteration against its bound."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    names = [lv.path for lv in oc.levers]
    confidence = oc.optimise.confidence
    traj = np.array([t["values"] for t in res.trajectory])
    if len(names) == 2:
        g = np.array([[*x["values"], x["statistic"]] for x in res.grid])
        ok = [x["p_feasible"] >= confidence for x in res.grid]
        ax.scatter(
            g[:, 0],
            g[:, 1],
            c=ok,
            cmap="RdYlGn",
            s=60,
            marker="s",
            label=f"grid (green: P(feasible) >= {confidence})",
        )
        ax.plot(traj[:, 0], traj[:, 1], "-k", lw=1, label="optimisation path")
        ax.plot(*res.values, "*", color="navy", ms=14, label="optimum")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        for lv, setter in zip(oc.levers, (ax.set_xscale, ax.set_yscale)):
            if lv.log:
                setter("log")
                plain_log_axis(ax.xaxis if setter == ax.set_xscale else ax.yaxis)
    else:
        ax.plot([t["statistic"] for t in res.trajectory], label=oc.constraint.statistic)
        ax.axhline(oc.bound, ls="--", color="r", label="bound")
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lever_formatter(oc: OptimisationConfig) -> Callable[[list[float]], str]:
    """`fmt(values) -> "policy.leverage_cap = 20, ..."` for the levers of `oc`."""
    names = [lv.path for lv in oc.levers]
    return lambda v: ", ".join(f"{n} = {x:.4g}" for n, x in zip(names, v))


def optimisation_markdown(oc: OptimisationConfig, res: Result, summary: dict) -> str:
    """report.md of a policy optimisation: the search, then the exact check and the verdict."""
    aim = (
        f"Minimise the restrictiveness of {', '.join(f'`{lv.path}`' for lv in oc.levers)} subject to "
        f"`{oc.constraint.statistic}` <= {usd(oc.bound)} USD."
    )
    lines = ["# Policy optimisation report", "", aim, ""]
    lines += ["## Warnings", "", *(f"- {w}" for w in summary["warnings"]), ""] if summary["warnings"] else []
    lines += search_section(oc, res)
    lines += ["", *check_section(oc, res, summary), "", "![trajectory](trajectory.png)", ""]
    return "\n".join(lines)


def search_section(oc: OptimisationConfig, res: Result) -> list[str]:
    """The optimisation path (about ten rows) and where the search started and ended."""
    fmt, s = lever_formatter(oc), oc.optimise
    title = (
        f"## Optimisation path (relaxed kernel, {s.n_paths} paths, temperature "
        f"{s.temperature} annealed to {s.final_temperature})"
    )
    lines = [
        title,
        "",
        "| iteration | levers | cost | statistic | objective |",
        "|---|---|---|---|---|",
    ]
    step = max(1, len(res.trajectory) // 10)
    for t in res.trajectory[::step] + [res.trajectory[-1]]:
        lines.append(
            f"| {t['iteration']} | {fmt(t['values'])} | {t['cost']:.3f} | {usd(t['statistic'])} | {t['objective']:.4g} |"
        )
    st, se = res.start, res.searched
    start_text = (
        f"Started from the cheapest feasible point of an exact {s.grid_points}-per-lever grid on "
        f"scouting paths ({fmt(st['values'])}: cost {st['cost']:.3f}, statistic {usd(st['statistic'])}); the search "
        f"ended at {fmt(se['values'])} (cost {se['cost']:.3f}, statistic {usd(se['statistic'])} on the same paths). "
        f"The optimum is the end of the search if it is feasible there with P(feasible) >= {s.confidence} "
        "and no costlier, else the start."
    )
    return [*lines, "", start_text]


def check_section(oc: OptimisationConfig, res: Result, summary: dict) -> list[str]:
    """The exact check of the optimum and of the best grid point on fresh paths, and the verdict."""
    fmt, confidence = lever_formatter(oc), oc.optimise.confidence
    c, b = res.check, res.best_grid
    lines = [
        f"## Exact check on {oc.optimise.check_paths} fresh paths",
        "",
        f"P(feasible) = Phi((bound - statistic) / s.e.); a point is accepted at P(feasible) >= {confidence}.",
        "",
        "| policy | levers | cost | statistic ± MC s.e. | P(feasible) |",
        "|---|---|---|---|---|",
        f"| optimum | {fmt(c['values'])} | {c['cost']:.3f} | {usd(c['statistic'])} ± {usd(c['mc_se'])} | {c['p_feasible']:.3f} |",
    ]
    if b:
        lines.append(
            f"| best grid point | {fmt(b['values'])} | {b['cost']:.3f} | {usd(b['statistic'])} ± {usd(b['mc_se'])} | {b['p_feasible']:.3f} |"
        )
    lines += [
        "",
        f"Grid: {oc.optimise.grid_points} points per lever ({len(res.grid)} in all), same paths.",
        "",
    ]
    within = summary["optimum_at_least_as_good_as_grid"]
    return [*lines, verdict(c, b, confidence, within, fmt)]


def verdict(check: dict, best: dict | None, confidence: float, within: bool, fmt: Callable) -> str:
    """The report's conclusion: accepted or not at `confidence`, and what to use instead."""
    if check["p_feasible"] >= confidence:
        return (
            f"**Accepted**: the optimum is feasible with P = {check['p_feasible']:.3f} >= {confidence}; "
            f"at least as good as the best grid point: {within}."
        )
    text = f"**Not accepted**: the optimum is feasible with P = {check['p_feasible']:.3f} only (< {confidence}). "
    if best is None:
        return text + f"No grid point is feasible at confidence {confidence} either."
    return text + (
        f"The cheapest grid point feasible at that confidence is {fmt(best['values'])} "
        f"(cost {best['cost']:.3f}, P = {best['p_feasible']:.3f})."
    )
