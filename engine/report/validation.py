"""Reports of the joint calibration over events and of the leave-one-event-out backtest.

`write_joint` writes `fitted.json`, `report.md` and `loss_curve.png` of `liqstress calibrate`
on a joint config (`engine.fit.joint`); `write_validation` writes `validation.md`,
`validation.json` and `validation.png` of `liqstress backtest` (`engine.fit.backtest`).
Every file is written whole or not at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from engine.fit.backtest import Fold, TargetResult
from engine.fit.event_problem import EventProblem, layout
from engine.fit.event_setup import LOG_KINDS, JointConfig
from engine.fit.joint import JointAssessment, JointFit
from engine.report.fits import NOT_CONVERGED_RULE, loss_curve
from engine.report.ticks import plain_log_axis
from engine.report.units import usd
from engine.runs.rundir import write_text_atomic

KIND_TITLES = {
    "liquidations": "total liquidations",
    "long_share": "long share",
    "by_asset": "per-asset liquidations",
    "fall": "fall (input)",
    "open_interest": "open-interest decline",
}


def save_figure(fig: Figure, path: Path) -> None:
    """Save `fig` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finite_or_none(x: float) -> float | None:
    """`x`, or None where it is not finite (JSON has no inf or NaN)."""
    return float(x) if np.isfinite(x) else None


def se_text(x: float | None) -> str:
    """A curvature standard error, or "not identified" (None)."""
    return "not identified" if x is None else f"{x:.2g}"


def fmt(kind: str, x: float) -> str:
    """A statistic of `kind` for a table: USD for liquidations, else a fraction."""
    return usd(x) if kind in LOG_KINDS else f"{x:.3f}"


def reported(t) -> str:
    """The reported value or range."""
    kind = t.kind
    return fmt(kind, t.value) if t.low == t.high else f"{fmt(kind, t.low)}–{fmt(kind, t.high)}"


# ----------------------------------------------------------------------------------------
# Joint calibration
# ----------------------------------------------------------------------------------------


def write_joint(
    jc: JointConfig,
    probs: dict[str, EventProblem],
    fits: list[JointFit],
    a: JointAssessment,
    curvature: tuple[np.ndarray, np.ndarray],
    run_dir: Path,
) -> dict:
    """fitted.json, report.md and loss_curve.png of a joint calibration in `run_dir`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = joint_summary(jc, probs, fits, a, curvature)
    save_figure(loss_curve(fits), run_dir / "loss_curve.png")
    write_text_atomic(run_dir / "report.md", joint_markdown(jc, probs, fits, a, summary))
    write_text_atomic(run_dir / "fitted.json", json.dumps(summary, indent=2))
    return summary


def joint_summary(jc, probs, fits, a: JointAssessment, curvature) -> dict:
    """fitted.json: shared values and shocks (mean and sd over converged seeds, per seed, and
    the curvature standard error), their correlations, and each event's targets."""
    se, corr = curvature
    lay = layout(jc)
    names = list(probs)
    n = len(lay.paths)
    return {
        "params": [
            {
                "path": path,
                "lower": float(lay.lower[i]),
                "upper": float(lay.upper[i]),
                "mean": float(a.values[i]),
                "std_over_seeds": float(a.spread[i]),
                "curvature_se": finite_or_none(se[i]),
                "per_seed": [float(f.values[i]) for f in fits],
            }
            for i, path in enumerate(lay.paths)
        ],
        "shocks": {
            name: {
                "mean": a.shocks[name],
                "std_over_seeds": a.shock_spread[name],
                "curvature_se": finite_or_none(se[n + k]),
                "per_seed": [f.shocks[name] for f in fits],
            }
            for k, name in enumerate(names)
        },
        "correlations": {
            "order": list(lay.paths) + [f"shock.{x}" for x in names],
            "matrix": [[finite_or_none(round(float(x), 4)) for x in row] for row in corr],
        },
        "events": {
            name: [
                {
                    "target": t.label,
                    "reported": t.value,
                    "low": t.low,
                    "high": t.high,
                    "fitted_mean": float(st),
                }
                for t, st in zip(probs[name].targets, a.statistics[name])
            ]
            for name in names
        },
        "seeds": [f.seed for f in fits],
        "converged": [bool(c) for c in a.converged],
        "best_loss": [f.loss for f in fits],
        "not_converged_rule": NOT_CONVERGED_RULE,
        "settings": jc.calibration.model_dump(),
    }


def joint_markdown(jc, probs, fits, a: JointAssessment, summary: dict) -> str:
    """report.md of a joint calibration: seeds, shared parameters, shocks, correlations, the
    targets of every event against the fit, and the observables the events lack."""
    lines = [
        "# Joint calibration report",
        "",
        (
            f"Events: {', '.join(probs)}. Template `{jc.scenario.name}`, {jc.calibration.n_paths} paths per seed and "
            f"event, {jc.scenario.run.steps} steps of {jc.scenario.run.dt_minutes:g} min, seeds "
            f"{[f.seed for f in fits]}, temperature {jc.calibration.temperature}. Means and sds are over the "
            f"converged seeds ({summary['not_converged_rule']}); the curvature s.e. (Gauss-Newton) takes each "
            "target's tolerance over the square root of its weight as its standard deviation."
        ),
        "",
        "| seed | best loss | converged |",
        "|---|---|---|",
    ]
    lines += [f"| {f.seed} | {f.loss:.4g} | {'yes' if c else '**no**'} |" for f, c in zip(fits, a.converged)]
    lines += [
        "",
        "## Shared parameters",
        "",
        "| parameter | bounds | fitted (mean) | sd over seeds | curvature s.e. |",
    ]
    lines.append("|---|---|---|---|---|")
    for p in summary["params"]:
        lines.append(
            f"| `{p['path']}` | [{p['lower']:g}, {p['upper']:g}] | {p['mean']:.4g} | {p['std_over_seeds']:.2g} | "
            f"{se_text(p['curvature_se'])} |"
        )
    lines += [
        "",
        "## Shocks (per event)",
        "",
        "| event | shock | sd over seeds | curvature s.e. |",
        "|---|---|---|---|",
    ]
    for name, s in summary["shocks"].items():
        lines.append(
            f"| {name} | {s['mean']:.4f} | {s['std_over_seeds']:.2g} | {se_text(s['curvature_se'])} |"
        )
    order, corr = summary["correlations"]["order"], summary["correlations"]["matrix"]
    lines += [
        "",
        "## Correlations of the fitted values",
        "",
        "| | " + " | ".join(f"`{x}`" for x in order) + " |",
    ]
    lines.append("|---" * (len(order) + 1) + "|")
    for i, x in enumerate(order):
        lines.append(f"| `{x}` | " + " | ".join("–" if v is None else f"{v:+.2f}" for v in corr[i]) + " |")
    lines += ["", "## Targets", "", "| event | target | reported | fitted (mean) |", "|---|---|---|---|"]
    for name, pr in probs.items():
        for t, st in zip(pr.targets, a.statistics[name]):
            lines.append(f"| {name} | `{t.label}` | {reported(t)} | {fmt(t.kind, float(st))} |")
    missing = {name: pr.missing for name, pr in probs.items() if pr.missing}
    if missing:
        lines += ["", "Observables not in the event files (neutral values used):", ""]
        lines += [f"- {name}: {', '.join(m)}" for name, m in missing.items()]
    lines += ["", "![loss curve](loss_curve.png)", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Backtest
# ----------------------------------------------------------------------------------------


def goal_text(r: TargetResult) -> str:
    """A target's goal column: met or missed, by how much (a factor or a difference), the goal."""
    if r.goal is None:
        return "–"
    factor = r.target.kind in LOG_KINDS
    miss = f"×{r.miss:.2f}" if factor else f"{r.miss:.3f}"
    goal = f"×{r.goal:g}" if factor else f"{r.goal:g}"
    return f"{'met' if r.met else '**missed**'} ({miss}; goal {goal})"


def validation_summary(jc: JointConfig, folds: list[Fold], command: str) -> dict:
    """validation.json: per held-out event, the fold's values and each target's result."""
    lay = layout(jc)
    return {
        "command": command,
        "paths": jc.backtest.n_paths,
        "band": jc.backtest.band,
        "params": list(lay.paths),
        "folds": [
            {
                "held_out": f.event,
                "values": f.values.tolist(),
                "std_over_seeds": f.spread.tolist(),
                "shock": f.shock,
                "targets": [
                    {
                        "target": r.target.label,
                        "kind": r.target.kind,
                        "reported": r.target.value,
                        "reported_low": r.target.low,
                        "reported_high": r.target.high,
                        "median": r.median,
                        "band_low": r.low,
                        "band_high": r.high,
                        "miss": r.miss,
                        "goal": r.goal,
                        "met": r.met,
                    }
                    for r in f.results
                ],
            }
            for f in folds
        ],
    }


def validation_markdown(
    jc: JointConfig, folds: list[Fold], probs: dict[str, EventProblem], command: str
) -> str:
    """validation.md: how it was made, the goals met, every held-out target (reported against
    predicted median and band), the values fitted per fold, and the observables the events lack."""
    lay = layout(jc)
    pct = round(100 * jc.backtest.band)
    graded = [r for f in folds for r in f.results if r.goal is not None]
    lines = [
        "# Out-of-sample validation: leave one event out",
        "",
        (
            f"Written by `{command}`. For each event: the shared parameters are fitted on the other events "
            f"(`liqstress calibrate`, {len(jc.backtest.seeds or jc.calibration.seeds)} seeds of {jc.calibration.n_paths} paths, relaxed "
            "kernel); the held-out event's shock is fitted to its observed falls alone; then "
            f"{jc.backtest.n_paths} fresh paths of the exact kernel predict its outcomes from its pre-event state. "
            f"Predicted: the median over paths and the central {pct}% band. A reported range counts as met when "
            "the median lies in it; outside it the miss is to the nearer end. The fall is an input (fitted), "
            "shown as a check."
        ),
        "",
        (
            f"Goals met: **{sum(bool(r.met) for r in graded)} of {len(graded)}**. Goals: total liquidations within "
            f"×{jc.tolerances.liquidations_factor:g}, long share within {jc.tolerances.long_share:g}, per-asset "
            f"liquidations within ×{jc.tolerances.by_asset_factor:g}."
        ),
        "",
        f"| held-out event | target | reported | predicted median [{pct}% band] | goal |",
        "|---|---|---|---|---|",
    ]
    for f in folds:
        for r in f.results:
            k = r.target.kind
            lines.append(
                f"| {f.event} | {KIND_TITLES[k]}{'' if r.target.asset is None else ' ' + r.target.label.split('.')[-1]} "
                f"| {reported(r.target)} | {fmt(k, r.median)} [{fmt(k, r.low)}, {fmt(k, r.high)}] | {goal_text(r)} |"
            )
    lines += [
        "",
        "![predicted against reported](validation.png)",
        "",
        "## Fitted on the other events",
        "",
        "| held out | " + " | ".join(f"`{p}`" for p in lay.paths) + " | held-out shock |",
        "|---" * (len(lay.paths) + 2) + "|",
    ]
    for f in folds:
        vals = " | ".join(f"{v:.3g} ± {s:.1g}" for v, s in zip(f.values, f.spread))
        lines.append(f"| {f.event} | {vals} | {f.shock:.4f} |")
    lines += ["", "Values: mean ± sd over converged seeds.", ""]
    unfitted = [f.event for f in folds if not any(r.target.kind == "fall" for r in f.results)]
    if unfitted:
        lines += [f"No observed fall, so the shock stayed at its starting value: {', '.join(unfitted)}.", ""]
    missing = {name: probs[name].missing for name in (f.event for f in folds) if probs[name].missing}
    if missing:
        lines += ["Observables not in the event files (the book map used neutral values):", ""]
        lines += [f"- {name}: {', '.join(m)}" for name, m in missing.items()]
        lines.append("")
    return "\n".join(lines)


def validation_figure(folds: list[Fold]) -> Figure:
    """Predicted (median and band) against reported (range), one panel per kind of goal, with
    the range a median must fall in to meet the goal shaded: liquidations as predicted over
    reported (log scale)."""
    kinds = ["liquidations", "by_asset", "long_share"]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 3, width_ratios=[1, 2.2, 1])
    for ax, kind in zip(axes, kinds):
        rows = [(f.event, r) for f in folds for r in f.results if r.target.kind == kind]
        ratio = kind != "long_share"
        for i, (_, r) in enumerate(rows):
            ref = r.target.value if ratio else 1.0
            t = r.target
            goal = (t.low / r.goal, t.high * r.goal) if ratio else (t.low - r.goal, t.high + r.goal)
            ax.plot(
                [i, i], [goal[0] / ref, goal[1] / ref], color="C2", lw=14, alpha=0.18, solid_capstyle="butt"
            )
            ax.plot([i, i], [t.low / ref, t.high / ref], color="0.5", lw=7, alpha=0.6)
            m, b0, b1 = (r.median / ref, r.low / ref, r.high / ref)
            ax.errorbar([i], [m], yerr=[[m - b0], [b1 - m]], fmt="o", color="C0", capsize=3)
        labels = [
            e.replace("_", " ") + ("" if r.target.asset is None else f" {r.target.label.split('.')[-1]}")
            for e, r in rows
        ]
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        if ratio:
            ax.set_yscale("log")
            plain_log_axis(ax.yaxis)
            ax.set_ylabel("predicted / reported")
            ax.axhline(1.0, color="0.3", lw=0.8)
        else:
            ax.set_ylabel("long share of liquidations")
        ax.set_title(KIND_TITLES[kind], fontsize=9)
    fig.suptitle(
        "held-out events: predicted median and band (blue), reported value or range (grey), goal (green)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def write_validation(jc: JointConfig, folds: list[Fold], probs, out: Path, command: str) -> dict:
    """validation.md, validation.json and validation.png in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = validation_summary(jc, folds, command)
    save_figure(validation_figure(folds), out / "validation.png")
    write_text_atomic(out / "validation.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "validation.md", validation_markdown(jc, folds, probs, command))
    return summary
