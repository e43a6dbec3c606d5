"""How many ladder segments partial liquidation would need: the staircase of levels, measured.

    python benchmarks/partial_segments.py [--workload W3] [--partial F] [--paths 64]
        [--steps 720] [--every 24] [--save]

A partial liquidation closes a share `f` of each hit cohort whose rest stays solvent, at the
round's fill, and moves its bankruptcy price by the same affine map for every cohort of one
rung group hit in that round: `b' = (b - f fill (1 - s c)) / (1 - f)` (`engine.model.cascade`;
c the clearance fee). Cohorts that went through the same rounds share one composite map and
form one *segment* of their group; a path's book on the ladder would be its segments per rung
group (range, map, units scale), which grow with the events a path goes through, not with the
cohorts.

The script runs a workload's book (default W3: 2,000 cohorts at 20x, a quarter per partial
event; `--partial` sets `policy.partial_liquidation`) on the dense general cascade, which holds
each cohort's units and bankruptcy price, and every `--every` steps counts per rung group (side,
base rate) the distinct maps `b = b0 / (1 - f)^n + beta` among its open cohorts that were cut
(`n` from `q / q0`, `beta` to `TIE` of the price), plus one for the untouched ones. It reports
the largest count over paths, groups and steps, its quantiles over path-steps, and the share
of path-steps and of paths above 8 and 32 segments.

Within a rung group the maintenance amount per unit `a` varies (by size within a tier), and a
map with `alpha = 1 / (1 - f)^n` takes the keys `k = b - s a` to `alpha k + (alpha - 1) s a +
beta'`: it keeps their order up to a band of `(alpha - 1)` times the spread of `a`, reported for
one event relative to the price (`reorder_band`). Writes `partial_segments_<workload>.json` to a
new run directory, or with `--save` to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math

import numpy as np
from run import load_workload, machine_info, results_dir

# Relative difference of two maps' offsets counted as rounding: 64 units in the last place of
# float32, the workloads' dtype.
TIE = 64 * float(np.finfo(np.float32).eps)


def segments(q, b, q0, b0, side, mmr, f: float, price: float) -> int:
    """The most segments of one rung group in one path's book: q, b `[cohorts]` the units and
    bankruptcy prices now, q0, b0 at t0 (after the leverage cap), side, mmr `[cohorts]` (NumPy);
    f the partial fraction; price the asset's t0 price (USD, the scale of `beta`). Maps whose
    `beta` differ by less than `TIE` of the price count as one (the dtype's rounding)."""
    most = 0
    open_ = q > 0
    cut = open_ & (q < q0 * (1 - 1e-9))
    share = np.where(cut, q / np.where(cut, q0, 1.0), 1.0)
    n = np.rint(np.log(share) / math.log(1 - f))
    beta = b - b0 / (1 - f) ** n
    for key in {(s, m) for s, m in zip(side[open_], mmr[open_])}:
        group = open_ & (side == key[0]) & (mmr == key[1])
        maps = {(int(k), round(float(v) / price / TIE)) for k, v in zip(n[group & cut], beta[group & cut])}
        most = max(most, len(maps) + int(np.any(group & ~cut)))
    return most


def spread(side, mmr, maint, q0, price, f: float) -> float:
    """The widest band, relative to the price, over which one partial event can reorder a rung
    group's keys: `f / (1 - f)` times the spread of its maintenance amounts per unit."""
    widest = 0.0
    for a in range(side.shape[0]):
        held = q0[a] > 0
        for key in {(s, m) for s, m in zip(side[a][held], mmr[a][held])}:
            amounts = maint[a][held & (side[a] == key[0]) & (mmr[a] == key[1])]
            widest = max(widest, f / (1 - f) * float(amounts.max() - amounts.min()) / float(price[a]))
    return widest


def measure(workload: str, n_paths: int, steps: int, every: int, partial: float | None) -> dict:
    """Segment counts of `workload`'s book on `n_paths` paths, every `every` steps up to `steps`,
    with `policy.partial_liquidation = partial` (None: the workload's)."""
    import jax

    from engine.config import build, forms
    from engine.model.policies import cap_leverage
    from engine.sim.rollout import _advance, _begin

    cfg = load_workload(workload, paths=n_paths, steps=steps, kernel="dense")[0]
    if partial is not None:
        cfg = cfg.model_copy(
            update={"policy": cfg.policy.model_copy(update={"partial_liquidation": partial})}
        )
    params, static = build.build(cfg)
    static = forms.specialise(static, [cfg])
    f = float(cfg.policy.partial_liquidation)
    book = params.book
    q0, b0 = (np.asarray(x) for x in cap_leverage(book, params.policy))
    side, mmr, maint = (np.asarray(x) for x in (book.side, book.mmr, book.maint_amount))
    price = np.asarray(params.market.price0)
    advance = jax.jit(_advance, static_argnames=("static", "n_steps"))
    carry = _begin(params, static, n_paths)
    counts = []
    for t0 in range(0, steps, every):
        carry = advance(carry, params, 3, 0, n_paths, t0, static=static, n_steps=every)
        q, b = (np.asarray(x) for x in (carry.states.quantity, carry.states.bankrupt))
        counts.append(
            [
                max(
                    segments(q[p, a], b[p, a], q0[a], b0[a], side[a], mmr[a], f, float(price[a]))
                    for a in range(static.n_assets)
                )
                for p in range(n_paths)
            ]
        )
    c = np.asarray(counts)
    groups = {(a, *k) for a in range(static.n_assets) for k in zip(side[a], mmr[a])}
    return {
        "workload": workload,
        "form": forms.form(static),
        "groups": len(groups),
        "cohorts": int(static.n_cohorts),
        "paths": n_paths,
        "steps": steps,
        "every": every,
        "partial_fraction": f,
        "reorder_band": spread(side, mmr, maint, q0, price, f),
        "segments_max": int(c.max()),
        "segments_quantiles": {str(q): float(np.quantile(c, q)) for q in (0.5, 0.9, 0.99)},
        "share_over_8": float(np.mean(c > 8)),
        "share_over_32": float(np.mean(c > 32)),
        "paths_ever_over_8": float(np.mean(np.any(c > 8, 0))),
        "paths_ever_over_32": float(np.mean(np.any(c > 32, 0))),
        "max_by_step": c.max(1).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="W3", help="whose book and market (default W3)")
    ap.add_argument("--partial", type=float, help="policy.partial_liquidation (default: the workload's)")
    ap.add_argument("--paths", type=int, default=64)
    ap.add_argument("--steps", type=int, default=720)
    ap.add_argument("--every", type=int, default=24)
    ap.add_argument("--save", action="store_true", help="write to benchmarks/results/")
    args = ap.parse_args()
    record = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **measure(args.workload, args.paths, args.steps, args.every, args.partial),
    }
    name = f"partial_segments_{args.workload.lower()}"
    out = results_dir(None, args.save, name) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("machine", "max_by_step")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
