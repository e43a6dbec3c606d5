"""The kernel's two forms: the exact one knows nothing of temperatures, the relaxed one is picked
once from `Static.relaxed` and keeps its t0 sizes instead of recomputing the leverage cap."""

from __future__ import annotations

import dataclasses
import inspect

import jax.numpy as jnp
import numpy as np

from engine.config import build
from engine.config.schema import Config
from engine.model import cascade, kernel, policies, relaxed, waterfall
from tests.conftest import small_dict
from tests.helpers import F32_RTOL, assert_close


def test_exact_stages_take_no_temperature():
    for fn in (
        cascade.run_cascade,
        cascade.run_cascade_whole,
        waterfall.pay_from_fund,
        waterfall.auto_deleverage,
    ):
        assert "temperature" not in inspect.signature(fn).parameters, fn.__name__


def test_form_is_chosen_by_static():
    params, static = build.build(Config.model_validate(small_dict()))
    assert kernel.form(static) is kernel.DENSE
    assert kernel.form(dataclasses.replace(static, relaxed=True)) is relaxed.RELAXED
    exact = kernel.init_state(params, static)
    assert exact.halt_weight is None and exact.quantity0 is None
    soft = kernel.init_state(params, dataclasses.replace(static, relaxed=True))
    np.testing.assert_array_equal(soft.quantity0, policies.cap_leverage(params.book, params.policy)[0])
    np.testing.assert_array_equal(soft.halt_weight, np.zeros(static.n_assets))


def test_soft_minimum_stays_below_the_minimum_and_converges():
    a, b = jnp.array([1.0, 5.0, 0.0, 3.0]), jnp.array([2.0, 5.0, 0.0, -1.0])
    exact = jnp.minimum(a, b)
    assert bool(jnp.all(relaxed.soft_minimum(a, b, 0.1) <= exact))
    assert_close(relaxed.soft_minimum(a, b, 1e-7), exact, F32_RTOL)
