"""The kernels lower for CUDA GPUs, checked on a machine without one.

`jax.export` lowers a function for a platform that is not present (cross-platform lowering).
It fails for an operation without a lowering for that platform, and for custom calls (library
routines such as cuSOLVER's, host callbacks) that are not on its list of stable targets
(`test_the_check_rejects_library_calls_and_callbacks`). Each kernel form that
`engine.simulate` can pick, the sharded rollout's three calls and the calibration gradient
must lower for `cuda` with neither: plain XLA operations that every backend compiles. This is
not a run on a GPU (nothing here compiles for one or checks numbers there); it catches code
that could not run there, or would depend on a library, before anyone rents a GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import export

from engine.config import build, forms
from engine.config.schema import Config
from engine.fit.common import differentiable_outputs
from engine.model import params as P
from engine.sim import devices
from engine.sim.rollout import rollout_chunk, sharded_advance, sharded_begin, sharded_finish
from tests.conftest import small_dict

FORMS = {
    "whole, loop-free chi-square": {},
    "general (partial liquidation)": {"policy": {"insurance_fund_usd": 2e8, "partial_liquidation": 0.5}},
    "gamma chi-square, dynamic margin": {
        "market": {**small_dict()["market"], "tail_dof": 4.5},
        "policy": {"insurance_fund_usd": 2e8, "dynamic_margin": 2.0},
    },
    # the ladder kernel (engine.model.ladder_kernel; its fallback is the dense forms above)
    "ladder": {"run": {**small_dict()["run"], "kernel": "ladder"}},
    "ladder with stop orders": {
        "run": {**small_dict()["run"], "kernel": "ladder"},
        "book": {
            **small_dict()["book"],
            "stops": [
                {"asset": "BTC", "side": "long", "price": 95_000.0, "notional_usd": 2e8},
                {"asset": "SOL", "side": "short", "price": 210.0, "notional_usd": 5e7},
            ],
        },
    },
}


def built(**sections):
    cfg = Config.model_validate(small_dict(**sections))
    params, static = build.build(cfg)
    return params, forms.specialise(static, [cfg])


def assert_runs_on_cuda(exported: export.Exported) -> None:
    assert exported.platforms == ("cuda",)
    assert "stablehlo" in exported.mlir_module()


def test_the_check_rejects_library_calls_and_callbacks():
    eig = jax.jit(lambda x: jnp.linalg.eig(x)[0].real)  # a solver library's custom call
    with pytest.raises(ValueError, match="custom calls"):
        export.export(eig, platforms=["cuda"])(jnp.eye(3))
    host = jax.ShapeDtypeStruct((3,), jnp.float32)
    callback = jax.jit(lambda x: jax.pure_callback(lambda y: y, host, x))
    with pytest.raises(ValueError):
        export.export(callback, platforms=["cuda"])(jnp.ones(3))


@pytest.mark.parametrize("form", FORMS)
def test_rollout_lowers_for_cuda(form):
    params, static = built(**FORMS[form])
    exported = export.export(rollout_chunk, platforms=["cuda"])(params, 1, 0, 64, static=static, n_paths=64)
    assert_runs_on_cuda(exported)


def test_float64_rollout_lowers_for_cuda():
    with jax.enable_x64(True):
        params, static = built(run={**small_dict()["run"], "dtype": "float64"})
        assert params.market.price0.dtype == jnp.float64
        exported = export.export(rollout_chunk, platforms=["cuda"])(
            params, 1, 0, 64, static=static, n_paths=64
        )
    assert_runs_on_cuda(exported)


def test_sharded_rollout_lowers_for_cuda():
    params, static = built()
    mesh = devices.path_mesh()
    n = 64 * mesh.size
    assert_runs_on_cuda(
        export.export(sharded_begin, platforms=["cuda"])(params, static=static, n_paths=n, mesh=mesh)
    )
    carry = jax.eval_shape(lambda: sharded_begin(params, static=static, n_paths=n, mesh=mesh))
    advance = export.export(sharded_advance, platforms=["cuda"])(
        carry, params, 1, 0, n, 0, static=static, n_paths=n, n_steps=static.steps, mesh=mesh
    )
    assert_runs_on_cuda(advance)
    assert_runs_on_cuda(
        export.export(sharded_finish, platforms=["cuda"])(carry, params, static=static, mesh=mesh)
    )


def test_calibration_gradient_lowers_for_cuda():
    params, static = build.build(Config.model_validate(small_dict()))  # not specialised, as calibration
    relaxed = P.Static(**{**static.__dict__, "relaxed": True})

    def loss(fund, temperature):
        p = params._replace(policy=params.policy._replace(insurance_fund=fund), temperature=temperature)
        return jnp.mean(differentiable_outputs(p, relaxed, 1, 32)["insurance_fund_draw"])

    grad = jax.jit(jax.grad(loss))
    assert_runs_on_cuda(
        export.export(grad, platforms=["cuda"])(params.policy.insurance_fund, jnp.float32(0.01))
    )
