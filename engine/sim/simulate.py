"""Run a set of parameter points over many paths and reduce them to loss distributions.

`simulate(config, points)` is the public entry: every point is a complete `Config` of the
same shape (a policy or scenario variant of `config`); all points see the same paths
(common random numbers), point `baseline` is the reference of the paired differences.

Paths are processed in chunks of whole `ATOM`s chosen from `run.memory_budget_mb`; the last
chunk is padded so that a single compiled kernel serves every chunk and every point. The loop
is chunk-outer, point-inner so that paired differences are formed chunk by chunk.

Each chunk is split over the devices of `engine.devices.path_mesh()` (host CPU devices, GPUs,
or every device of every process under `engine.distributed`); the next chunk is dispatched
before the host reduces the current one, so devices and host overlap. Under several processes
every process runs the same loop, the chunk's per-path outputs are gathered to every process
and reduced there in the same atom order, so the statistics equal a single-process run's.
Compiled kernels are kept in the persistent cache of `engine.cache`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import jax
import numpy as np
import xarray as xr
from jax.experimental import multihost_utils

from engine.config import build
from engine.config.errors import SimulationError, validated
from engine.config.schema import Config
from engine.model import params as P
from engine.model.outputs import DIAGNOSTICS, OUTPUTS
from engine.sim import cache, devices
from engine.sim.reduce import ATOM, BAND_QUANTILES, MIN_ES_TAIL_PATHS, QUANTILES, PointAccumulator
from engine.sim.rollout import EXTRACT_BLOCK, sharded_rollout
from engine.sim.tipping import NUDGE_ULPS, TIPPING_RTOL, TippingProbe

# Configs carry no calendar date, so every scenario starts at this documented reference time
# (CF needs "minutes since <time>"); `engine.cube.read` keeps the values as minutes.
SCENARIO_START = "1970-01-01 00:00:00"
TIME_ATTRS = {
    "standard_name": "time",
    "axis": "T",
    "units": f"minutes since {SCENARIO_START}",
    "calendar": "standard",
    "long_name": f"time since the scenario start, which is set at {SCENARIO_START} UTC",
}


@dataclass(frozen=True)
class Progress:
    """What `simulate` reports after each chunk of each point."""

    paths_done: int  # path-points finished
    paths_total: int
    elapsed_s: float


def bytes_per_path(static: P.Static, itemsize: int) -> int:
    """Estimated device memory of one path in a chunk: cohort state and the cascade's
    temporaries (about 16 arrays of `[assets, cohorts]`), the mark ring buffer, outputs."""
    cohort = static.n_assets * static.n_cohorts
    return itemsize * (16 * cohort + static.n_assets * static.max_window + 256)


# On CPUs a device's batch larger than this is slower per path, not faster: the cascade's
# early exit and the ADL branch run while *any* path of the batch needs them, and the cohort
# arrays leave the cache; a much smaller one pays XLA's fixed cost per operation on too few
# numbers. A device holds CPU_COHORTS_PER_DEVICE path-cohorts, but between
# CPU_MIN_PATHS_PER_DEVICE and CPU_PATHS_PER_DEVICE paths. Measured with the chunk size set
# by hand (2 host devices, 16,384 or 8,192 paths x 288 steps; path-steps/s by paths per
# device): W1 book (256 cohorts) 256 → 1.54 M, 512 → 1.64 M, 1,024 → 1.40 M; W1 book with 1,024
# cohorts 128 → 0.44 M, 256 → 0.43 M, 512 → 0.31 M; W2 (8,192 cohorts per path, 1,024 paths,
# first point) 32 → 15.7 k, 64 → 22.6 k, 128 → 23.4 k, 256 → 19.3 k.
CPU_PATHS_PER_DEVICE = 512
CPU_MIN_PATHS_PER_DEVICE = 128
CPU_COHORTS_PER_DEVICE = 2**18


def cpu_paths_per_device(static: P.Static) -> int:
    """Most paths one host CPU device should hold in a chunk."""
    by_cohorts = CPU_COHORTS_PER_DEVICE // (static.n_assets * static.n_cohorts)
    return min(CPU_PATHS_PER_DEVICE, max(CPU_MIN_PATHS_PER_DEVICE, by_cohorts))


def chunk_size(cfg: Config, static: P.Static, n_devices: int = 1, per_device_budget: bool = False) -> int:
    """Paths per compiled call: `run.chunk_size`, or what fits the memory budget.

    A chunk is whole atoms (a run of fewer paths than an atom: whole `EXTRACT_BLOCK`s per
    device) and splits evenly over `n_devices`. The budget is for the whole
    chunk (host devices share one memory) or, with `per_device_budget` (accelerators), for
    each device's share; on host devices (no `per_device_budget`) a chunk holds at most
    `cpu_paths_per_device` paths per device (but at least one atom).
    """
    unit = math.lcm(ATOM, n_devices)
    if cfg.run.chunk_size:
        size = cfg.run.chunk_size
    else:
        itemsize = 8 if cfg.run.dtype == "float64" else 4
        size = int(cfg.run.memory_budget_mb * 2**20 // bytes_per_path(static, itemsize))
        if per_device_budget:
            size *= n_devices
        else:
            size = min(size, cpu_paths_per_device(static) * n_devices)
    size = max(unit, size // unit * unit)
    n_paths = cfg.run.n_paths
    if n_paths < unit:
        # a single chunk smaller than an atom (the reductions pad it to one): only whole
        # extraction blocks per device, so a run of 100 paths computes 128, not 256
        unit = EXTRACT_BLOCK * n_devices
    return min(size, math.ceil(n_paths / unit) * unit)


@dataclass(frozen=True)
class Plan:
    """How `simulate` splits each point's paths into compiled calls."""

    n_paths: int  # per point
    chunk: int  # paths per compiled call (the last one padded to it)
    chunks: int  # calls per point
    chunk_bytes: int  # estimated device memory of one call's paths (`bytes_per_path`)

    def describe(self) -> str:
        """One line for people: paths, chunks, memory per chunk."""
        return (
            f"{self.n_paths:,} paths per point in {self.chunks:,} chunk(s) of {self.chunk:,} paths; "
            f"about {self.chunk_bytes / 2**20:,.0f} MiB of device memory per chunk"
        )


def plan(config: Config | dict) -> Plan:
    """The chunks `simulate` will run `config` in, on the devices of `devices.path_mesh()`."""
    cfg = validated(config)
    static = build.static_of(cfg)
    mesh = devices.path_mesh()
    accelerator = mesh.devices.flat[0].platform != "cpu"
    size = chunk_size(cfg, static, mesh.size, per_device_budget=accelerator)
    itemsize = 8 if cfg.run.dtype == "float64" else 4
    n = cfg.run.n_paths
    return Plan(n, size, math.ceil(n / size), size * bytes_per_path(static, itemsize))


def _ahead(tasks: Iterable, launch: Callable) -> Iterator[tuple]:
    """`(task, launch(task))` for each task, the next one launched before this one is yielded,
    so the devices compute it while the host reduces this one."""
    tasks = iter(tasks)
    task = next(tasks, None)
    pending = None if task is None else launch(task)
    while task is not None:
        current, following = pending, next(tasks, None)
        if following is not None:
            pending = launch(following)
        yield task, current
        task = following


def _to_host(tree):
    """A (possibly multi-process) global array tree as NumPy on this host."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def _shapes_match(a: Config, b: Config) -> bool:
    return build.static_of(a) == build.static_of(b) and a.run.dtype == b.run.dtype


def simulate(
    config: Config | dict,
    points: Sequence[Config | dict] | None = None,
    *,
    baseline: int = 0,
    progress: Callable[[Progress], None] | None = None,
) -> xr.Dataset:
    """Simulate `config.run.n_paths` paths under each point and return their statistics.

    config: the base configuration (a `Config` or a dict of the same fields). points: the
    variants to run, each a complete configuration of the same shape; default `[config]`.
    Run size and seed come from `config.run`.

    Returns a Dataset over `point` (and `asset`, `side`, `quantile`, `band_quantile`, `time`):
    for each output of `engine.outputs.OUTPUTS` its quantiles, `_mean`, `_mc_se`, paired
    `_diff_mean`/`_diff_se` against point `baseline`, `p_<name>_positive`, `es99_<name>`
    for losses, plus `p_bad_debt` and fan-chart bands `mark_price_band` and
    `cum_liquidations_band` `[point, asset, band_quantile, time]` (USD), and unless
    `run.tipping_paths` is 0 `tipping_share` and `tipping_sampled` `[point]` (`engine.tipping`).
    `time` is in minutes since `SCENARIO_START` (CF units), the end of each fan-chart interval.
    """
    cfg = validated(config)
    pts = [validated(p) for p in (points if points is not None else [cfg])]
    if not pts:
        raise SimulationError("no points to simulate")
    if not 0 <= baseline < len(pts):
        raise SimulationError(f"baseline must index a point (0..{len(pts) - 1}), got {baseline}")
    for i, p in enumerate(pts):
        if not _shapes_match(cfg, p):
            raise SimulationError(
                f"point {i} changes a shape-deciding setting (assets, cohorts, steps, rounds, "
                "max_window, fan_points, dtype): run it separately"
            )
    if cfg.run.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    cache.enable()

    built = [build.build(p) for p in pts]
    # each point's kernel forms depend on that point alone, so its numbers do not depend on
    # which other points share the call (a sweep's parts); most runs compile one kernel
    statics = [build.specialise(b[1], [p]) for b, p in zip(built, pts)]
    static = built[0][1]
    mesh = devices.path_mesh()
    size = plan(cfg).chunk
    n_paths, seed = cfg.run.n_paths, cfg.run.seed
    accs = [PointAccumulator(static) for _ in pts]
    order = [baseline] + [i for i in range(len(pts)) if i != baseline]
    # a generator: a run of 10**10 paths has millions of chunks
    tasks = ((start, min(size, n_paths - start), i) for start in range(0, n_paths, size) for i in order)

    def launch(task, nudge=0.0, chunk=size):
        start, valid, i = task
        return sharded_rollout(
            built[i][0], seed, start, valid, static=statics[i], n_paths=chunk, mesh=mesh, nudge=nudge
        )

    t0, done = time.perf_counter(), 0
    base_out = None
    probe = TippingProbe(min(cfg.run.tipping_paths, n_paths), len(pts))
    for (start, valid, i), current in _ahead(tasks, launch):
        out, fan = _to_host(current)
        probe.keep(i, start, out)
        if i == baseline:
            base_out = out
        accs[i].add(out, fan, valid, base_out)
        done += valid
        if progress:
            progress(Progress(done, n_paths * len(pts), time.perf_counter() - t0))
    bad = [i for i, a in enumerate(accs) if a.nonfinite]
    if bad:
        raise SimulationError(
            f"non-finite values (NaN or infinity) on some paths at point(s) {bad}: the parameters "
            "drive prices or balances out of range; check volatility, impact and leverage inputs"
        )
    chunk = probe.chunk(size, EXTRACT_BLOCK * mesh.size)
    for start in probe.starts(chunk):  # after the run, so that its chunks do not wait
        for i in order:
            nudged, _ = _to_host(launch((start, min(chunk, n_paths - start), i), NUDGE_ULPS, chunk))
            probe.compare(i, start, nudged)
    price0 = [np.asarray(b[0].market.price0, float) for b in built]
    results = [a.result(p0) | probe.result(i) for i, (a, p0) in enumerate(zip(accs, price0))]
    return to_dataset(cfg, results, static)


def _flags(meanings: str, long_name: str, comment: str) -> dict:
    """CF attributes of an int8 status variable whose values are 0, 1, ... in `meanings`' order."""
    values = np.arange(len(meanings.split()), dtype=np.int8)
    return {
        "units": "1",
        "long_name": long_name,
        "flag_values": values,
        "flag_meanings": meanings,
        "comment": comment,
    }


FEW_PATHS = "estimated too_few_paths"
FEW_PATHS_RULE = (
    "a q-quantile needs n_paths * min(q, 1 - q) >= 1 paths beyond it, ES99 needs n_paths * 0.01 >= "
    f"{MIN_ES_TAIL_PATHS} tail paths; a value flagged too_few_paths describes the paths run, not the distribution"
)
CLIPPED = "in_range clipped"
CLIPPED_RULE = (
    "clipped: the band reads an end bin of the fan-chart histogram (the value may lie beyond it) and is NaN"
)


def _status_variables(results: list[dict]) -> dict:
    """Whether each quantile, ES99 and fan-chart band value is an estimate (int8 CF flags)."""
    stack = lambda key: np.stack([r[key] for r in results])
    bands = ("point", "time", "asset", "band_quantile")
    return {
        "quantile_status": (
            ("point", "quantile"),
            stack("quantile_status"),
            _flags(FEW_PATHS, "estimability of the quantiles", FEW_PATHS_RULE),
        ),
        "band_quantile_status": (
            ("point", "band_quantile"),
            stack("band_quantile_status"),
            _flags(FEW_PATHS, "estimability of the fan-chart band quantiles", FEW_PATHS_RULE),
        ),
        "es99_status": (
            ("point",),
            stack("es99_status"),
            _flags(FEW_PATHS, "estimability of the expected shortfalls at 99%", FEW_PATHS_RULE),
        ),
        "mark_price_band_status": (
            bands,
            stack("mark_price_band_status"),
            _flags(CLIPPED, "status of the mark price bands", CLIPPED_RULE),
        ),
        "cum_liquidations_band_status": (
            bands,
            stack("cum_liquidations_band_status"),
            _flags(CLIPPED, "status of the cumulative liquidation bands", CLIPPED_RULE),
        ),
    }


def to_dataset(cfg: Config, results: list[dict], static: P.Static) -> xr.Dataset:
    """Stack per-point results into a Dataset with units and long names."""
    assets = cfg.asset_names
    data = {}
    for o in OUTPUTS:
        d = o.dims
        attrs = {"units": o.units, "long_name": o.long_name}
        stack = lambda key: np.stack([r[key] for r in results])
        data[o.name] = (
            ("point", "quantile") + d,
            stack(o.name),
            {**attrs, "long_name": f"quantiles of {o.long_name}"},
        )
        data[f"{o.name}_mean"] = (
            ("point",) + d,
            stack(f"{o.name}_mean"),
            {**attrs, "long_name": f"mean of {o.long_name}"},
        )
        data[f"{o.name}_mc_se"] = (
            ("point",) + d,
            stack(f"{o.name}_mc_se"),
            {**attrs, "long_name": f"Monte Carlo standard error of the mean of {o.long_name}"},
        )
        data[f"{o.name}_diff_mean"] = (
            ("point",) + d,
            stack(f"{o.name}_diff_mean"),
            {**attrs, "long_name": f"mean paired difference to the baseline point of {o.long_name}"},
        )
        data[f"{o.name}_diff_se"] = (
            ("point",) + d,
            stack(f"{o.name}_diff_se"),
            {**attrs, "long_name": f"standard error of the paired difference of {o.long_name}"},
        )
        data[f"p_{o.name}_positive"] = (
            ("point",) + d,
            stack(f"p_{o.name}_positive"),
            {"units": "1", "long_name": f"probability that {o.long_name} is positive"},
        )
        if o.loss:
            data[f"es99_{o.name}"] = (
                ("point",) + d,
                stack(f"es99_{o.name}"),
                {**attrs, "long_name": f"expected shortfall at 99% of {o.long_name}"},
            )
    data["p_bad_debt"] = (
        ("point",),
        np.stack([r["p_bad_debt_positive"] for r in results]),
        {"units": "1", "long_name": "probability of bad debt > 0"},
    )
    data["mark_price_band"] = (
        ("point", "time", "asset", "band_quantile"),
        np.stack([r["mark_price_band"] for r in results]),
        {"units": "USD", "long_name": "quantiles of the mark price over time"},
    )
    data["cum_liquidations_band"] = (
        ("point", "time", "asset", "band_quantile"),
        np.stack([r["cum_liquidations_band"] for r in results]),
        {"units": "USD", "long_name": "quantiles of cumulative liquidated notional over time"},
    )
    if "tipping_share" in results[0]:
        data["tipping_share"] = (
            ("point",),
            np.stack([r["tipping_share"] for r in results]),
            {
                "units": "1",
                "long_name": f"share of sampled paths whose liquidated total moves by more than {TIPPING_RTOL:.1%} when every random draw moves by {NUDGE_ULPS:.0f} ulps (engine.tipping)",
            },
        )
        data["tipping_sampled"] = (
            ("point",),
            np.stack([r["tipping_sampled"] for r in results]),
            {"units": "1", "long_name": "paths rerun for tipping_share"},
        )
    # path counts in float64: CF 1.8 has no 64-bit integers, and up to 1e10 paths overflow int32
    data["n_nonfinite"] = (
        ("point",),
        np.stack([r["n_nonfinite"] for r in results]).astype(np.float64),
        {"units": "1", "long_name": "paths with non-finite values"},
    )
    for name, long_name in DIAGNOSTICS.items():
        data[name] = (
            ("point",),
            np.stack([r[name] for r in results]).astype(np.float64),
            {"units": "1", "long_name": long_name},
        )
    data.update(_status_variables(results))
    for o in OUTPUTS:
        data[o.name][2]["ancillary_variables"] = "quantile_status"
        if o.loss:
            data[f"es99_{o.name}"][2]["ancillary_variables"] = "es99_status"
    for band in ("mark_price_band", "cum_liquidations_band"):
        data[band][2]["ancillary_variables"] = f"{band}_status"
    steps_at = np.minimum((np.arange(static.fan_points) + 1) * static.fan_stride, static.steps)
    coords = {
        "point": np.arange(len(results), dtype=np.int32),
        "asset": assets,
        "side": ["long", "short"],
        "quantile": list(QUANTILES),
        "band_quantile": list(BAND_QUANTILES),
        "time": ("time", steps_at * cfg.run.dt_minutes, TIME_ATTRS),
    }
    # CF orders a variable's dimensions as (others..., T): time is the last one
    ds = xr.Dataset(data, coords=coords).transpose(..., "time")
    ds.attrs.update(
        {
            "n_paths": cfg.run.n_paths,
            "seed": cfg.run.seed,
            "steps": cfg.run.steps,
            "dt_minutes": cfg.run.dt_minutes,
        }
    )
    return ds
