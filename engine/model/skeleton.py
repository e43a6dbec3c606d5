"""The step of one path written once: stages 1-5 and the fund (`engine.model.kernel`'s module
docstring), with the book's form (`BookForm`: dense cohorts, ladder levels, relaxed) plugged
into it.

`before` runs stages 1-2 (market move, breaker limits, the queue, the flow that meets the book)
and the form's voluntary closing, and gives the form's cascade inputs; the form's cascade runs
on them; `after` runs stages 4-5 and the fund and lets the form record its new book state.
`market_step` is the three in a row; a form that batches its cascade over paths (the ladder's
`engine.model.ladder_kernel.market_batch`) calls `before` and `after` itself. A form also gives
its state at t0, its stage 6 (ADL), its tally at the path's end and its outputs, so that a
rollout (`engine.sim.rollout`) runs any form through `BookForm`'s methods alone.

The breaker (`BookForm.limits`, `BookForm.halt`) and the fund's minimum (`BookForm.minimum`) are
the exact kernel's unless a form replaces them (the relaxed kernel's soft halt and fund,
`engine.model.relaxed`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from engine.model import derisk, market, outputs, policies, stages
from engine.model import tally as T
from engine.model.cascade import Cascade
from engine.model.params import Params, Static
from engine.model.stages import Mark, Move, SimState
from engine.model.waterfall import Fund, pay_from_fund


class Breaker(NamedTuple):
    """Stage 2 of one path, `[assets]`: the limits `lo`, `hi` on the log mark, the flow `flow0`
    (USD) that meets the book and the flow `queue` (USD) that waits for a halt's end, the open
    share `open_` (bool, or in [0, 1] in the relaxed kernel) and `halted`, the halt as the totals
    count it (bool, or the relaxed kernel's halt strength)."""

    lo: jnp.ndarray
    hi: jnp.ndarray
    flow0: jnp.ndarray
    queue: jnp.ndarray
    open_: jnp.ndarray
    halted: jnp.ndarray


def exact_limits(state: SimState, m: Move, flow, params: Params) -> Breaker:
    """The exact breaker (stage 2): a halted asset is frozen and its exogenous flow `flow`
    `[assets]` (USD) queues; an open one meets this step's flow and the queue."""
    lo, hi = policies.mark_limits(state.x_mark, m.x_ref, m.halted, params.policy)
    flow0 = jnp.where(m.halted, 0.0, flow + state.queue)
    queue = jnp.where(m.halted, state.queue + flow, 0.0)
    return Breaker(lo, hi, flow0, queue, ~m.halted, m.halted)


def exact_halt(state: SimState, m: Move, mk: Mark, params: Params) -> tuple[jnp.ndarray, Any]:
    """The exact breaker after the impact (stage 4): halt steps left `[assets]` (int), a new halt
    where the target moved beyond the threshold; and the state's `halt_weight` as it is."""
    triggered = policies.halt_triggered(mk.target, m.x_ref, m.halted, params.policy)
    return stages.count_halt(state, triggered, params), state.halt_weight


def exact_minimum(params: Params) -> Callable:
    """The exact fund's minimum of two amounts."""
    return jnp.minimum


class Outcome(NamedTuple):
    """`BookForm.cascade`'s result of a form whose book the `Cascade` carries (dense, relaxed)."""

    cascade: Cascade


def _as_is(new: SimState, b: Before, r, f: Fund, t, params: Params) -> SimState:
    """`BookForm.finish` of a form whose book state the cascade (`Cascade`) carries whole."""
    return new


def _unprepared(params: Params, static: Static) -> Params:
    """`BookForm.prepare` of a form that derives nothing from the parameters."""
    return params


def dense_tally(state: SimState, params: Params) -> SimState:
    """`BookForm.tally` of the dense cohorts: the whole-position cascade leaves its liquidations
    (`SimState.liquidated_units`, cohorts closed whole at their bankruptcy price) to the path's
    end; the general one tallied them round by round (the state as it is)."""
    if state.liquidated_units is None:
        return state
    t = T.whole(params.book, params.policy, state.totals.tally, state.liquidated_units, state.bankrupt)
    return state._replace(totals=state.totals._replace(tally=t))


def exact_adl(state: SimState, t, params: Params) -> SimState:
    """Stage 6 after the fund (`engine.model.stages.deleverage`; t: `[]` int step, unused)."""
    return stages.deleverage(state, params)


# `jax.vmap` axes of `market_step`'s arguments after the form: paths on the state and draws
_PER_PATH = (0, 0, None, None, None, None, None)


class BookForm(NamedTuple):
    """A form of the kernel's book: what it keeps per path and how its stages run (signatures
    below; `Move`, `Breaker` and `Before` of this module).

    name: the form's name (`engine.config.forms.FORMS`);
    init_state: `(params, static) -> SimState`, the state at t0 with the form's book (prepared
        parameters);
    close: the step's voluntary closing (`engine.model.derisk`), `(state, m, flow0, lo, hi,
        open_, params, static) -> (state, flow0, Closing | None)`: the state with the form's
        book after it, the flow into the cascade with its orders (as `derisk.start`);
    inputs: `(state, m, Breaker, params, static) -> I`, the cascade's inputs (a NamedTuple);
    cascade: `(I, params, static) -> R`, R a NamedTuple whose `cascade` is the
        `engine.model.cascade.Cascade` (its book, when the form carries it there: the dense one);
    finish: `(new, Before, R, Fund, t, params) -> SimState`, the state after stage 5 with the
        form's new book state and flags;
    adl: `(state, t, params) -> SimState`, stage 6 after the fund (ADL, then bad debt);
    tally: `(state, params) -> SimState`, a final state with the liquidations its form left to
        the path's end added to `Totals.tally` (`engine.model.tally`);
    outputs: `(state, params, static) -> dict`, the per-path outputs of a tallied final state
        (`engine.model.outputs`);
    prepare: `(params, static) -> Params`, what the form derives from the parameters once per
        compiled call (the ladder's sorted book); the other functions take prepared parameters;
    batch, batch_adl, batch_extract: the form's own `market_batch`, `adl_batch`,
        `extract_batch` (None: the one-path function under `jax.vmap`, or `jax.lax.map`);
    limits, halt: the breaker (as `exact_limits`, `exact_halt`), and minimum: `params ->` the
        fund's minimum (`engine.model.waterfall.pay_from_fund`), the exact kernel's unless the
        form has its own.
    """

    name: str
    init_state: Callable[[Params, Static], SimState]
    close: Callable[..., tuple]
    inputs: Callable[..., Any]
    cascade: Callable[..., Any]
    finish: Callable[..., SimState] = _as_is
    adl: Callable[[SimState, Any, Params], SimState] = exact_adl
    tally: Callable[[SimState, Params], SimState] = dense_tally
    outputs: Callable[[SimState, Params, Static], dict] = outputs.extract
    prepare: Callable[[Params, Static], Params] = _unprepared
    batch: Callable[..., SimState] | None = None
    batch_adl: Callable[[SimState, Any, Params], SimState] | None = None
    batch_extract: Callable[..., dict] | None = None
    limits: Callable[..., Breaker] = exact_limits
    halt: Callable[..., tuple] = exact_halt
    minimum: Callable[[Params], Callable] = exact_minimum

    def market_step(
        self, state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static
    ):
        """Stages 1-5 and the fund of one path (`market_step`)."""
        return market_step(self, state, draws, t, shock, flow, params, static)

    def market_batch(self, states: SimState, draws, t, shock, flow, params: Params, static: Static):
        """`market_step` of a batch of paths (leading axis of the states and draws)."""
        if self.batch is not None:
            return self.batch(states, draws, t, shock, flow, params, static)
        return jax.vmap(partial(market_step, self), _PER_PATH)(states, draws, t, shock, flow, params, static)

    def adl_step(self, state: SimState, t, params: Params) -> SimState:
        """Stage 6 after the fund of one path (t: `[]` int step)."""
        return self.adl(state, t, params)

    def adl_batch(self, states: SimState, t, params: Params) -> SimState:
        """`adl_step` of a batch of paths (leading axis)."""
        if self.batch_adl is not None:
            return self.batch_adl(states, t, params)
        return jax.vmap(self.adl, (0, None, None))(states, t, params)

    def extract(self, state: SimState, params: Params, static: Static) -> dict:
        """Per-path outputs of one path's final state: its `tally`, then its `outputs`."""
        return self.outputs(self.tally(state, params), params, static)

    def extract_batch(self, states: SimState, params: Params, static: Static, block: int) -> dict:
        """`extract` of a batch of paths (leading axis), `{name: [paths, ...]}`: `jax.lax.map` in
        blocks of `block` paths (XLA's reductions over cohorts may associate differently for
        different batch sizes, and a path's outputs must not depend on how many paths a device
        holds), unless the form has its own."""
        if self.batch_extract is not None:
            return self.batch_extract(states, params, static, block)
        return jax.lax.map(lambda s: self.extract(s, params, static), states, batch_size=block)


class Before(NamedTuple):
    """Stages 1-2 of one path and its voluntary closing: the market's move, the breaker, the
    state after the closing (with the step's depeg gap), the form's cascade inputs, and the
    `engine.model.derisk.Closing` (None without `Static.derisk`)."""

    m: Move
    br: Breaker
    state: SimState
    inputs: Any
    closing: derisk.Closing | None = None


def before(
    form: BookForm, state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static
) -> Before:
    """Stages 1-2 and the voluntary closing of one path in the form `form`.

    t: `[]` int step; shock: `[assets]` scheduled log shock; flow: `[assets]` USD.
    """
    m = stages.move_market(state, draws, t, shock, params, static)
    state = state._replace(gap=m.gap)
    br = form.limits(state, m, flow, params)
    state, flow0, closing = form.close(state, m, br.flow0, br.lo, br.hi, br.open_, params, static)
    br = br._replace(flow0=flow0)
    return Before(m, br, state, form.inputs(state, m, br, params, static), closing)


def after(form: BookForm, draws: market.Draws, t, b: Before, r, params: Params, static: Static) -> SimState:
    """Stages 4-5 and the fund of one path after its cascade `r` (`BookForm.cascade`'s result);
    leaves `state.deficit` for ADL."""
    m, br, state, c = b.m, b.br, b.state, r.cascade
    mk = stages.move_mark(m, c, br.open_, br.lo, br.hi, params)
    halt_left, halt_weight = form.halt(state, m, mk, params)
    f = pay_from_fund(state.fund, c.fund_inflow, c.shortfall, form.minimum(params))
    new = stages.close_step(state, draws, t, c, f, mk, (br.halted, halt_left, br.queue), params, static)
    new = derisk.record(new, b.closing)._replace(halt_weight=halt_weight)
    return form.finish(new, b, r, f, t, params)


def market_step(
    form: BookForm, state: SimState, draws: market.Draws, t, shock, flow, params: Params, static: Static
) -> SimState:
    """Stages 1-5 and the fund of one path in the form `form`; leaves `state.deficit` for ADL.
    Arguments as `before`."""
    b = before(form, state, draws, t, shock, flow, params, static)
    return after(form, draws, t, b, form.cascade(b.inputs, params, static), params, static)
