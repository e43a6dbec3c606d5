"""The kernel form of each point: chosen here and only here, with the reason.

The exact kernel runs in one of three forms (`form`), set in `Static` by `specialise`:

- "ladder": positions closed whole, isolated ones and the stop orders of `book.stops` sorted
  into rung groups (`engine.model.ladder`; `Static.ladder`) and cross-margin accounts with their
  collateral as one shared table (`engine.model.account_book`), the fast path;
- "dense": the whole-position cascade over every cohort (`Static.whole_only`);
- "dense general": the general cascade (`engine.model.cascade`), the only form that simulates
  partial liquidation and stop prices on positions, and the ladder's fallback.

Fits run the fourth, "relaxed" (`Static.relaxed`, `engine.fit`), on the books `relaxable`
allows. A point goes to the ladder unless a feature of its book or policy keeps it off
(`blockers`), `run.kernel = "dense"` asks for the dense form, or, with `run.kernel = "auto"`, the
run is too small for the ladder's longer compilation to pay (`LADDER_MIN_COHORT_STEPS`).
`run.kernel = "ladder"` is honoured, or refused naming the feature that prevents it
(`check_forced`): a form never changes silently. `reasons` says in words why a point is not on
the ladder, for the run plan; the cube records each point's form (`kernel_form`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from engine.config import book_file, build
from engine.config.errors import ConfigError
from engine.config.schema import Config
from engine.model.params import Static

# Least work (path-steps x cohorts per path) for which "auto" picks the ladder kernel. The ladder
# is faster per path-step at every book size measured (CPU, 2 host devices, W1's book at
# 8,192 x 288 paths; benchmarks/README.md) but compiles in 9-12 s instead of 3-6 s, which a
# smaller run does not win back: W1 at 65,536 x 288 paths (4.8e9) takes dense 13.0 s + 3.6 s
# compile, ladder 4.2 s + 12.6 s. Per point, so that a point's kernel depends on that point alone.
LADDER_MIN_COHORT_STEPS = 5 * 10**9

# An account cohort's weight in that work against an isolated cohort's: on the dense kernel one
# costs about 300 ns per asset and path-step, an isolated cohort 30 (`engine.sim.cost`).
ACCOUNT_WEIGHT = 10

# Largest integer dof drawn loop-free (floor(n / 2) exponentials per path-step).
LOOP_FREE_DOF = 16

FORMS = ("ladder", "dense", "dense general", "relaxed")


def blockers(static: Static, points: Sequence[Config]) -> list[str]:
    """The features of `points` (with `static`, `build.static_of` of their shape) that keep
    them off the ladder, each in words with the setting that brings it; empty if none does."""
    out = []
    if static.stops and any(p.book.positions and book_file.has_stops(p) for p in points):
        out.append("stop prices on positions (stop_price in book.positions)")
    partial = sorted({p.policy.partial_liquidation for p in points if p.policy.partial_liquidation < 1.0})
    if partial:
        out.append(
            f"partial liquidation (policy.partial_liquidation = {', '.join(f'{x:g}' for x in partial)})"
        )
    return out


def check_forced(static: Static, points: Sequence[Config]) -> None:
    """`ConfigError` where `run.kernel = "ladder"` asks for a form a feature prevents, naming
    the feature and what to set instead."""
    if any(p.run.kernel == "ladder" for p in points) and (why := blockers(static, points)):
        raise ConfigError(
            f"run.kernel = 'ladder' cannot simulate {'; '.join(why)}: set run.kernel to 'auto' or 'dense', "
            "or remove the feature"
        )


def specialise(static: Static, points: Sequence[Config]) -> Static:
    """`static` with the fastest forms that every one of `points` allows: the ladder where no
    `blockers` keep them off and `run.kernel` and the run's size choose it (`_on_ladder`), else
    the whole-position cascade when no point liquidates partially and the book has no accounts
    or stops, else the general one; and the loop-free chi-square when every point's dof is an
    integer up to `LOOP_FREE_DOF`. Voluntary closing (`Static.derisk`) is turned on where some
    point's rates are above 0 (a `static` that has it on keeps it); every form simulates it
    (on the ladder as the share of its t0 units each side holds, `engine.model.derisk.shrink`).
    `check_forced` first.

    The numbers of the whole-position cascade equal the general one's, the ladder's the dense
    kernel's (to the rounding of their sums; paths it cannot finish exactly are rerun on the
    dense kernel, `engine.sim.fallback`); the loop-free chi-square has the same distribution as
    the gamma sampler's but other draws. `engine.simulate` specialises each point on its own, so
    that a point's numbers depend only on that point, not on which others share the call.
    """
    check_forced(static, points)
    dofs = [p.market.tail_dof for p in points]
    integer = all(d == int(d) and d <= LOOP_FREE_DOF for d in dofs)
    general = bool(static.n_accounts or static.stops)
    closes_whole = all(p.policy.partial_liquidation >= 1.0 for p in points)
    whole = not general and closes_whole
    derisk = static.derisk or build.derisks(list(points))
    from engine.model import ladder  # imports JAX: only a simulation specialises

    rungs = (
        [ladder.layout(c.side, c.mmr, c.stop) for c in map(build.cohorts, points)]
        if not blockers(static, points) and _on_ladder(static, points)
        else [(0, 0)]
    )
    return dataclasses.replace(
        static,
        derisk=derisk,
        whole_only=whole,
        dof_max=max(1, int(max(dofs))) if integer else 0,
        ladder=max(r for r, _ in rungs),
        ladder_cells=max(c for _, c in rungs),
    )


def point_static(point: Config) -> Static:
    """The static settings `point` runs with on its own (`build.build`'s, `specialise`d to it):
    what `engine.simulate` runs each point in, and the run plan names."""
    return specialise(dataclasses.replace(build.static_of(point), derisk=build.derisks([point])), [point])


def _on_ladder(static: Static, points: Sequence[Config]) -> bool:
    """Whether points that close positions whole run on the ladder: `run.kernel`, and for "auto"
    a run of at least `LADDER_MIN_COHORT_STEPS` path-steps x cohorts per path (an account cohort
    counting `ACCOUNT_WEIGHT` per asset)."""
    kinds = {p.run.kernel for p in points}
    if kinds == {"auto"}:
        book = static.n_cohorts + ACCOUNT_WEIGHT * static.n_accounts
        work = min(p.run.n_paths for p in points) * static.steps * static.n_assets * book
        return work >= LADDER_MIN_COHORT_STEPS
    return kinds == {"ladder"}


def form(static: Static) -> str:
    """The name of the form `static` (as `specialise` set it) runs: one of `FORMS`."""
    if static.relaxed:
        return "relaxed"
    if static.ladder:
        return "ladder"
    return "dense" if static.whole_only and not (static.n_accounts or static.stops) else "dense general"


def reasons(static: Static, points: Sequence[Config]) -> list[str]:
    """Why `static` (specialised to `points`) is not on the ladder, in words; empty on it."""
    if static.ladder:
        return []
    if why := blockers(static, points):
        return why
    if any(p.run.kernel == "dense" for p in points):
        return ['run.kernel = "dense"']
    small = f"a small run (the ladder pays from {LADDER_MIN_COHORT_STEPS:,.0f} paths x steps x cohorts"
    return [f'{small}; run.kernel = "ladder" forces it)']


def relaxable(cfg: Config) -> Config:
    """`cfg`, or a ConfigError naming the field that gives it what the relaxed kernel does not
    simulate: cross-margin accounts, collateral, stop orders (an isolated book without stops)."""
    why = "calibration and optimisation run the relaxed kernel, which takes isolated books without stops"
    if cfg.book.stops:
        raise ConfigError(f"book.stops: {why}; allowed: none (got {len(cfg.book.stops)} stop orders)")
    if cfg.collateral:
        raise ConfigError(f"collateral: {why} or collateral; allowed: none (got {', '.join(cfg.collateral)})")
    static = build.static_of(cfg) if cfg.book.positions else None
    if static and (static.n_accounts or static.stops):
        what = "cross-margin rows" if static.n_accounts else "stop prices"
        raise ConfigError(
            f"book.positions = {cfg.book.positions!r}: {why}; the file has {what}; allowed: isolated rows "
            "without stop_price"
        )
    return cfg
