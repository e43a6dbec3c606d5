"""The relaxed, differentiable kernel: the exact stages with their steps smoothed over a
`temperature` (`Params.temperature`), for gradients (`engine.fit`).

- liquidation: the share of a cohort's size after the leverage cap that is gone is a ramp of
  width `temperature` (log price) in how far the mark crossed its liquidation price; only the
  part beyond what is already gone is liquidated, so nothing bleeds away while the mark stands
  still (full liquidation only);
- halt breaker: a halt has a strength in [0, 1] that ramps over the same width past the
  threshold; the mark, the flow and the liquidations are the mix of a halted and an open market;
- voluntary closing (`engine.model.derisk`): as in the exact kernel, at the open share; it is
  smooth in its rates (fitted by gradient) and scales `quantity0` too, so that the ramp measures
  the share of what holders still hold;
- fund and ADL: their minimums are soft (`soft_minimum`), never above the exact ones. Which
  positions ADL closes, and the split of a liquidation's equity into fund inflow and shortfall
  (max(E, 0)), stay exact: a softplus there gave NaN gradients under XLA's compiled code in
  tests at low temperature.

Everything converges to the exact kernel as the temperature goes to zero. The cascade runs its
rounds without early exit, which reverse-mode differentiation needs.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax.numpy as jnp

from engine.model import derisk, policies, skeleton, stages
from engine.model.cascade import CascadeInputs, Shares, run_cascade
from engine.model.params import MarketParams, Params, PolicyParams, Static
from engine.model.stages import SimState

# Smallest width (USD) of the soft minimum: negligible, and keeps a / width finite when both
# arguments are zero.
WIDTH_FLOOR = 1e-6


def soft_minimum(a, b, temperature):
    """-t * log(exp(-a/t) + exp(-b/t)) with t = temperature * (|a| + |b|) / 2: min(a, b) with
    the kink rounded over a width proportional to the arguments (USD); never above the min."""
    width = temperature * 0.5 * (jnp.abs(a) + jnp.abs(b)) + WIDTH_FLOOR
    return -width * jnp.logaddexp(-a / width, -b / width)


def liquidation_shares(
    s, q, b, p_r, p_liq, active, mp: MarketParams, pol: PolicyParams, *, temperature, quantity0
) -> Shares:
    """`engine.model.cascade.exact_shares` relaxed: the ramp of the module docstring.

    active: `[assets]` open share in [0, 1]; quantity0: `[assets, cohorts]` after the cap.
    """
    crossed = -s * jnp.log(p_r / jnp.maximum(p_liq, 1e-9 * p_r))
    gone = jnp.clip(crossed / temperature + 0.5, 0.0, 1.0) * active[:, None]
    remaining = q / jnp.where(quantity0 > 0, quantity0, 1.0)
    w_full = jnp.where(q > 0, jnp.clip(1.0 - (1.0 - gone) / jnp.where(q > 0, remaining, 1.0), 0.0, 1.0), 0.0)
    return Shares(w_full, jnp.zeros_like(q), jnp.ones((), q.dtype), w_full * q)


def init_state(params: Params, static: Static) -> SimState:
    """The exact t0 state with no halt and the cohorts' sizes after the cap kept (computed once)."""
    state = stages.init_state(params, static)
    return state._replace(halt_weight=jnp.zeros_like(state.x_mark), quantity0=state.quantity)


def _limits(state: SimState, m: stages.Move, flow, params: Params) -> skeleton.Breaker:
    """The relaxed breaker (stage 2): a halt of strength w (`SimState.halt_weight`) mixes a halted
    (weight w) and an open market, in the limits, the flow into the book and the queue."""
    w = jnp.where(m.halted, state.halt_weight, 0.0)
    lo_open, hi_open = policies.mark_limits(state.x_mark, m.x_ref, jnp.zeros_like(m.halted), params.policy)
    lo, hi = w * state.x_mark + (1 - w) * lo_open, w * state.x_mark + (1 - w) * hi_open
    flow0, queue = (1 - w) * (flow + state.queue), w * (state.queue + flow)
    return skeleton.Breaker(lo, hi, flow0, queue, 1.0 - w, w)


def _halt(
    state: SimState, m: stages.Move, mk: stages.Mark, params: Params
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The relaxed breaker after the impact (stage 4): halt steps left `[assets]` (int) and the new
    halt strength `[assets]`, a ramp of width `temperature` past the threshold (0 or 1 as the
    temperature goes to 0)."""
    pol = params.policy
    beyond = jnp.abs(mk.target - m.x_ref) - pol.halt_threshold
    strength = jnp.where(m.halted, 0.0, jnp.clip(beyond / params.temperature + 0.5, 0.0, 1.0))
    triggered = strength > 0
    return stages.count_halt(state, triggered, params), jnp.where(triggered, strength, state.halt_weight)


def _minimum(params: Params):
    """The soft minimum (`soft_minimum`) at the parameters' temperature."""
    return partial(soft_minimum, temperature=params.temperature)


class Inputs(NamedTuple):
    """The relaxed cascade's inputs of one path: the exact one's and the cohorts' sizes
    `[assets, cohorts]` after the cap and the step's voluntary closing (`SimState.quantity0`)."""

    cascade: CascadeInputs
    quantity0: jnp.ndarray


def _inputs(state: SimState, m: stages.Move, br: skeleton.Breaker, params: Params, static: Static) -> Inputs:
    """`engine.model.skeleton.BookForm.inputs` of the relaxed book."""
    return Inputs(stages.cascade_inputs(state, m, br.flow0, br.lo, br.hi, br.open_), state.quantity0)


def _cascade(inp: Inputs, params: Params, static: Static) -> skeleton.Outcome:
    """The relaxed cascade: the ramp's shares (`liquidation_shares`), no early exit."""
    shares = partial(liquidation_shares, temperature=params.temperature, quantity0=inp.quantity0)
    return skeleton.Outcome(run_cascade(inp.cascade, params, static.rounds, early_exit=False, shares=shares))


def adl_step(state: SimState, t, params: Params) -> SimState:
    """`engine.model.kernel.adl_step` with the soft minimum (t unused)."""
    return stages.deleverage(state, params, _minimum(params))


# The relaxed book: the dense cohorts with the soft breaker and fund (a halt of strength w mixes
# a halted (weight w) and an open market; w is 0 or 1 as the temperature goes to 0).
RELAXED = skeleton.BookForm(
    "relaxed",
    init_state,
    derisk.start,
    _inputs,
    _cascade,
    adl=adl_step,
    limits=_limits,
    halt=_halt,
    minimum=_minimum,
)
