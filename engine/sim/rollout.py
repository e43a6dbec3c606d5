"""A chunk of paths through all steps: `lax.scan` over time, the step `vmap`ped over paths.

The scan carries only per-path state and the fan-chart histograms; per-path outputs are read
from the final state. Peak memory is therefore flat in the number of steps and linear in the
chunk size, which `engine.sim.simulate` chooses from a memory budget.

`sharded_rollout` splits a chunk's paths over the devices of a mesh with `shard_map`: each
device runs `rollout_chunk`'s body on its contiguous slice of global path indices (keys come from the
global index, so a path's numbers do not depend on the device count), its data-dependent
branches (the ADL `cond`, the cascade's early exit) decide per device rather than in lock-step
across devices, and only the fan-chart histograms are summed across devices (`psum`). The
same code runs on host CPU devices, GPUs and, under `jax.distributed`, across processes. It
runs the steps in segments of at most `SEGMENT_STEPS` per compiled call (`sharded_begin`,
`sharded_advance` per segment with the carry donated, `sharded_finish`), which keeps the
runtime's memory flat in the horizon too. `Rollout` makes those calls one at a time, so that
the host can wait for each (a call cannot be interrupted) and look at signals and report
progress between them; `engine.sim.cost` sizes the segments.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from engine.model import bins as B
from engine.model.kernel import (
    add_offsets,
    form,
    init_state,
    path_keys,
    step_draws,
    word64,
)
from engine.model.params import Params, Static
from engine.model.stages import SimState
from engine.sim import fallback
from engine.sim.devices import PATH_AXIS, path_mesh

EXTRACT_BLOCK = 32


def _histogram(values, valid, bins: B.Bins, n_assets: int):
    """Counts `[assets, bins]` of values `[paths, assets]` over the chunk's valid paths."""
    idx = bins.index(values, jnp) + jnp.arange(n_assets)[None, :] * bins.n
    weight = jnp.broadcast_to(valid[:, None], idx.shape).astype(jnp.int32)
    counts = jnp.zeros(n_assets * bins.n, jnp.int32).at[idx.reshape(-1)].add(weight.reshape(-1))
    return counts.reshape(n_assets, bins.n)


def _fan_update(fan, states, valid, t, static: Static):
    """Add this step's histograms of log mark and cumulative liquidations to row t // stride."""
    row = t // static.fan_stride
    price = _histogram(states.x_mark, valid, B.FAN_PRICE, static.n_assets)
    liq = _histogram(jnp.sum(states.totals.liquidated, -1), valid, B.FAN_USD, static.n_assets)
    return {
        "price": jax.lax.dynamic_update_index_in_dim(fan["price"], price, row, 0),
        "liquidated": jax.lax.dynamic_update_index_in_dim(fan["liquidated"], liq, row, 0),
    }


class Carry(NamedTuple):
    """What a chunk carries from step to step: per-path `states` (leading axis: paths) and
    the fan-chart histograms `fan` of those paths (see `rollout_chunk`)."""

    states: SimState
    fan: dict


def _begin(params: Params, static: Static, n_paths: int) -> Carry:
    """Every path at t0, empty fan charts."""
    one = init_state(params, static)
    states = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n_paths,) + x.shape), one)
    fan = {
        "price": jnp.zeros((static.fan_points, static.n_assets, B.FAN_PRICE.n), jnp.int32),
        "liquidated": jnp.zeros((static.fan_points, static.n_assets, B.FAN_USD.n), jnp.int32),
    }
    return Carry(states, fan)


def _advance(
    carry: Carry,
    params: Params,
    seed,
    start,
    n_valid,
    t0,
    static: Static,
    n_steps: int,
    nudge=0.0,
    offsets=None,
    count_from=None,
) -> Carry:
    """Steps `t0 .. t0 + n_steps - 1` of global paths `start ..` (or `start + offsets`,
    offsets: `[paths]` uint32; steps from `static.steps` on are skipped, so the last of several
    segments may overrun). Only the first `n_valid` paths enter the fan charts (a chunk is
    padded to its compiled size), each from step `count_from` `[paths]` int32 on (default 0;
    the dense rerun of the paths the ladder flagged) and, in the ladder form, before the step
    it flagged. nudge: see `step_draws`."""
    n_paths = carry.states.x_mark.shape[0]
    keys = path_keys(seed, start, n_paths, offsets)
    valid = jnp.arange(n_paths) < n_valid
    first = jnp.zeros(n_paths, jnp.int32) if count_from is None else count_from
    kernel = form(static)
    params = kernel.prepare(params, static)
    move = kernel.market_batch

    def one_step(carry: Carry, t) -> Carry:
        states, fan = carry
        shock, flow = params.schedule.shock[t], params.schedule.flow[t]
        states = move(states, step_draws(keys, t, params, static, nudge), t, shock, flow, params, static)
        states = jax.lax.cond(
            jnp.any(states.deficit > 0), lambda s: kernel.adl_batch(s, t, params), lambda s: s, states
        )
        counted = valid & (t >= first)
        if states.fallback is not None:
            counted = counted & (states.fallback > t)
        fan = jax.lax.cond(
            ((t + 1) % static.fan_stride == 0) | (t == static.steps - 1),
            lambda f: _fan_update(f, states, counted, t, static),
            lambda f: f,
            fan,
        )
        return Carry(states, fan)

    def body(carry: Carry, t):
        return jax.lax.cond(t < static.steps, one_step, lambda c, _: c, carry, t), None

    carry, _ = jax.lax.scan(body, carry, t0 + jnp.arange(n_steps, dtype=jnp.int32))
    return carry


def _finish(carry: Carry, params: Params, static: Static):
    """Per-path outputs `{name: [paths, ...]}` of the final states."""
    states = carry.states
    n_paths = states.x_mark.shape[0]
    kernel = form(static)
    params = kernel.prepare(params, static)
    return kernel.extract_batch(states, params, static, math.gcd(n_paths, EXTRACT_BLOCK))


def dense(static: Static) -> Static:
    """`static` with the dense exact kernel instead of the ladder (its fallback)."""
    return dataclasses.replace(static, ladder=0, ladder_cells=0)


def _chunk(params: Params, seed, start, n_valid, static: Static, n_paths: int, nudge=0.0):
    """Simulate global paths `start .. start + n_paths - 1` under one parameter point, all steps in one call, in the form `static` names; in the ladder form the
    paths it flagged keep its numbers (`rollout` reruns them). seed, start:
    `engine.model.kernel.word64(n)` for any n below 2**64 (a plain int is traced as int32, so it
    must be below 2**31).

    Only the first `n_valid` paths enter the fan-chart histograms (the last chunk of a run is
    padded to the compiled size). nudge: `[]` ulps by which every draw moves (`step_draws`).

    Returns (outputs, fan): outputs maps each name of `engine.model.outputs.OUTPUTS` to
    `[n_paths, ...]`; fan holds int32 histograms `price` `[fan_points, assets, 640]` (log mark)
    and `liquidated` `[fan_points, assets, bins]` (cumulative USD), counted over the chunk.
    """
    carry = _begin(params, static, n_paths)
    carry = _advance(carry, params, seed, start, n_valid, 0, static, static.steps, nudge)
    return _finish(carry, params, static), carry.fan


rollout_chunk = jax.jit(_chunk, static_argnames=("static", "n_paths"))

# The fewest paths of a dense rerun call of `rollout` (`engine.sim.fallback.rerun_size`).
RERUN_UNIT = 8


def rollout(
    params: Params, seed, start, n_valid, static: Static, n_paths: int, nudge=0.0
) -> tuple[dict, dict]:
    """`rollout_chunk`'s (outputs, fan) on the host (NumPy), with the paths the ladder flagged
    rerun on the dense kernel by their global index and counted in the fan from the flagged step
    on, on one device, as a run reruns them (`engine.sim.fallback.complete`, `sharded_rollout`)."""
    out, fan = jax.device_get(
        rollout_chunk(params, seed, start, n_valid, static=static, n_paths=n_paths, nudge=nudge)
    )
    if not static.ladder:
        return out, fan

    one = path_mesh(jax.devices()[:1])

    def rerun(offsets, count_from, n):
        again = sharded_rollout(
            params, seed, start, n, dense(static), offsets.size, one,
            nudge=nudge, offsets=jnp.asarray(offsets), count_from=jnp.asarray(count_from),
        )  # fmt: skip
        return jax.device_get(again)

    return fallback.complete(out, fan, n_valid, rerun, RERUN_UNIT, n_paths)


# Steps per compiled call of `sharded_rollout`. XLA's CPU runtime with several host devices
# holds memory that grows with the iterations of one call (measured: W1, 1,024 paths on 2
# devices, peak RSS 686 MiB for 288 steps in one call, 1,757 MiB for 28,800) and reuses it
# in the next call, so long horizons run as several calls of at most this many steps.
SEGMENT_STEPS = 1024


def _per_device(fan: dict) -> dict:
    return jax.tree_util.tree_map(lambda x: x[None], fan)


@partial(jax.jit, static_argnames=("static", "n_paths", "mesh"))
def sharded_begin(params: Params, static: Static, n_paths: int, mesh: Mesh) -> Carry:
    """`_begin` of a chunk of `n_paths` split over `mesh` (fan charts: one per device)."""

    def local(params):
        c = _begin(params, static, n_paths // mesh.size)
        return c._replace(fan=_per_device(c.fan))

    return jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(),), out_specs=PartitionSpec(PATH_AXIS), check_vma=False
    )(params)


@partial(jax.jit, static_argnames=("static", "n_paths", "n_steps", "mesh"), donate_argnums=(0,))
def sharded_advance(
    carry: Carry,
    params: Params,
    seed,
    start,
    n_valid,
    t0,
    static: Static,
    n_paths: int,
    n_steps: int,
    mesh: Mesh,
    nudge=0.0,
    offsets=None,
    count_from=None,
) -> Carry:
    """`_advance` of a chunk split over `mesh`: device d holds paths `start + d * n_paths /
    mesh.size ...` (or those of its share of `offsets` `[n_paths]`) and counts its fan charts
    for those of them below `n_valid`, from `count_from` `[n_paths]` on."""

    def local(carry, params, seed, start, n_valid, t0, nudge, offsets, count_from):
        per = n_paths // mesh.size
        first = jax.lax.axis_index(PATH_AXIS) * per
        here = jnp.clip(n_valid - first, 0, per)
        fan = jax.tree_util.tree_map(lambda x: x[0], carry.fan)
        here_start = add_offsets(word64(start), first) if offsets is None else word64(start)
        out = _advance(
            carry._replace(fan=fan),
            params,
            seed,
            here_start,
            here,
            t0,
            static,
            n_steps,
            nudge,
            offsets,
            count_from,
        )
        return out._replace(fan=_per_device(out.fan))

    paths, same = PartitionSpec(PATH_AXIS), PartitionSpec()
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(paths, same, same, same, same, same, same, paths, paths),
        out_specs=paths,
        check_vma=False,  # the kernel's loops start from replicated constants; no manual typing needed
    )(carry, params, seed, start, n_valid, t0, nudge, offsets, count_from)


@partial(jax.jit, static_argnames=("static", "mesh"))
def sharded_finish(carry: Carry, params: Params, static: Static, mesh: Mesh):
    """(outputs sharded along the path axis, fan charts summed over the devices)."""

    def local(carry, params):
        fan = jax.tree_util.tree_map(lambda x: x[0], carry.fan)
        return _finish(carry, params, static), jax.lax.psum(fan, PATH_AXIS)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(PATH_AXIS), PartitionSpec()),
        out_specs=(PartitionSpec(PATH_AXIS), PartitionSpec()),
        check_vma=False,
    )(carry, params)


class Rollout:
    """A chunk's compiled calls, made one at a time: `sharded_begin` and the first segment of
    `segment_steps` steps when made, the next segment on each `advance`, `sharded_finish` in
    `result`. Arguments as `sharded_rollout`'s. Calls are dispatched asynchronously; `wait`
    blocks until those made are done, so that the host never waits on more than the calls it
    made since (each about `engine.sim.cost.CALL_TARGET_S` of work)."""

    def __init__(
        self,
        params: Params,
        seed,
        start,
        n_valid,
        static: Static,
        n_paths: int,
        mesh: Mesh,
        segment_steps: int = SEGMENT_STEPS,
        nudge=0.0,
        offsets=None,
        count_from=None,
    ):
        self.params, self.static, self.n_paths, self.mesh = params, static, n_paths, mesh
        self.segment = min(segment_steps, static.steps)
        self._args = (word64(seed), word64(start), n_valid)
        self._extra = {"nudge": nudge, "offsets": offsets, "count_from": count_from}
        self.dispatched = 0  # steps dispatched (the last segment may overrun `static.steps`)
        self.carry = sharded_begin(params, static=static, n_paths=n_paths, mesh=mesh)
        self.advance()

    def advance(self) -> bool:
        """Dispatch the next segment; False (and nothing dispatched) once every step is."""
        if self.dispatched >= self.static.steps:
            return False
        self.carry = sharded_advance(
            self.carry,
            self.params,
            *self._args,
            self.dispatched,
            static=self.static,
            n_paths=self.n_paths,
            n_steps=self.segment,
            mesh=self.mesh,
            **self._extra,
        )
        self.dispatched += self.segment
        return True

    def wait(self) -> int:
        """Block until the calls dispatched so far are done; the steps done."""
        jax.block_until_ready(self.carry)
        return min(self.dispatched, self.static.steps)

    def result(self):
        """(outputs, fan) as `sharded_rollout` returns them, once every step is dispatched."""
        return sharded_finish(self.carry, self.params, static=self.static, mesh=self.mesh)


def sharded_rollout(*args, **kwargs):
    """`rollout` of global paths `start .. start + n_paths - 1` split over `mesh`'s devices, in
    calls of at most `segment_steps` steps (dispatched asynchronously; see `SEGMENT_STEPS`):
    every call of a `Rollout` made with these arguments, then its result.

    n_paths must be a multiple of `mesh.size`; seed and start are integers up to 2**64 - 1
    (passed to the compiled calls as `Word64`s). Returns (outputs, fan) as `rollout` does,
    outputs sharded along the path axis, fan replicated (summed over devices). nudge: `[]` ulps
    by which every draw moves (`step_draws`; the tipping probe), 0 for a run. offsets,
    count_from: `[n_paths]` uint32 / int32, the paths `start + offsets` instead of a range, each
    counted in the fan charts from its `count_from` step on (`engine.sim.fallback`).

    In the ladder form the paths the ladder flagged (output `fallback_step`) are not complete:
    `engine.sim.fallback.complete` reruns them on the dense kernel.
    """
    roll = Rollout(*args, **kwargs)
    while roll.advance():
        pass
    return roll.result()
