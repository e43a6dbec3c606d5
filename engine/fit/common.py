"""What calibration and policy optimisation share: loading their config files, the bounded
transform of free values, the relaxed (differentiable) simulation and the optax search.

Free values live in bounded intervals through a sigmoid transform,
`value = lower + (upper - lower) * sigmoid(u)`, and the unconstrained `u` is searched with
Adam (gradient clipping, cosine-decayed learning rate) by `descend`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from pydantic import BaseModel, ValidationError

from engine.config import book_checks
from engine.config.errors import ConfigError, describe
from engine.config.files import merge_tables, read_config_dict, read_toml, resolve_config_path
from engine.config.forms import relaxable
from engine.config.schema import Config
from engine.model import params as P
from engine.model.kernel import init_state, path_keys, step, step_draws
from engine.model.outputs import extract
from engine.sim.simulate import precision

# The floor of the cosine-decayed learning rate, as a fraction of its start.
FINAL_LEARNING_RATE = 0.05

Model = TypeVar("Model", bound=BaseModel)


def resolve_scenario(data: dict, p: Path) -> dict:
    """`data` with its `scenario` read in: the path of a scenario file (relative to `p`), or
    a table whose optional `base` names one and whose other keys override it."""
    scen = data.get("scenario")
    if isinstance(scen, str):
        scen = {"base": scen}
    if isinstance(scen, dict) and isinstance(scen.get("base"), str):
        rest = {k: v for k, v in scen.items() if k != "base"}
        base = read_config_dict(resolve_config_path(scen["base"], relative_to=p.parent))
        base.pop("sweep", None)
        data = {**data, "scenario": merge_tables(base, rest)}
    return data


def load_fit_config(path: str | Path, model: type[Model]) -> tuple[Model, Path]:
    """A validated `model` from a config file (by path or shipped name) whose `scenario` is
    read in by `resolve_scenario`, and the file's path; ConfigError naming the fields if not,
    or if the relaxed kernel cannot run the scenario's book (`relaxable`) or too much of it starts
    beyond its liquidation price (`engine.config.book_checks`)."""
    p = resolve_config_path(path)
    data = resolve_scenario(read_toml(p), p)
    try:
        loaded = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{p}:\n{describe(err)}") from None
    try:  # every fit runs the relaxed kernel: a book it cannot take is refused at load (and dry run)
        relaxable(loaded.scenario)
    except ConfigError as err:
        raise ConfigError(f"{p}: scenario.{err}") from None
    book_checks.book_warnings(loaded.scenario)  # a book refused by `validate` is refused here too
    return loaded, p


def sized(scenario: Config, n_paths: int, steps: int | None) -> Config:
    """The scenario with `n_paths` paths and, if given, `steps` steps (validated again), or a
    ConfigError if the relaxed kernel cannot run it (`relaxable`)."""
    run = scenario.run.model_copy(update={"n_paths": n_paths, **({"steps": steps} if steps else {})})
    return relaxable(Config.model_validate(scenario.model_copy(update={"run": run}).model_dump()))


def relaxed_static(static: P.Static) -> P.Static:
    """The static settings of the relaxed kernel (see `engine.model.cascade`)."""
    return dataclasses.replace(static, relaxed=True)


def in_precision(dtype: str, fn: Callable) -> Callable:
    """`fn` called within `precision(dtype)`, so that it traces and runs at the run's dtype."""

    def call(*args, **kwargs):
        with precision(dtype):
            return fn(*args, **kwargs)

    return call


def to_values(u, lower, upper):
    """Bounded values from unconstrained ones (sigmoid transform)."""
    return lower + (upper - lower) * jax.nn.sigmoid(u)


def to_unconstrained(v, lower, upper):
    """Inverse of `to_values` (NumPy)."""
    x = (np.asarray(v, float) - lower) / (upper - lower)
    return np.log(x / (1.0 - x))


def differentiable_outputs(params: P.Params, static: P.Static, seed, n_paths: int) -> dict:
    """Per-path outputs `{name: [paths, ...]}` of the relaxed kernel; reverse-mode safe.

    A plain `lax.scan` over steps with the full step `vmap`ped over paths, rematerialised per
    step so the backward pass stores only the carried state of each step.
    """
    keys = path_keys(seed, 0, n_paths)
    one = init_state(params, static)
    states = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n_paths,) + x.shape), one)
    advance = jax.vmap(step, in_axes=(0, 0, None, None, None, None, None))

    @jax.checkpoint
    def body(states, xs):
        t, shock, flow = xs
        return advance(states, step_draws(keys, t, params, static), t, shock, flow, params, static), None

    ts = jnp.arange(static.steps, dtype=jnp.int32)
    states, _ = jax.lax.scan(body, states, (ts, params.schedule.shock, params.schedule.flow))
    return jax.vmap(extract, in_axes=(0, None, None))(states, params, static)


@dataclass
class Descent:
    """Where a search went: `u` where it ended, `losses` per iteration, and the iterate with
    the lowest loss seen (`best_u`, `best_loss` and the objective's auxiliary output there).
    `stopped` is the iteration whose gradient was not finite, or None."""

    u: jax.Array
    losses: list[float]
    best_u: jax.Array
    best_loss: float
    best_aux: Any
    stopped: int | None


def descend(
    value_and_grad: Callable,
    u: jax.Array,
    *,
    iterations: int,
    learning_rate: float,
    clip_norm: float,
    args: Callable[[int], tuple] = lambda i: (),
    on_step: Callable[[int, jax.Array, float, Any], None] | None = None,
    score_end: bool = False,
) -> Descent:
    """Minimise over `u` with Adam, gradients clipped to global norm `clip_norm`, learning
    rate cosine-decayed from `learning_rate` to FINAL_LEARNING_RATE of it over `iterations`.

    `value_and_grad(u, *args(i)) -> ((loss, aux), grad)` at iteration i; `on_step(i, u, loss,
    aux)` sees every evaluated iterate. The search stops early at a non-finite gradient. With
    `score_end` the point after the last update is evaluated too, so it can be the best.
    """
    schedule = optax.cosine_decay_schedule(learning_rate, iterations, alpha=FINAL_LEARNING_RATE)
    opt = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(schedule))
    state = opt.init(u)
    losses, best, stopped = [], (math.inf, u, None), None
    for i in range(iterations):
        (loss, aux), g = value_and_grad(u, *args(i))
        loss = float(loss)
        losses.append(loss)
        if loss < best[0]:
            best = (loss, u, aux)
        if on_step:
            on_step(i, u, loss, aux)
        if not np.all(np.isfinite(np.asarray(g))):
            stopped = i
            break
        updates, state = opt.update(g, state, u)
        u = optax.apply_updates(u, updates)
    if score_end:
        (loss, aux), _ = value_and_grad(u, *args(iterations))
        if float(loss) < best[0]:
            best = (float(loss), u, aux)
    return Descent(u=u, losses=losses, best_u=best[1], best_loss=best[0], best_aux=best[2], stopped=stopped)
