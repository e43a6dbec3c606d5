"""Levers that cannot change anything: sweep axes whose values all give the same simulation,
grid points that duplicate another, and settings of the scenario that move nothing.

Two points simulate the same thing when their model parameters (`engine.config.build.
host_params`, every leaf) and kernel form are equal: same paths, same numbers. A sweep axis is
inert when, at every combination of the other axes, all its values give equal points (a depeg
on a book without collateral accounts, a breaker threshold with `policy.breaker.kind = "none"`);
it costs a run its size in compute and reads like a finding ("the lever does not matter") when
it is a mistake. Duplicates that no inert axis explains (a threshold that matters only where
the breaker kind is an axis) are named too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from engine.config import build
from engine.config.schema import Config

if TYPE_CHECKING:
    from engine.config.sweep import Axis

# Duplicate points named in a warning; the rest are counted.
SHOWN = 3


def fingerprint(cfg: Config) -> str:
    """A digest of what `cfg` simulates: every model parameter (dtype, shape, bytes) and whether
    holders close voluntarily (the one setting of the step's form that parameters do not show)."""
    h = hashlib.sha256(repr(build.derisks([cfg])).encode())
    for leaf in _leaves(build.host_params(cfg)):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _leaves(tree) -> list:
    """The array leaves of a tree of NamedTuples (None leaves skipped), in field order."""
    if tree is None:
        return []
    if isinstance(tree, tuple):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


def _why(axis: Axis, cfg: Config) -> str:
    """A likely reason an axis cannot change anything, for the known cases."""
    if axis.path.startswith("scenario.depegs") and build.collateral_params(cfg) is None:
        return "the book has no cross-margin accounts posting collateral, so a depeg moves nothing"
    if axis.path.startswith("policy.breaker.") and axis.path != "policy.breaker.kind":
        return f'policy.breaker.kind is "{cfg.policy.breaker.kind}"'
    if axis.path.startswith("collateral.") and build.collateral_params(cfg) is None:
        return "the book has no cross-margin accounts posting collateral"
    return "every value gives the same model parameters"


def idle_settings(cfg: Config) -> list[str]:
    """One sentence per setting of the scenario that cannot change anything: collateral assets
    (and their depegs) on a book without cross-margin accounts to post them."""
    if cfg.collateral and build.collateral_params(cfg) is None:
        depegs = f" and its {len(cfg.scenario.depegs)} scenario.depegs" if cfg.scenario.depegs else ""
        return [
            (
                f"collateral ({', '.join(cfg.collateral)}){depegs} cannot change anything: the book has no "
                "cross-margin accounts to post collateral (a positions file with cross rows has them)"
            )
        ]
    return []


def lever_warnings(axes: Sequence[Axis], points: Sequence[Config], coords: Sequence[tuple]) -> list[str]:
    """One sentence per inert axis, and one for grid points that duplicate another point
    without an inert axis to explain it. Empty for a grid without axes."""
    if not axes:
        return []
    prints = [fingerprint(p) for p in points]
    out, inert = [], set()
    for k, axis in enumerate(axes):
        groups: dict[tuple, set[str]] = {}
        for c, fp in zip(coords, prints):
            groups.setdefault(c[:k] + c[k + 1 :], set()).add(fp)
        if len(axis.values) > 1 and all(len(g) == 1 for g in groups.values()):
            inert.add(k)
            out.append(
                f"sweep axis {axis.path} cannot change anything: {_why(axis, points[0])}; its "
                f"{len(axis.values)} values give the same simulation wherever the other axes stand"
            )
    first: dict[tuple, int] = {}
    dupes = []
    for i, (c, fp) in enumerate(zip(coords, prints)):
        key = (fp, tuple(v for k, v in enumerate(c) if k in inert))
        if key in first:
            dupes.append((i, first[key]))
        else:
            first[key] = i
    if dupes:
        label = lambda i: ", ".join(f"{a.name}={v}" for a, v in zip(axes, coords[i]))
        shown = "; ".join(f"({label(i)}) = ({label(j)})" for i, j in dupes[:SHOWN])
        more = f" and {len(dupes) - SHOWN} more" if len(dupes) > SHOWN else ""
        out.append(
            f"{len(dupes)} sweep point(s) simulate the same thing as another point: {shown}{more}; "
            'a lever there is off (e.g. a breaker threshold where policy.breaker.kind is "none")'
        )
    return out
