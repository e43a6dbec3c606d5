"""Standalone stop orders on the ladder against the dense general cascade, on the same book.

    python benchmarks/stop_orders.py [--entry-points 64] [--stops 200] [--save]

The 2-asset test book (tests/conftest.py SMALL, its shock included) at `--entry-points` entries
per leverage and size (64: 1,024 cohorts per asset), with `--stops` stop orders per side and
asset (`book.stops`: trigger prices uniform within 20% of the starting price, 1-50 M USD each;
seed 0), and the same book without them on the ladder. Each form runs 256 paths x 48 steps
through `engine.sim.rollout.sharded_rollout` on every local device, compiled first, then timed
as the best of two calls, alternating the forms twice. Writes `stop_orders.json` to a new run
directory (`runs/<time>_bench_stop_orders/`), or with `--save` to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from pathlib import Path

import numpy as np
from run import RESULTS, machine_info, results_dir

PATHS, STEPS = 256, 48
PRICES = {"BTC": 100_000.0, "SOL": 200.0}


def config(entry_points: int, stops: int, kernel: str):
    """The test book with `stops` stop orders per side and asset, run on `kernel`."""
    from engine.config.schema import Config
    from tests.conftest import small_dict

    d = small_dict(run={"n_paths": PATHS, "seed": 1, "steps": STEPS, "tipping_paths": 0, "kernel": kernel})
    rng = np.random.default_rng(0)
    orders = []
    for asset, price in PRICES.items():
        for side, lo, hi in (("long", 0.80, 0.995), ("short", 1.005, 1.2)):
            for x in rng.uniform(lo, hi, stops):
                usd = float(rng.uniform(1e6, 5e7))
                orders.append(
                    {"asset": asset, "side": side, "price": round(price * x, 2), "notional_usd": usd}
                )
    d["book"] = {**d["book"], "entry_points": entry_points, "stops": orders}
    return Config.model_validate(d)


def time_form(entry_points: int, stops: int, kernel: str) -> dict:
    """us per path-step of one form (best of two calls after compiling)."""
    import jax

    from engine.config import build, forms
    from engine.sim import devices
    from engine.sim.rollout import sharded_rollout

    cfg = config(entry_points, stops, kernel)
    params, static = build.build(cfg)
    static = forms.specialise(static, [cfg])
    mesh = devices.path_mesh()

    def call():
        jax.block_until_ready(sharded_rollout(params, 1, 0, PATHS, static, PATHS, mesh)[0])

    call()
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return {
        "form": forms.form(static),
        "stops_per_side": stops,
        "cohorts_per_asset": static.n_cohorts,
        "us_per_path_step": 1e6 * best / (PATHS * STEPS),
        "path_steps_per_s": PATHS * STEPS / best,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entry-points", type=int, default=64)
    ap.add_argument("--stops", type=int, default=200)
    ap.add_argument("--save", action="store_true", help=f"write to {RESULTS}")
    a = ap.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    doc = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/stop_orders.py" + (" --save" if a.save else ""),
        "machine": machine_info(),
        "timings": [],
    }
    for _ in range(2):  # alternating, so a change of load falls on every form
        for stops, kernel in ((a.stops, "ladder"), (a.stops, "dense"), (0, "ladder")):
            row = time_form(a.entry_points, stops, kernel)
            print(json.dumps(row), flush=True)
            doc["timings"].append(row)
    out = results_dir(None, a.save, "stop_orders")
    out.mkdir(parents=True, exist_ok=True)
    (out / "stop_orders.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'stop_orders.json'}")


if __name__ == "__main__":
    main()
