"""Run a set of parameter points over many paths and reduce them to loss distributions.

`simulate(config, points)` is the public entry: every point is a complete `Config` of the
same shape (a policy or scenario variant of `config`); all points see the same paths
(common random numbers), point `baseline` is the reference of the paired differences.

Paths are processed in chunks of whole `ATOM`s chosen from `run.memory_budget_mb`; the last
chunk is padded so that a single compiled kernel serves every chunk and every point. The loop
is chunk-outer, point-inner so that paired differences are formed chunk by chunk.

Each chunk is split over the devices of `engine.sim.devices.path_mesh()` (host CPU devices, GPUs,
or every device of every process under `engine.sim.distributed`) and runs as compiled calls of
about `engine.sim.cost.CALL_TARGET_S` of work each (paths per chunk and steps per call from the
cost model), made one at a time (`engine.sim.rollout.Rollout`): progress is reported, and
Ctrl-C or SIGTERM honoured, after every call, within seconds even on a book whose chunk takes
hours. The next chunk's first call is dispatched before the host reduces the current one, so
devices and host overlap. Under several processes
every process runs the same loop, the chunk's per-path outputs are gathered to every process
and reduced there in the same atom order, so the statistics equal a single-process run's.
Compiled kernels are kept in the persistent cache of `engine.sim.cache`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import jax
import numpy as np
import xarray as xr
from jax.experimental import multihost_utils

from engine.config import build, forms
from engine.config.errors import SimulationError, validated
from engine.config.schema import Config
from engine.model import ladder
from engine.model import params as P
from engine.sim import cache, code_space, cost, devices, fallback
from engine.sim.dataset import to_dataset
from engine.sim.reduce import ATOM, PointAccumulator
from engine.sim.rollout import EXTRACT_BLOCK, Rollout, dense
from engine.sim.tipping import NUDGE_ULPS, TippingProbe


@dataclass(frozen=True)
class ChunkProgress:
    """What `simulate` reports after each compiled call (a few per chunk of each point).

    paths_done: path-points (paths x points) done, a chunk in progress counted by the share of
    its steps done (so not always a whole number)."""

    paths_done: float
    paths_total: int
    elapsed_s: float


def bytes_per_path(static: P.Static, itemsize: int) -> int:
    """Estimated device memory of one path in a chunk, by kernel form.

    Dense: the cohort state and the cascade's temporaries (about 16 arrays of `[assets,
    cohorts]`), the mark ring buffer, outputs. Ladder (`Static.ladder`): no per-cohort state;
    per rung group (`engine.model.ladder.n_groups` per asset) the level and the cascade's windows and search
    temporaries (about 8 values per window position and 64 more), the ring buffer, outputs.
    The ladder's tables (`[assets, cohorts]`, shared by all paths) are not per path. Cross
    accounts (dense only): the leg units and the rounds' temporaries, about 16 arrays of
    `[accounts, assets]`."""
    fixed = static.n_assets * static.max_window + 256 + 16 * static.n_accounts * static.n_assets
    if static.ladder:
        groups = static.n_assets * ladder.n_groups(static)
        return itemsize * (groups * (8 * ladder.WINDOW + 64) + fixed)
    return itemsize * (16 * static.n_assets * static.n_cohorts + fixed)


# On CPUs a device's batch larger than this is slower per path, not faster: the cascade's
# early exit and the ADL branch run while *any* path of the batch needs them, and the cohort
# arrays leave the cache; a much smaller one pays XLA's fixed cost per operation on too few
# numbers. A device holds CPU_COHORTS_PER_DEVICE path-cohorts, but between
# CPU_MIN_PATHS_PER_DEVICE and CPU_PATHS_PER_DEVICE paths. Measured with the chunk size set
# by hand (2 host devices, 16,384 or 8,192 paths x 288 steps; path-steps/s by paths per
# device): W1 book (256 cohorts) 256 → 1.54 M, 512 → 1.64 M, 1,024 → 1.40 M; W1 book with 1,024
# cohorts 128 → 0.44 M, 256 → 0.43 M, 512 → 0.31 M; W2 (8,192 cohorts per path, 1,024 paths,
# first point) 32 → 15.7 k, 64 → 22.6 k, 128 → 23.4 k, 256 → 19.3 k; the default scenario
# (4 assets x 180 cohorts, a crash whose cascade runs for many rounds; CPU seconds of
# simulating 10,000 paths, idle and loaded cores alike) 128 → 17 s, 256 → 23 s, 384 → 31 s.
CPU_PATHS_PER_DEVICE = 512
CPU_MIN_PATHS_PER_DEVICE = 128
CPU_COHORTS_PER_DEVICE = 2**17
# The ladder kernel's per-path state does not grow with the book and its cascade runs on the
# few paths that liquidate (`engine.model.ladder_kernel.market_batch`), which pays more the
# more paths a batch holds.
CPU_LADDER_PATHS_PER_DEVICE = 4096


def cpu_paths_per_device(static: P.Static) -> int:
    """Most paths one host CPU device should hold in a chunk."""
    if static.ladder:
        return CPU_LADDER_PATHS_PER_DEVICE
    by_cohorts = CPU_COHORTS_PER_DEVICE // (static.n_assets * (static.n_cohorts + static.n_accounts))
    return min(CPU_PATHS_PER_DEVICE, max(CPU_MIN_PATHS_PER_DEVICE, by_cohorts))


def chunk_size(cfg: Config, static: P.Static, n_devices: int = 1, per_device_budget: bool = False) -> int:
    """Paths per compiled call: `run.chunk_size`, or what fits the memory budget.

    A chunk is whole atoms (a run of fewer paths than an atom: whole `EXTRACT_BLOCK`s per
    device) and splits evenly over `n_devices`. The budget is for the whole
    chunk (host devices share one memory) or, with `per_device_budget` (accelerators), for
    each device's share; on host devices (no `per_device_budget`) a chunk holds at most
    `cpu_paths_per_device` paths per device. Nor more paths than one step of which takes
    `cost.CALL_TARGET_S` (`cost.call_paths`), but at least one atom. The chunks a run needs
    at that size are made as even as whole atoms allow (the last one is padded to the size).
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
        size = min(size, cost.call_paths(static, accelerator=per_device_budget))
    size = max(unit, size // unit * unit)
    n_paths = cfg.run.n_paths
    if n_paths < unit:
        # a single chunk smaller than an atom (the reductions pad it to one): only whole
        # extraction blocks per device, so a run of 100 paths computes 128, not 256
        unit = EXTRACT_BLOCK * n_devices
    # as many chunks as that size needs, evened out: 10,000 paths in chunks of at most 8,192
    # run as two of 5,120, not as 8,192 and a last one padded from 1,808 to 8,192
    chunks = math.ceil(n_paths / size)
    return min(size, math.ceil(n_paths / chunks / unit) * unit)


@dataclass(frozen=True)
class Plan:
    """How `simulate` splits each point's paths into compiled calls, and on which kernel."""

    n_paths: int  # per point
    chunk: int  # paths per chunk (the last one padded to it)
    chunks: int  # chunks per point
    chunk_bytes: int  # estimated device memory of one chunk's paths (`bytes_per_path`)
    call_steps: int  # steps per compiled call (`cost.call_steps`)
    steps: int  # steps per path
    kernel: str  # the kernel form, why, and what it costs (`cost.kernel_note`)

    def describe(self) -> str:
        """Two lines for people: paths, chunks, calls and memory per chunk; the kernel form."""
        mib = self.chunk_bytes / 2**20
        memory = "under 1 MiB" if mib < 1 else f"about {mib:,.0f} MiB"
        calls = -(-self.steps // self.call_steps)
        return (
            f"{self.n_paths:,} paths per point in {self.chunks:,} chunk(s) of {self.chunk:,} paths, "
            f"each in {calls:,} call(s) of {self.call_steps:,} step{'s' * (self.call_steps > 1)}; {memory} of device memory per chunk\n"
            f"{self.kernel}"
        )


def plan(config: Config | dict, points: Sequence[Config] | None = None) -> Plan:
    """The chunks and calls `simulate` will run `config` (and its `points`) in, on the devices of
    `devices.path_mesh()`, for the kernel form the points allow (`forms.specialise`), and each
    point's form with the reason (`Plan.kernel`)."""
    cfg = validated(config)
    pts = list(points) if points else [cfg]
    mesh = devices.path_mesh()
    accelerator = _accelerator(mesh)
    static, size = _chunk_of(cfg, pts, mesh)
    itemsize = 8 if cfg.run.dtype == "float64" else 4
    n = cfg.run.n_paths
    return Plan(
        n_paths=n,
        chunk=size,
        chunks=math.ceil(n / size),
        chunk_bytes=size * bytes_per_path(static, itemsize),
        call_steps=cost.call_steps(static, size, accelerator),
        steps=static.steps,
        kernel=cost.kernel_note([forms.point_static(p) for p in pts], pts),
    )


def _chunk_of(cfg: Config, pts: list[Config], mesh) -> tuple[P.Static, int]:
    """The static settings of `pts` together (`forms.specialise`) and the paths per chunk."""
    static = forms.specialise(build.static_of(cfg), pts)
    return static, chunk_size(cfg, static, mesh.size, per_device_budget=_accelerator(mesh))


def _accelerator(mesh) -> bool:
    return mesh.devices.flat[0].platform != "cpu"


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
    progress: Callable[[ChunkProgress], None] | None = None,
) -> xr.Dataset:
    """Simulate `config.run.n_paths` paths under each point and return their statistics.

    config: the base configuration (a `Config` or a dict of the same fields). points: the
    variants to run, each a complete configuration of the same shape; default `[config]`.
    Run size and seed come from `config.run`.

    Returns a Dataset over `point` (and `asset`, `side`, `quantile`, `band_quantile`, `time`):
    for each output of `engine.model.outputs.OUTPUTS` its quantiles, `_mean`, `_mc_se`, paired
    `_diff_mean`/`_diff_se` against point `baseline`, `p_<name>_positive`, `es99_<name>`
    for losses, plus `p_bad_debt` and fan-chart bands `mark_price_band` and
    `cum_liquidations_band` `[point, asset, band_quantile, time]` (USD), and unless
    `run.tipping_paths` is 0 `tipping_share` and `tipping_sampled` `[point]` (`engine.sim.tipping`).
    `time` is in minutes since `engine.sim.dataset.SCENARIO_START` (CF units), the end of each
    fan-chart interval.
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
    with precision(cfg.run.dtype):
        return _simulate_points(cfg, pts, baseline, progress)


def precision(dtype: str) -> contextlib.AbstractContextManager:
    """JAX's x64 mode for the calls made within it when `dtype` is "float64" (else no change).

    float64 is a setting of one run: turning on JAX's global switch instead would change the
    precision of everything the process runs afterwards. jit caches per mode, so a function
    compiled within one call is reused by the next."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _simulate_points(
    cfg: Config, pts: list[Config], baseline: int, progress: Callable[[ChunkProgress], None] | None
) -> xr.Dataset:
    """`simulate` of validated points (within the run's precision)."""
    cache.enable()
    code_space.release_if_crowded()

    built = [build.build(p) for p in pts]
    # each point's kernel forms depend on that point alone, so its numbers do not depend on
    # which other points share the call (a sweep's parts); most runs compile one kernel
    statics = [forms.point_static(p) for p in pts]
    static = built[0][1]
    mesh = devices.path_mesh()
    size = _chunk_of(cfg, pts, mesh)[1]  # the plan's chunks, without its words
    n_paths, seed = cfg.run.n_paths, cfg.run.seed
    accs = [PointAccumulator(static) for _ in pts]
    order = [baseline] + [i for i in range(len(pts)) if i != baseline]
    # a generator: a run of 10**10 paths has millions of chunks
    tasks = ((start, min(size, n_paths - start), i) for start in range(0, n_paths, size) for i in order)

    accelerator = _accelerator(mesh)
    t0, total, done = time.perf_counter(), n_paths * len(pts), 0

    def report(work: float) -> None:
        if progress:
            progress(ChunkProgress(work, total, time.perf_counter() - t0))

    # a rerun of one extraction block runs on one device, the others go on with the next chunk
    one = devices.path_mesh(mesh.devices.flat[:1])

    def roll(i, start, valid, static, n, nudge, offsets=None, count_from=None, on=mesh) -> Rollout:
        steps = cost.call_steps(static, n // on.size * mesh.size, accelerator)
        return Rollout(built[i][0], seed, start, valid, static, n, on, steps, nudge, offsets, count_from)

    def launch(task, nudge=0.0, chunk=size):
        start, valid, i = task
        return roll(i, start, valid, statics[i], chunk, nudge)

    def collect(task, current, tick=lambda _: report(total), nudge=0.0, chunk=size):
        """The chunk's (outputs, fan) on the host, the paths the ladder flagged rerun dense;
        tick(steps done) after each call."""
        start, valid, i = task

        def rerun(offsets, count_from, n):
            on = one if offsets.size == EXTRACT_BLOCK else mesh
            again = roll(i, start, n, dense(statics[i]), offsets.size, nudge, offsets, count_from, on)
            return _to_host(_calls(again, lambda _: tick(static.steps)))

        out, fan = _to_host(_calls(current, tick))
        # up to one block flagged: rerun on one device; else whole blocks on every device
        few = fallback.flagged(out, valid).size <= EXTRACT_BLOCK
        return fallback.complete(out, fan, valid, rerun, EXTRACT_BLOCK * (1 if few else mesh.size), chunk)

    base_out = None
    probe = TippingProbe(min(cfg.run.tipping_paths, n_paths), len(pts))
    for (start, valid, i), current in _ahead(tasks, launch):
        tick = lambda steps, done=done, valid=valid: report(done + valid * steps / static.steps)
        out, fan = collect((start, valid, i), current, tick)
        probe.keep(i, start, out)
        if i == baseline:
            base_out = out
        accs[i].add(out, fan, valid, base_out)
        done += valid
    _check_finite(accs)
    _rerun_nudged(probe, launch, collect, order, n_paths, probe.chunk(size, EXTRACT_BLOCK * mesh.size))
    price0 = [np.asarray(b[0].market.price0, float) for b in built]
    results = [a.result(p0) | probe.result(i) for i, (a, p0) in enumerate(zip(accs, price0))]
    return to_dataset(cfg, results, static, [forms.form(s) for s in statics])


def _calls(roll: Rollout, tick: Callable[[int], None]):
    """`roll`'s (outputs, fan) on its devices, made call by call: the host waits for each call
    (so that a signal is handled between calls, not after the whole chunk) and then calls
    `tick(steps done)`."""
    while True:
        tick(roll.wait())
        if not roll.advance():
            return roll.result()


def _check_finite(accs: list[PointAccumulator]) -> None:
    """Raise `SimulationError` naming the points where some path produced NaN or infinity."""
    bad = [i for i, a in enumerate(accs) if a.nonfinite]
    if bad:
        raise SimulationError(
            f"non-finite values (NaN or infinity) on some paths at point(s) {bad}: the parameters "
            "drive prices or balances out of range; check volatility, impact and leverage inputs"
        )


def _rerun_nudged(
    probe: TippingProbe, launch: Callable, collect: Callable, order: list[int], n_paths: int, chunk: int
) -> None:
    """Rerun the probe's paths of every point with every draw nudged by `NUDGE_ULPS`, in chunks of
    `chunk` paths, and let the probe compare them; after the run, so that its chunks do not wait."""
    for start in probe.starts(chunk):
        for i in order:
            task = (start, min(chunk, n_paths - start), i)
            nudged, _ = collect(task, launch(task, NUDGE_ULPS, chunk), nudge=NUDGE_ULPS, chunk=chunk)
            probe.compare(i, start, nudged)
