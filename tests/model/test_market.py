"""Random numbers of `engine.model.market.draw`: both chi-square samplers have the chi-square law.

The loop-free form (`Static.dof_max`) sums exponentials and a squared normal; it must give
chi2(nu) for every integer nu up to `dof_max`, with the unused terms masked. Checked by a
Kolmogorov-Smirnov test against scipy's chi-square CDF (200,000 draws: a real error of the
law, e.g. one term too many or too few, moves the CDF by far more than the test's 1e-3
level allows) and by the first two moments within 5 standard errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from engine.config import build, forms
from engine.config.schema import Config
from engine.model import market
from tests.conftest import small_dict

N = 200_000


def chi2_draws(dof: float, dof_max: int) -> np.ndarray:
    keys = jax.random.split(jax.random.key(7), N)
    draw = jax.jit(jax.vmap(lambda k: market.draw(k, 1, jnp.asarray(dof), jnp.float32, dof_max).chi2))
    return np.asarray(draw(keys), np.float64)


@pytest.mark.parametrize(("dof", "dof_max"), [(3.0, 5), (4.0, 5), (5.0, 5), (4.0, 0), (2.5, 0)])
def test_chi_square_law(dof, dof_max):
    x = chi2_draws(dof, dof_max)
    assert stats.kstest(x, stats.chi2(dof).cdf).pvalue > 1e-3
    se_mean, se_var = np.sqrt(2 * dof / N), np.sqrt((8 * dof**2 + 48 * dof) / N)  # chi2 moments
    assert abs(x.mean() - dof) < 5 * se_mean
    assert abs(x.var() - 2 * dof) < 5 * se_var


def test_specialise_picks_the_loop_free_draw_only_for_integer_dof():
    def point(dof, partial=1.0):
        return Config.model_validate(
            small_dict(market={"tail_dof": dof}, policy={"partial_liquidation": partial})
        )

    static = build.static_of(point(4.0))
    assert forms.specialise(static, [point(4.0), point(3.0)]).dof_max == 4
    assert forms.specialise(static, [point(4.0), point(3.5)]).dof_max == 0
    assert forms.specialise(static, [point(0.0)]).dof_max == 1  # Gaussian: the chi-square is unused
    assert forms.specialise(static, [point(40.0)]).dof_max == 0  # beyond LOOP_FREE_DOF
    assert forms.specialise(static, [point(4.0)]).whole_only
    assert not forms.specialise(static, [point(4.0), point(4.0, partial=0.5)]).whole_only
