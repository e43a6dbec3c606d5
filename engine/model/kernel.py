"""The exact kernel: one step of one path as the six stages of the model (`docs/model.md`).

1. market move (`stages.move_market`): sigma = sqrt(h); the exogenous return
   (`engine.model.market`) moves the fair log price; transient impact decays;
2. breaker limits (`engine.model.policies.mark_limits`): a halted asset is frozen and its
   exogenous flow queues;
3. cascade (`engine.model.cascade`) at the dynamic maintenance rate, after holders' voluntary
   closing (`engine.model.derisk`, with `Static.derisk`), whose orders join the exogenous flow;
4. impact (`stages.move_mark`): the cascade's flow moves the fair and transient price, the
   mark is clipped to the limits, and a move beyond the halt threshold starts a halt;
5. volatility and totals (`stages.close_step`): GARCH update from the realised mark return,
   drawdown, counters;
6. waterfall (`engine.model.waterfall`): the fund, then ADL, then bad debt.

`market_step` runs stages 1-5 and the fund, `adl_step` the rest of stage 6, so that a rollout
can run ADL only when some path has a deficit. The step is written once (`engine.model.skeleton`);
the dense book (`DENSE`), the ladder's (`engine.model.ladder_kernel.LADDER`) and the relaxed,
differentiable one (`engine.model.relaxed.RELAXED`) are its book forms
(`engine.model.skeleton.BookForm`), and `form` picks one from `Static`, once.
The chunk rollout is `engine.sim.rollout`. This module also holds the per-path random keys
and draws.

Prices are carried as log marks relative to `price0` (`x`), cohorts in USD.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from engine.model import derisk, ladder_kernel, market, relaxed, skeleton, stages, threefry
from engine.model.cascade import CascadeInputs, run_cascade, run_cascade_whole
from engine.model.params import Params, Static
from engine.model.stages import SimState

threefry.use_straight_line()  # before anything draws: the same bits in fewer CPU operations


class DenseInputs(NamedTuple):
    """The dense cascade's inputs of one path: the book's (`engine.model.cascade.CascadeInputs`)
    and its cross-margin accounts (`stages.account_args`, None without)."""

    cascade: CascadeInputs
    accounts: tuple | None


def _inputs(
    state: SimState, m: stages.Move, br: skeleton.Breaker, params: Params, static: Static
) -> DenseInputs:
    """`skeleton.BookForm.inputs` of the dense book: the cohorts' units and the step's prices."""
    inp = stages.cascade_inputs(state, m, br.flow0, br.lo, br.hi, br.open_)
    return DenseInputs(inp, stages.account_args(state, m, params))


def _cascade(inp: DenseInputs, params: Params, static: Static) -> skeleton.Outcome:
    """`skeleton.BookForm.cascade` of the dense book: the whole-position cascade where
    `Static.whole_only`, else the general one (with accounts)."""
    if static.whole_only:
        return skeleton.Outcome(run_cascade_whole(inp.cascade, params, static.rounds))
    return skeleton.Outcome(run_cascade(inp.cascade, params, static.rounds, accounts=inp.accounts))


# The dense exact book: cohorts' units per path, closed by `engine.model.derisk.start`.
DENSE = skeleton.BookForm("dense", stages.init_state, derisk.start, _inputs, _cascade)


def market_step(
    state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static
) -> SimState:
    """Stages 1-5 and the fund of stage 6 for one path; leaves `state.deficit` for ADL.

    t: `[]` int step; shock: `[assets]` scheduled log shock; flow: `[assets]` USD.
    """
    return DENSE.market_step(state, draws, t, shock, flow, params, static)


def adl_step(state: SimState, t, params: Params) -> SimState:
    """Stage 6 after the fund: ADL the step's deficit, the rest is bad debt (t: `[]` int step,
    unused here)."""
    return DENSE.adl_step(state, t, params)


def form(static: Static) -> skeleton.BookForm:
    """The kernel's book form for `static`: relaxed (`engine.model.relaxed.RELAXED`), ladder
    (`Static.ladder`, `engine.model.ladder_kernel.LADDER`) or dense exact (`DENSE`; the choice
    is `engine.config.forms.specialise`'s)."""
    if static.relaxed:
        return relaxed.RELAXED
    return ladder_kernel.LADDER if static.ladder else DENSE


def init_state(params: Params, static: Static) -> SimState:
    """State at t0 of one path (identical for all paths of a policy point)."""
    f = form(static)
    return f.init_state(f.prepare(params, static), static)


def step(state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static) -> SimState:
    """One full step of one path (all six stages), in the form `static` selects."""
    f = form(static)
    params = f.prepare(params, static)
    return f.adl_step(f.market_step(state, draws, t, shock, flow, params, static), t, params)


class Word64(NamedTuple):
    """A whole number in [0, 2**64) as two uint32 words `[]`: seeds reach 2**63 and global path
    indices 10**10, while JAX's integers are 32-bit unless x64 is on (it is off by default)."""

    hi: jnp.ndarray
    lo: jnp.ndarray


def word64(value) -> Word64:
    """`value` as a `Word64`: a Python or NumPy integer in [0, 2**64), a `Word64`, or a traced
    non-negative integer scalar (which fits the low word)."""
    if isinstance(value, Word64):
        return value
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if not 0 <= value < 2**64:
            raise ValueError(f"{value} is not in [0, 2**64)")
        return Word64(np.uint32(value >> 32), np.uint32(value & 0xFFFFFFFF))
    return Word64(jnp.zeros((), jnp.uint32), jnp.asarray(value).astype(jnp.uint32))


def add_offsets(base: Word64, offsets: jnp.ndarray) -> Word64:
    """`base + offsets` with the carry into the high word (offsets: non-negative integers
    below 2**32, any shape; the words take their shape)."""
    lo = base.lo + offsets.astype(jnp.uint32)
    return Word64(base.hi + (lo < base.lo).astype(jnp.uint32), lo)


def path_keys(seed, start, n: int, offsets: jnp.ndarray | None = None) -> jax.Array:
    """Keys `[n]` of global paths `start .. start+n-1` (or `start + offsets`, offsets: `[n]`
    non-negative integers below 2**32), a pure function of (seed, path index), so a path's
    numbers do not depend on chunking or devices.

    seed, start: anything `word64` takes, up to 2**64 - 1. The seed's key is threefry's key of
    the 64-bit seed (words hi, lo); a path's key hashes its 64-bit index (words hi, lo) with it,
    which for indices below 2**32 is `jax.random.fold_in(jax.random.key(seed), index)`.
    """
    s = word64(seed)
    seed_key = jnp.stack([jnp.asarray(s.hi, jnp.uint32), jnp.asarray(s.lo, jnp.uint32)])
    offsets = jnp.arange(n, dtype=jnp.uint32) if offsets is None else offsets
    idx = add_offsets(word64(start), offsets)
    data = jax.vmap(lambda hi, lo: threefry_2x32(seed_key, jnp.stack([hi, lo])))(idx.hi, idx.lo)
    return jax.random.wrap_key_data(data, impl="threefry2x32")


def step_keys(keys: jax.Array, t) -> jax.Array:
    """Per-path keys `[paths]` of step t."""
    return jax.vmap(jax.random.fold_in, (0, None))(keys, t)


def step_draws(keys: jax.Array, t, params: Params, static: Static, nudge=0.0) -> market.Draws:
    """The random numbers of step t for the paths of `keys` (`path_keys`), leading axis paths.

    nudge: `[]` traced; every draw is scaled by (1 + nudge * eps of the dtype), i.e. moved by
    about `nudge` ulps (the tipping-point probe, `engine.sim.tipping`); 0 leaves them as drawn.
    """
    dtype = params.market.price0.dtype

    def one(k):
        d = market.draw(k, static.n_assets, params.market.tail_dof, dtype, static.dof_max)
        if static.n_collateral:
            d = d._replace(u_depeg=market.depeg_draws(k, static.n_collateral, dtype))
        return d

    draws = jax.vmap(one)(step_keys(keys, t))
    scale = 1 + jnp.asarray(nudge, dtype) * jnp.finfo(dtype).eps
    return jax.tree_util.tree_map(lambda x: x * scale, draws)
