"""A chunk of paths through all steps: `lax.scan` over time, the step `vmap`ped over paths.

The scan carries only per-path state and the fan-chart histograms; per-path outputs are read
from the final state. Peak memory is therefore flat in the number of steps and linear in the
chunk size, which `engine.simulate` chooses from a memory budget.

`sharded_rollout` splits a chunk's paths over the devices of a mesh with `shard_map`: each
device runs `rollout`'s body on its contiguous slice of global path indices (keys come from the
global index, so a path's numbers do not depend on the device count), its data-dependent
branches (the ADL `cond`, the cascade's early exit) decide per device rather than in lock-step
across devices, and only the fan-chart histograms are summed across devices (`psum`). The
same code runs on host CPU devices, GPUs and, under `jax.distributed`, across processes.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from engine import bins as B
from engine import market
from engine.devices import PATH_AXIS
from engine.kernel import adl_step, init_state, market_step, path_keys, step_keys
from engine.outputs import extract
from engine.params import Params, Static

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


def _rollout(params: Params, seed, start, n_valid, static: Static, n_paths: int):
    """Simulate global paths `start .. start + n_paths - 1` under one parameter point.

    Only the first `n_valid` paths enter the fan-chart histograms (the last chunk of a run is
    padded to the compiled size).

    Returns (outputs, fan): outputs maps each name of `engine.outputs.OUTPUTS` to
    `[n_paths, ...]`; fan holds int32 histograms `price` `[fan_points, assets, 640]` (log mark)
    and `liquidated` `[fan_points, assets, bins]` (cumulative USD), counted over the chunk.
    """
    keys = path_keys(seed, start, n_paths)
    valid = jnp.arange(n_paths) < n_valid
    one = init_state(params, static)
    states = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n_paths,) + x.shape), one)
    fan = {
        "price": jnp.zeros((static.fan_points, static.n_assets, B.FAN_PRICE.n), jnp.int32),
        "liquidated": jnp.zeros((static.fan_points, static.n_assets, B.FAN_USD.n), jnp.int32),
    }
    dtype = params.market.price0.dtype
    draw = jax.vmap(lambda k: market.draw(k, static.n_assets, params.market.tail_dof, dtype, static.dof_max))
    move = jax.vmap(market_step, in_axes=(0, 0, None, None, None, None, None))
    deleverage = jax.vmap(adl_step, in_axes=(0, None))

    def body(carry, xs):
        states, fan = carry
        t, shock, flow = xs
        draws = draw(step_keys(keys, t))
        states = move(states, draws, t, shock, flow, params, static)
        states = jax.lax.cond(
            jnp.any(states.deficit > 0), lambda s: deleverage(s, params), lambda s: s, states
        )
        fan = jax.lax.cond(
            ((t + 1) % static.fan_stride == 0) | (t == static.steps - 1),
            lambda f: _fan_update(f, states, valid, t, static),
            lambda f: f,
            fan,
        )
        return (states, fan), None

    ts = jnp.arange(static.steps, dtype=jnp.int32)
    xs = (ts, params.schedule.shock, params.schedule.flow)
    (states, fan), _ = jax.lax.scan(body, (states, fan), xs)
    # Blocks of a fixed number of paths: XLA's reductions over cohorts may associate
    # differently for different batch sizes, and the outputs must not depend on how many
    # paths a device holds (chunk size, device count).
    block = math.gcd(n_paths, EXTRACT_BLOCK)
    outputs = jax.lax.map(lambda s: extract(s, params, static), states, batch_size=block)
    return outputs, fan


rollout = jax.jit(_rollout, static_argnames=("static", "n_paths"))


@partial(jax.jit, static_argnames=("static", "n_paths", "mesh"))
def sharded_rollout(params: Params, seed, start, n_valid, static: Static, n_paths: int, mesh: Mesh):
    """`rollout` of global paths `start .. start + n_paths - 1` split over `mesh`'s devices.

    n_paths must be a multiple of `mesh.size`; device d simulates paths
    `start + d * n_paths / mesh.size ...`. Returns (outputs, fan) as `rollout` does, outputs
    sharded along the path axis, fan replicated (summed over devices).
    """
    per = n_paths // mesh.size

    def local(params, seed, start, n_valid):
        first = jax.lax.axis_index(PATH_AXIS) * per
        here = jnp.clip(n_valid - first, 0, per)
        outputs, fan = _rollout(params, seed, start + first, here, static, per)
        return outputs, jax.lax.psum(fan, PATH_AXIS)

    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=(P(PATH_AXIS), P()),
        check_vma=False,  # the kernel's loops start from replicated constants; no manual typing needed
    )(params, seed, start, n_valid)
