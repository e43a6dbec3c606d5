"""What one path-step costs, by kernel form and book, and device calls sized from it.

A Python signal handler runs only between bytecodes, so Ctrl-C and SIGTERM wait for the device
call in flight. `engine.sim.simulate` therefore sizes its calls from this model (paths per
chunk, `call_paths`; steps per call, `call_steps`) so that one call does about `CALL_TARGET_S`
of work, and looks at the signals between calls. The model also tells people which kernel form
runs and why (`kernel_note`, in the run plan).

Seconds per path-step on the 2-core CPU this was measured on (2 host devices; 256 paths x 48
steps of the test book `tests/conftest.py` SMALL, shock included, 2 assets; timed with
`engine.sim.rollout.sharded_rollout`, best of two calls after compiling, with other work
loading the machine 3-6, so up to about 3x slower than an idle one):

| book (per asset) | form | us per path-step |
|---|---|---|
| 48 cohorts | dense, whole positions | 2.3 |
| 1,024 cohorts | dense, whole positions | 49 (46 at 1,024 paths) |
| 1,024 cohorts | ladder | 7.9 (also at 64 paths) |
| 1,024 cohorts | dense, partial liquidation | 341 |
| 1,024 cohorts | dense, voluntary closing | 126 |
| 4,096 cohorts | dense, whole positions | 302 |
| 5,690 cohorts (positions file) | dense, whole positions | 502 |
| 12,814 cohorts, half with stop orders | dense, general cascade | 5,490 |
| 4,921 cross-margin account cohorts | dense, general cascade | 2,990 |

and 0.2 ms per step of a call at 64 paths of the 48-cohort book (a fixed cost per step). The
constants below are fitted to these per asset; the model is meant to bound a call, not to
forecast a run (the progress reports do that from the run itself).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from engine.config import forms
from engine.config.schema import Config
from engine.model.params import Static
from engine.sim.rollout import SEGMENT_STEPS

# Work of one device call (seconds): long enough that the call's fixed costs (dispatch, a wait
# on the host) stay below 1%, short enough that an interrupt ends a run within seconds.
CALL_TARGET_S = 1.0
# Per step of a call, whatever its paths (XLA's dispatch of the step's operations).
STEP_S = 2e-4
# Per asset of one path-step: the ladder's, and the dense kernel's besides its cohorts.
LADDER_ASSET_S = 4e-6
DENSE_ASSET_S = 1e-6
# Per cohort of one asset and path-step: the whole-position cascade, the general one (partial
# liquidation, stop orders, accounts), and voluntary closing on top of either.
WHOLE_COHORT_S = 30e-9
GENERAL_COHORT_S = 200e-9
DERISK_COHORT_S = 40e-9
# Per leg (account cohort x asset) of one path-step, dense; per account cohort on the ladder
# (its row of the shared table, `engine.model.account_book`; W5's 98,110 account cohorts, 32
# paths x 288 steps with half the accounts liquidated: 2.5 ms per path-step on one device).
ACCOUNT_LEG_S = 300e-9
LADDER_ACCOUNT_S = 25e-9
# How much faster than the CPU above an accelerator runs a call: an estimate, not measured (no
# GPU was lent to this project; the H200 estimate of `benchmarks/README.md` puts W1 300 to
# 1,000 times above this CPU), low so that calls stay short rather than long.
ACCELERATOR_SPEEDUP = 100.0


def path_step_seconds(static: Static, accelerator: bool = False) -> float:
    """Estimated device seconds of one path advanced one step in `static`'s kernel form."""
    if static.ladder:
        seconds = static.n_assets * LADDER_ASSET_S + static.n_accounts * LADDER_ACCOUNT_S
    else:
        general = not static.whole_only or static.n_accounts or static.stops
        per_cohort = (GENERAL_COHORT_S if general else WHOLE_COHORT_S) + (
            DERISK_COHORT_S if static.derisk else 0.0
        )
        seconds = static.n_assets * (DENSE_ASSET_S + static.n_cohorts * per_cohort)
        seconds += static.n_assets * static.n_accounts * ACCOUNT_LEG_S
    return seconds / (ACCELERATOR_SPEEDUP if accelerator else 1.0)


def call_paths(static: Static, accelerator: bool = False) -> int:
    """Most paths whose one step stays within `CALL_TARGET_S` (at least 1)."""
    return max(1, int(CALL_TARGET_S / path_step_seconds(static, accelerator)))


def call_steps(static: Static, n_paths: int, accelerator: bool = False) -> int:
    """Steps per device call of a chunk of `n_paths` paths: about `CALL_TARGET_S` of work, at
    least 1, at most `SEGMENT_STEPS` and `static.steps`, and as even as the calls allow (288
    steps at most 100 per call run as 3 calls of 96, not 100, 100 and 88)."""
    seconds = (STEP_S / (ACCELERATOR_SPEEDUP if accelerator else 1.0)) + n_paths * path_step_seconds(
        static, accelerator
    )
    most = max(1, min(SEGMENT_STEPS, static.steps, int(CALL_TARGET_S / seconds)))
    calls = -(-static.steps // most)
    return -(-static.steps // calls)


def kernel_note(statics: Sequence[Static], points: Sequence[Config]) -> str:
    """One line for the run plan: the kernel form of the points (each point's `static` as
    `forms.specialise` made it), and for a dense one what forced it and what it costs per
    path-step against the ladder on the same assets (`path_step_seconds`); for a ladder one, the
    rule that would hand paths to the dense kernel (pro-rata ADL, `engine.model.ladder_adl`)."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(statics):
        groups.setdefault(forms.form(s), []).append(i)
    parts = []
    for name, idx in groups.items():
        where = "" if len(groups) == 1 else f" at point(s) {', '.join(map(str, idx))}"
        s = statics[idx[0]]
        if name == "ladder":
            held = "; stop orders in rung groups of their own" if s.stops else ""
            held += f"; {s.n_accounts:,} account cohorts in one shared table" if s.n_accounts else ""
            rerun = ""
            if any(points[i].policy.adl_rule == "pro_rata" for i in idx):
                rerun = "; a path that needs pro-rata ADL is rerun on the dense kernel"
            parts.append(f"ladder{where} (positions closed whole{held}, the fast path{rerun})")
            continue
        ladder = dataclasses.replace(s, ladder=1, whole_only=True, n_accounts=0, stops=False, derisk=False)
        ratio = path_step_seconds(s) / path_step_seconds(ladder)
        why = "; ".join(forms.reasons(s, [points[i] for i in idx]))
        parts.append(
            f"{name}{where}, for {why}; about {ratio:,.1f}x the cost per path-step of the ladder "
            "(README: Kernel forms and their cost)"
        )
    return "kernel: " + "; ".join(parts)
