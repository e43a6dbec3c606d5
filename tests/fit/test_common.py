"""What calibration and optimisation share: the bounded transform, the relaxed Static, the
optax search, and x64 kept to the calls of a float64 fit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from engine.config import build
from engine.config.schema import Config
from engine.fit.calibrate import fit
from engine.fit.common import descend, relaxed_static, to_unconstrained, to_values
from tests.conftest import small_dict
from tests.fit.test_calibrate import calm_scenario, problem_config
from tests.helpers import F32_RTOL, SEARCH_RTOL, assert_close


def quadratic(u, scale):
    """`((loss, aux), grad)` of scale * sum((u - 3)^2); aux is the loss too."""
    loss = lambda u: (scale * jnp.sum((u - 3.0) ** 2),) * 2
    return jax.value_and_grad(loss, has_aux=True)(u)


def test_bounded_transform_round_trips_inside_the_bounds():
    lower, upper = np.array([-0.2, 0.05]), np.array([-0.01, 2.0])
    v = np.array([-0.07, 0.4])
    u = to_unconstrained(v, lower, upper)
    assert_close(to_values(jnp.asarray(u), lower, upper), v, rtol=F32_RTOL)
    assert_close(to_values(jnp.asarray([-50.0, 50.0]), lower, upper), [lower[0], upper[1]], rtol=F32_RTOL)


def test_relaxed_static_changes_only_the_form():
    _, static = build.build(Config.model_validate(small_dict()))
    relaxed = relaxed_static(static)
    assert relaxed.relaxed and not static.relaxed
    assert {**relaxed.__dict__, "relaxed": False} == static.__dict__


def test_descend_finds_the_minimum_and_keeps_the_best_iterate():
    seen = []
    d = descend(
        quadratic,
        jnp.zeros(2, jnp.float32),
        iterations=200,
        learning_rate=0.1,
        clip_norm=1.0,
        args=lambda i: (1.0,),
        on_step=lambda i, u, loss, aux: seen.append(i),
        score_end=True,
    )
    assert seen == list(range(200)) and len(d.losses) == 200 and d.stopped is None
    assert_close(d.best_u, [3.0, 3.0], rtol=SEARCH_RTOL)
    assert d.best_loss <= min(d.losses) and d.best_loss == float(d.best_aux)


def test_descend_stops_at_a_non_finite_gradient():
    d = descend(
        quadratic,
        jnp.zeros(2, jnp.float32),
        iterations=50,
        learning_rate=0.1,
        clip_norm=1.0,
        args=lambda i: (jnp.nan if i == 2 else 1.0,),
    )
    assert d.stopped == 2 and len(d.losses) == 3 and np.isnan(d.losses[2])
    assert d.best_loss == d.losses[1]  # a NaN loss is never the best


def test_a_float64_fit_runs_in_float64_and_leaves_jax_in_its_default_precision():
    assert not jax.config.jax_enable_x64
    result = fit(problem_config(calm_scenario(dtype="float64", n_paths=16), iterations=2), seed=0)
    assert result.values.dtype == np.float64 and result.statistics.dtype == np.float64
    assert not jax.config.jax_enable_x64
