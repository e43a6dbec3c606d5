"""liqstress benchmarks: workloads W1-W3 against their baselines, and scaling curves.

    python benchmarks/run.py                      # W1, W2, W3 at full size
    python benchmarks/run.py --quick              # small variants, about 2 minutes (tests use W1's)
    python benchmarks/run.py --workload W1 --paths 65536 --save --readme
    python benchmarks/run.py --scaling --max-paths 10000000 --max-devices 8
    python benchmarks/run.py --scaling --scaling-axes cohorts --name scaling_cohorts

Each measurement runs in a fresh worker process, so peak RSS, the device count and the
compile time belong to that measurement alone. A worker reports:

- compile_s: first call (one chunk) minus the steady time of one chunk; the persistent
  compilation cache is off unless `--cache` (so this is the real compile time);
- steady_s, path_steps_per_s: the whole run with the kernel compiled; a path-step is one path
  advanced one step under one policy point;
- peak_rss_bytes (and device peak bytes where the backend reports them, e.g. GPUs);
- step_cost: XLA's cost analysis of one step (flops and bytes accessed per path-step, one
  cascade round, no ADL), from which the README derives the bound on a GPU;
- rng: the time to draw just the workload's random numbers with the same generator, keys and
  sharding (one chunk timed, times the number of chunk-points) and `sim_over_rng`;
- numpy: `engine.sim.reference.simulate_paths` on a subset of paths (steps shortened where noted),
  its path-steps/s and `speedup` = liqstress path-steps/s over NumPy's.

Results go to `runs/<time>_bench_<name>/<name>.json` under the current directory (`--out DIR`
to choose), and to the tracked `benchmarks/results/<name>.json` only with `--save`; `--readme`
rewrites the table in benchmarks/README.md from every JSON file in benchmarks/results/. Figures
are measurements of this machine at the time; nothing is extrapolated here (see the README for
estimates, marked as such).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
WORKLOADS = {
    "W1": "w1_btc_day.toml",
    "W2": "w2_policy_grid.toml",
    "W3": "w3_long_horizon.toml",
    "W4": "w4_large_book.toml",
    "W5": "w5_accounts.toml",
}
# What runs when no --workload is named: W5 (accounts) only on request, its book takes a while.
DEFAULT_WORKLOADS = ("W1", "W2", "W3", "W4")
# NumPy baseline size (paths, steps; --quick: the quick steps): the reference is slow. W2's
# 8,192 and W4's 65,536 cohorts per path keep its arrays large with 16 and 4 paths (64 and 16
# took 9-46 s and 19-54 s of a --quick run).
NUMPY_SIZE = {"W1": (1024, 96), "W2": (16, 48), "W3": (20, 720), "W4": (4, 24), "W5": (4, 12)}
# Where workloads with a generated positions file (`[bench] book`) keep it between runs.
BOOKS = HERE / ".books"
SCALING_PATHS = (10**3, 10**4, 10**5, 10**6, 10**7)
SCALING_DEVICES = (1, 2, 4, 8)
# The steps axis of --scaling (1,024 W1 paths): memory must not grow with the horizon.
SCALING_STEPS = (48, 288, 2880, 28800)
# The cohorts axis of --scaling: W1 with this many entry prices per leverage and size, i.e.
# 64 x N cohorts (64 ... 16,384), on 8,192 paths x 288 steps, against the random-number bound,
# once per kernel form (`SCALING_KERNELS`, unless --kernel names one).
SCALING_ENTRY_POINTS = (1, 4, 16, 64, 256)
SCALING_KERNELS = ("dense", "ladder")
SCALING_COHORTS_PATHS = 8192
TABLE_START, TABLE_END = "<!-- results:start -->", "<!-- results:end -->"


# ----------------------------------------------------------------------------------------
# Workloads
# ----------------------------------------------------------------------------------------


def load_workload(
    name: str,
    quick: bool = False,
    paths: int | None = None,
    steps: int | None = None,
    points: int | None = None,
    entry_points: int | None = None,
    kernel: str | None = None,
):
    """(config, points, bench table) of workload `name`, with the quick or explicit sizes
    (`entry_points`: entry prices per leverage and size, which sets the number of cohorts;
    `kernel`: `run.kernel`, the kernel form)."""
    from engine.config.schema import Config

    data = tomllib.loads((HERE / WORKLOADS[name]).read_text())
    bench = data.pop("bench")
    if "book" in bench:
        data["book"]["positions"] = str(_generated_book(name, Config.model_validate(data), bench["book"]))
    if entry_points:
        data["book"]["entry_points"] = entry_points
    quick_spec = bench.get("quick", {}) if quick else {}
    run = data.setdefault("run", {})
    for key in ("n_paths", "steps", "kernel"):
        if key in quick_spec:
            run[key] = quick_spec[key]
    if paths:
        run["n_paths"] = paths
    if steps:
        run["steps"] = steps
    if kernel:
        run["kernel"] = kernel
    run["fan_points"] = min(run.get("fan_points", 96), run["steps"])
    cfg = Config.model_validate(data)
    grid = bench.get("grid")
    if quick and grid:
        grid = {k: quick_spec.get(k, v) for k, v in grid.items()}
    pts = [cfg]
    if grid:
        pts = []
        for cap in grid["leverage_cap"]:
            for thr in grid["threshold"]:
                br = cfg.policy.breaker.model_copy(update={"threshold": float(thr)})
                pol = cfg.policy.model_copy(update={"leverage_cap": float(cap), "breaker": br})
                pts.append(cfg.model_copy(update={"policy": pol}))
    if points:
        pts = pts[:points]
    return cfg, pts, bench


def _generated_book(name: str, cfg, spec: dict) -> Path:
    """The positions file of workload `name` (`[bench] book`: positions, accounts, cross_share,
    seed), written by `engine.config.synthetic` on first use and kept in `BOOKS`."""
    from engine.config import synthetic

    path = BOOKS / f"{name.lower()}_{spec['positions']}_{spec['accounts']}_{spec['seed']}.parquet"
    if not path.exists():
        BOOKS.mkdir(exist_ok=True)
        table = synthetic.make_positions(
            cfg,
            spec["positions"],
            seed=spec["seed"],
            cross_share=spec["cross_share"],
            accounts=spec["accounts"],
        )
        synthetic.write_positions(table, path)
    return path


# ----------------------------------------------------------------------------------------
# Worker: one measurement in this process
# ----------------------------------------------------------------------------------------


def machine_info() -> dict:
    import jax
    import psutil

    from engine.sim import cpu_devices, devices

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = devices.describe()
    return {
        "host": platform.node(),
        "cpu_model": model,
        "cpu_cores": os.cpu_count(),
        "cores_available": cpu_devices.available_cores(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "platform": dev["platform"],
        "device_kind": dev["device_kind"],
        "devices": dev["devices"],
        "loadavg_start": list(os.getloadavg()),
    }


def _rng_bound(cfg, params, static, size: int, n_tasks: int, repeats: int = 7) -> dict:
    """Seconds to draw the random numbers of `n_tasks` chunk-points: one chunk timed `repeats`
    times, the fastest (a bound; one slow repeat moved the mean by 30 % in short runs)."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    from engine.model.kernel import path_keys, step_draws
    from engine.sim import devices

    mesh = devices.path_mesh()
    per = size // mesh.size

    @partial(jax.jit, static_argnames=("static",))
    def draw_chunk(params, seed, start, static):
        def local(params, seed, start):
            keys = path_keys(seed, start + jax.lax.axis_index(devices.PATH_AXIS) * per, per)

            def body(acc, t):
                d = step_draws(keys, t, params, static)
                return acc + jnp.sum(d.z) + jnp.sum(d.chi2) + jnp.sum(d.u_jump) + jnp.sum(d.z_jump), None

            zero = jnp.zeros((), params.market.price0.dtype)
            acc, _ = jax.lax.scan(body, zero, jnp.arange(static.steps, dtype=jnp.int32))
            return jax.lax.psum(acc, devices.PATH_AXIS)

        return jax.shard_map(
            local, mesh=mesh, in_specs=(PartitionSpec(),) * 3, out_specs=PartitionSpec(), check_vma=False
        )(params, seed, start)

    draw_chunk(params, cfg.run.seed, 0, static=static).block_until_ready()
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        draw_chunk(params, cfg.run.seed, r * size, static=static).block_until_ready()
        times.append(time.perf_counter() - t0)
    per_chunk = min(times)
    return {
        "chunk_s": per_chunk,
        "chunks": n_tasks,
        "rng_s": per_chunk * n_tasks,
        "method": f"one chunk timed (fastest of {repeats}) x chunk-points",
    }


def _step_cost(params, static, n_paths: int) -> dict:
    """XLA's cost analysis of one step (stages 1-5 and the fund) of `n_paths` paths, per
    path-step: flops and bytes accessed as the compiler counts them, a loop's body once (so
    one cascade round), the ADL branch left out. The inputs of the GPU bound in the README."""
    import jax

    from engine.model.kernel import form, path_keys, step_draws
    from engine.sim.rollout import _begin

    states = _begin(params, static, n_paths).states
    keys = path_keys(0, 0, n_paths)
    kernel = form(static)

    # Prepared once, as the rollout does, and an argument of the step, not a constant of it:
    # XLA folds constants at compile time (the ladder's sort of W4's book took 26 s).
    prepared = kernel.prepare(params, static)

    def one_step(states, prepared, t):
        sched = prepared.schedule
        draws = step_draws(keys, t, prepared, static)
        return kernel.market_batch(states, draws, t, sched.shock[t], sched.flow[t], prepared, static)

    cost = jax.jit(one_step).lower(states, prepared, 0).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    per = lambda key: float(cost.get(key, 0.0)) / n_paths
    return {
        "flops_per_path_step": per("flops"),
        "bytes_per_path_step": per("bytes accessed"),
        "paths": n_paths,
        "method": "XLA cost analysis of one compiled step, one cascade round, no ADL",
    }


def _numpy_baseline(cfg, name: str, quick: bool) -> dict:
    try:
        from engine.sim import reference
    except ImportError:
        return {"available": False, "note": "engine/reference.py not present"}
    if not hasattr(reference, "simulate_paths"):
        return {"available": False, "note": "engine.sim.reference has no simulate_paths"}
    n, steps = NUMPY_SIZE[name]
    n = min(n, cfg.run.n_paths)
    if quick:
        steps = None
    run = cfg.run.model_copy(
        update={
            "n_paths": n,
            **({"steps": steps, "fan_points": min(cfg.run.fan_points, steps)} if steps else {}),
        }
    )
    small = cfg.model_copy(update={"run": run})
    t0 = time.perf_counter()
    reference.simulate_paths(small, n, cfg.run.seed)
    dt = time.perf_counter() - t0
    return {
        "available": True,
        "paths": n,
        "steps": small.run.steps,
        "wall_s": dt,
        "path_steps_per_s": n * small.run.steps / dt,
    }


def measure(
    name: str,
    quick: bool,
    paths: int | None,
    steps: int | None,
    points: int | None,
    numpy: bool,
    rng: bool,
    entry_points: int | None = None,
    kernel: str | None = None,
) -> dict:
    """One workload in this process: compile, steady state, memory, baselines."""
    import jax

    from engine.config import build, forms
    from engine.sim import devices
    from engine.sim.simulate import chunk_size, simulate

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg, pts, _ = load_workload(name, quick, paths, steps, points, entry_points, kernel)
    static = forms.specialise(build.static_of(cfg), pts)  # the kernel forms `simulate` will use
    mesh = devices.path_mesh()
    size = chunk_size(cfg, static, mesh.size, per_device_budget=mesh.devices.flat[0].platform != "cpu")
    # tipping_paths 0: the figures are the simulation's throughput; the tipping probe (a rerun of
    # a sample of paths, a diagnostic of each run) is measured on its own (benchmarks/README.md)
    run = {"chunk_size": size, "tipping_paths": 0}
    fix = lambda c, **u: c.model_copy(update={"run": c.run.model_copy(update={**run, **u})})
    cfg = fix(cfg)
    pts = [fix(p) for p in pts]
    n_chunks = -(-cfg.run.n_paths // size)
    n_tasks = n_chunks * len(pts)

    t0 = time.perf_counter()
    simulate(fix(cfg, n_paths=size))  # one chunk, one point: compiles the kernel
    first_s = time.perf_counter() - t0

    marks: list[float] = []
    t0 = time.perf_counter()
    simulate(cfg, pts, progress=lambda p: marks.append(p.elapsed_s))
    steady_s = time.perf_counter() - t0
    path_steps = cfg.run.n_paths * len(pts) * cfg.run.steps
    chunk_s = steady_s / n_tasks
    out = {
        "workload": name,
        "quick": quick,
        "paths": cfg.run.n_paths,
        "steps": cfg.run.steps,
        "assets": static.n_assets,
        "cohorts_per_asset": static.n_cohorts,
        "cascade_form": "ladder" if static.ladder else "whole" if static.whole_only else "general",
        "chi2_draw": f"loop-free (dof <= {static.dof_max})" if static.dof_max else "gamma sampler",
        "points": len(pts),
        "devices": mesh.size,
        "chunk_paths": size,
        "chunk_points": n_tasks,
        "path_steps": path_steps,
        "first_call_s": first_s,
        "compile_s": max(first_s - chunk_s, 0.0),
        "steady_s": steady_s,
        "wall_s": first_s + steady_s,
        "path_steps_per_s": path_steps / steady_s,
        "chunk_point_s": [round(b - a, 4) for a, b in zip([0.0] + marks[:-1], marks)],
        "rss_after_import_bytes": rss0,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_peak_bytes": None,
    }
    stats = [d.memory_stats() for d in mesh.devices.flat if d.process_index == jax.process_index()]
    if stats and all(s and "peak_bytes_in_use" in s for s in stats):
        out["device_peak_bytes"] = max(s["peak_bytes_in_use"] for s in stats)
    params = build.build(pts[0])[0]
    out["step_cost"] = _step_cost(params, static, size // mesh.size)
    if rng:
        out["rng"] = _rng_bound(cfg, params, static, size, n_tasks)
        out["rng"]["sim_over_rng"] = steady_s / out["rng"]["rng_s"]
    if numpy:
        out["numpy"] = _numpy_baseline(cfg, name, quick)
        if out["numpy"].get("available"):
            out["numpy"]["speedup"] = out["path_steps_per_s"] / out["numpy"]["path_steps_per_s"]
    out["loadavg_end"] = list(os.getloadavg())
    return out


# ----------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------


def run_worker(args: list[str], devices: int | None, cache: bool) -> dict:
    """Run one measurement in a fresh process and return its record."""
    env = dict(os.environ)
    if devices:
        env["LIQSTRESS_CPU_DEVICES"] = str(devices)
        env.pop("LIQSTRESS_DEVICES", None)
    if not cache:
        env["LIQSTRESS_CACHE_DIR"] = "off"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "record.json"
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(out), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr[-4000:], "args": args}
        return json.loads(out.read_text())


def _worker_args(
    w: str,
    a: argparse.Namespace,
    paths=None,
    steps=None,
    numpy=None,
    rng=None,
    entry_points=None,
    kernel=None,
) -> list[str]:
    args = ["--workload", w]
    if a.quick:
        args.append("--quick")
    for flag, v in (
        ("--paths", paths or a.paths),
        ("--steps", steps or a.steps),
        ("--points", a.points),
        ("--entry-points", entry_points or a.entry_points),
        ("--kernel", kernel or a.kernel),
    ):
        if v:
            args += [flag, str(v)]
    if not (a.numpy if numpy is None else numpy):
        args.append("--no-numpy")
    if not (a.rng if rng is None else rng):
        args.append("--no-rng")
    return args


def _fmt(x, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.3g}{unit}" if abs(x) < 1000 else f"{x:,.0f}{unit}"
    return f"{x:,}{unit}"


def render_table(records: list[dict]) -> str:
    """Markdown table of workload records (errors and scaling rows included)."""
    head = (
        "| file | workload | paths × steps × points | cohorts per asset | form | devices | path-steps/s | wall s | compile s | "
        "steady s | peak RSS MiB | RNG-only s | sim / RNG | NumPy path-steps/s | speed-up vs NumPy |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        if "error" in r:
            rows.append(f"| {r.get('_file', '')} | {' '.join(r['args'])} | error | | | | | | | | | | | | |")
            continue
        rng, npb = r.get("rng") or {}, r.get("numpy") or {}
        rows.append(
            f"| {r.get('_file', '')} | {r['workload']}{' quick' if r['quick'] else ''} | "
            f"{r['paths']:,} × {r['steps']:,} × {r['points']} | {_fmt(r.get('cohorts_per_asset'))} | "
            f"{r.get('cascade_form', '–')} | "
            f"{r['devices']} | {_fmt(r['path_steps_per_s'])} | "
            f"{_fmt(r['wall_s'])} | {_fmt(r['compile_s'])} | {_fmt(r['steady_s'])} | "
            f"{_fmt(r['peak_rss_bytes'] / 2**20)} | {_fmt(rng.get('rng_s'))} | {_fmt(rng.get('sim_over_rng'))} | "
            f"{_fmt(npb.get('path_steps_per_s'))} | {_fmt(npb.get('speedup'))} |"
        )
    return "\n".join(rows)


def update_readme() -> None:
    """Rewrite the results section of benchmarks/README.md from benchmarks/results/*.json."""
    blocks = []
    for f in sorted(RESULTS.glob("*.json")):
        doc = json.loads(f.read_text())
        if "records" not in doc:  # another script's measurements (e.g. stop_orders.py)
            continue
        m = doc["machine"]
        recs = [{**r, "_file": f.stem} for r in doc["records"]]
        blocks.append(
            f"**{f.name}** ({doc['created']}): {m['cpu_model']}, {m['cores_available']} cores, "
            f"{m['memory_gib']} GiB, {m['platform']} × {m['devices']} device(s) ({m['device_kind']}), "
            f"JAX {m['jax']}; load average at start {m['loadavg_start'][0]:.2f}.\n\n" + render_table(recs)
        )
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{TABLE_START}\n{TABLE_END}\n"
    pre, rest = text.split(TABLE_START, 1)
    post = rest.split(TABLE_END, 1)[1]
    README.write_text(pre + TABLE_START + "\n" + "\n\n".join(blocks) + "\n" + TABLE_END + post)


def results_dir(out: Path | None, save: bool, name: str) -> Path:
    """Where the results JSON goes: `out` if given, the tracked results folder with `--save`,
    else a new run directory of the current directory's `runs/` (so that benchmarking never
    dirties the checkout unless asked)."""
    if out is not None:
        return out
    if save:
        return RESULTS
    from engine.runs.rundir import default_run_dir

    return default_run_dir(Path("runs"), f"bench_{name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="liqstress benchmarks (see benchmarks/README.md)")
    p.add_argument(
        "--quick", action="store_true", help="small variants of the workloads (W1-W4: about 2 minutes in all)"
    )
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="repeatable; default W1-W4")
    p.add_argument("--paths", type=int, help="override the number of paths")
    p.add_argument("--steps", type=int, help="override the number of steps")
    p.add_argument("--points", type=int, help="only the first N policy points")
    p.add_argument("--entry-points", type=int, help="entry prices per leverage and size (sets the cohorts)")
    p.add_argument("--kernel", choices=["auto", "dense", "ladder"], help="the kernel form (run.kernel)")
    p.add_argument("--devices", type=int, help="host CPU devices per worker (default: one per core)")
    p.add_argument("--no-numpy", dest="numpy", action="store_false", help="skip the NumPy baseline")
    p.add_argument("--no-rng", dest="rng", action="store_false", help="skip the random-number bound")
    p.add_argument("--scaling", action="store_true", help="scaling curves (paths, devices, steps, cohorts)")
    p.add_argument("--max-paths", type=int, default=10**4, help="largest path count of --scaling")
    p.add_argument("--max-devices", type=int, default=8, help="largest device count of --scaling")
    p.add_argument(
        "--scaling-axes",
        default="paths,devices,steps",
        help="comma-separated axes of --scaling (paths, devices, steps, cohorts; default all but cohorts)",
    )
    p.add_argument(
        "--scaling-steps",
        type=int,
        default=48,
        help="steps of the paths axis of --scaling (W1 has 288; fewer keep 10^7 paths short)",
    )
    p.add_argument("--cache", action="store_true", help="keep the persistent compilation cache on")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--out", type=Path, help="directory of the results JSON (default: a new runs/<time>_bench_<name>/)"
    )
    where.add_argument(
        "--save", action="store_true", help=f"write to the tracked {RESULTS.relative_to(HERE.parent)}/"
    )
    p.add_argument("--name", help="results file stem (default: quick / full / scaling)")
    p.add_argument(
        "--readme",
        action="store_true",
        help="rewrite the table in benchmarks/README.md from benchmarks/results/ (--save adds this run)",
    )
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        sys.path.insert(0, str(HERE.parent))
        rec = measure(
            (a.workload or ["W1"])[0],
            a.quick,
            a.paths,
            a.steps,
            a.points,
            a.numpy,
            a.rng,
            a.entry_points,
            a.kernel,
        )
        a.worker.write_text(json.dumps(rec))
        return 0

    records = []
    if a.scaling:
        axes = set(a.scaling_axes.split(","))
        jobs = []
        if "paths" in axes:
            jobs += [
                ("paths", n, a.devices, _worker_args("W1", a, paths=n, steps=a.scaling_steps, numpy=False))
                for n in SCALING_PATHS
                if n <= a.max_paths
            ]
        if "devices" in axes:
            n_dev = min(a.max_paths, 16384)
            jobs += [
                ("devices", d, d, _worker_args("W1", a, paths=n_dev, numpy=False, rng=False))
                for d in SCALING_DEVICES
                if d <= a.max_devices
            ]
        if "steps" in axes:
            jobs += [
                ("steps", s, a.devices, _worker_args("W1", a, paths=1024, steps=s, numpy=False, rng=False))
                for s in SCALING_STEPS
            ]
        if "cohorts" in axes:
            jobs += [
                (
                    "cohorts",
                    64 * e,
                    a.devices,
                    _worker_args("W1", a, paths=SCALING_COHORTS_PATHS, numpy=False, entry_points=e, kernel=k),
                )
                for k in ([a.kernel] if a.kernel else SCALING_KERNELS)
                for e in SCALING_ENTRY_POINTS
            ]
    else:
        jobs = [("workload", w, a.devices, _worker_args(w, a)) for w in (a.workload or DEFAULT_WORKLOADS)]
    for axis, value, dev, args in jobs:
        print(f"[bench] {axis}={value} {' '.join(args)}", flush=True)
        rec = run_worker(args, dev, a.cache)
        rec["axis"], rec["axis_value"] = axis, value
        records.append(rec)
        if "error" in rec:
            print(rec["error"], file=sys.stderr)
        else:
            print(
                f"        {rec['path_steps_per_s']:,.0f} path-steps/s, compile {rec['compile_s']:.1f} s, "
                f"steady {rec['steady_s']:.1f} s, peak RSS {rec['peak_rss_bytes'] / 2**20:,.0f} MiB",
                flush=True,
            )

    sys.path.insert(0, str(HERE.parent))
    import engine  # noqa: F401  (configures host devices like the workers)

    doc = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(),
        "records": records,
    }
    name = a.name or ("scaling" if a.scaling else "quick" if a.quick else "full")
    out = results_dir(a.out, a.save, name)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    print(render_table([{**r, "_file": name} for r in records if "axis" in r]))
    print(f"[bench] wrote {path}")
    if a.readme:
        update_readme()
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
