"""Invariants on the per-path outputs of `engine.sim.rollout.rollout`: conservation of money and
monotonicity in the policy levers, on the same paths (common random numbers).

Per-path monotonicity is asserted where it follows from the model: with GARCH on, a policy
that changes early prices changes later volatility, and a path can then fall further under
the milder policy; and liquidated notional is valued at the fill price, so liquidating the
same positions at a higher price counts more. Those cases are checked on the mean instead.
Tolerances: `F32_RTOL` of tests/helpers.py for identities; comparisons allow the same slack.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from engine.config import build
from engine.config.schema import Config
from engine.sim.rollout import rollout
from tests.conftest import SMALL, small_dict
from tests.helpers import F32_RTOL, assert_close

N_PATHS, SEED = 256, 5
RUN = {"n_paths": N_PATHS, "seed": SEED, "steps": 24, "cascade_rounds": 6, "max_window": 16, "fan_points": 6}


def config(
    policy: dict | None = None,
    garch: bool = True,
    impact_y: float | None = None,
    scenario: dict | None = None,
    **market,
) -> Config:
    d = small_dict(
        run=RUN, policy={"insurance_fund_usd": 2e8, **(policy or {})}, scenario=scenario or SMALL["scenario"]
    )
    d["market"].update(market)
    if not garch:
        d["market"].update(garch_alpha=0.0, garch_beta=0.0)
    if impact_y is not None:
        for a in d["market"]["assets"].values():
            a["impact_y"] = impact_y
    return Config.model_validate(d)


def outputs(cfg: Config) -> dict[str, np.ndarray]:
    params, static = build.build(cfg)
    out = rollout(params, cfg.run.seed, 0, N_PATHS, static=static, n_paths=N_PATHS)[0]
    return {k: np.asarray(v, np.float64) for k, v in jax.device_get(out).items()}


def no_more_on_average(smaller: np.ndarray, larger: np.ndarray, what: str) -> None:
    """Paired over the same paths: mean(smaller - larger) <= 3 standard errors."""
    d = smaller - larger
    assert d.mean() <= 3 * d.std(ddof=1) / np.sqrt(d.size), f"{what}: {d.mean()} > 0"


def no_more(smaller: np.ndarray, larger: np.ndarray, what: str) -> None:
    """Per path: smaller <= larger, up to float32 rounding of the larger value."""
    slack = F32_RTOL * (np.abs(larger) + np.abs(larger).max())
    bad = np.flatnonzero(smaller > larger + slack)
    assert bad.size == 0, f"{what}: paths {bad[:5]} ({smaller[bad[:5]]} > {larger[bad[:5]]})"


@pytest.mark.parametrize(
    "policy",
    [
        {},
        {"breaker": {"kind": "halt", "threshold": 0.03, "window": 4, "duration": 3}},
        {"breaker": {"kind": "band", "band": 0.01}},
        {"partial_liquidation": 0.4},
        {"backstop_capacity_usd": 4e9},
        {"adl_rule": "pro_rata", "insurance_fund_usd": 1e7},
        {"adl_rule": "off", "insurance_fund_usd": 1e7},
        {"dynamic_margin": 2.0, "leverage_cap": 30.0, "leverage_cap_mode": "add_margin"},
    ],
    ids=["queue", "halt", "band", "partial", "backstop", "pro_rata", "adl_off", "dynmargin_cap"],
)
def test_money_is_conserved_on_every_path(policy):
    """trader loss = counterparty gain + fund inflow - shortfall, and
    shortfall = fund draw + ADL absorbed + bad debt, per path."""
    o = outputs(config(policy))
    scale = float(np.max(o["trader_loss"] + o["counterparty_gain"] + o["fund_inflow"] + o["shortfall"]))
    assert scale > 0 and np.any(o["shortfall"] > 0)
    assert_close(
        o["trader_loss"], o["counterparty_gain"] + o["fund_inflow"] - o["shortfall"], F32_RTOL, scale
    )
    assert_close(
        o["shortfall"], o["insurance_fund_draw"] + o["adl_absorbed"] + o["bad_debt"], F32_RTOL, scale
    )
    for name in (
        "trader_loss",
        "fund_inflow",
        "shortfall",
        "insurance_fund_draw",
        "adl_absorbed",
        "bad_debt",
    ):
        assert np.all(o[name] >= 0), name
    assert not np.any(o["nonfinite"])


def test_lower_leverage_cap_never_liquidates_more():
    caps = (125.0, 50.0, 20.0, 10.0, 5.0)
    # GARCH off: per path (the cap acts only through sizes and liquidation prices)
    runs = [outputs(config({"leverage_cap": c}, garch=False))["liquidated_total"] for c in caps]
    for c, hi, lo in zip(caps[1:], runs, runs[1:]):
        no_more(lo, hi, f"cap {c} (reduce_size, GARCH off)")
    assert runs[-1].mean() < 0.5 * runs[0].mean()
    # full model, both modes: on the mean over the same paths
    for mode in ("reduce_size", "add_margin"):
        runs = [
            outputs(config({"leverage_cap": c, "leverage_cap_mode": mode}))["liquidated_total"] for c in caps
        ]
        for c, hi, lo in zip(caps[1:], runs, runs[1:]):
            no_more_on_average(lo, hi, f"cap {c} ({mode})")
        assert runs[-1].mean() < 0.5 * runs[0].mean()


def test_more_insurance_fund_never_more_bad_debt():
    funds = (0.0, 1e8, 3e8, 1e9, 1e10)
    # ADL off: the fund is the only buffer and changes no position, so per path
    runs = [outputs(config({"insurance_fund_usd": f, "adl_rule": "off"})) for f in funds]
    for f, hi, lo in zip(funds[1:], runs, runs[1:]):
        no_more(lo["bad_debt"], hi["bad_debt"], f"fund {f:g}, ADL off")
        no_more(hi["insurance_fund_draw"], lo["insurance_fund_draw"], f"fund draw {f:g}")
    assert runs[0]["bad_debt"].mean() > 0 and runs[-2]["bad_debt"].mean() < runs[0]["bad_debt"].mean()
    # with ADL the fund also decides which positions survive: on the mean
    for rule in ("queue", "pro_rata"):
        runs = [outputs(config({"insurance_fund_usd": f, "adl_rule": rule})) for f in funds]
        for f, hi, lo in zip(funds[1:], runs, runs[1:]):
            no_more_on_average(
                lo["bad_debt"] + lo["adl_absorbed"],
                hi["bad_debt"] + hi["adl_absorbed"],
                f"fund {f:g}, {rule}: deficit beyond the fund",
            )


def test_impact_off_liquidates_less_than_impact_on():
    on, off = outputs(config()), outputs(config(impact_y=0.0))
    assert off["liquidated_total"].mean() < on["liquidated_total"].mean()
    assert off["max_drawdown"].mean() < on["max_drawdown"].mean()
    # without impact a liquidation moves nothing, so no step needs a second round
    assert off["cascade_rounds"].max() == 1 and on["cascade_rounds"].max() > 1


def test_liquidation_spiral_exists():
    """Nearly deterministic prices (the square-root law scales with volatility, so the linear
    law is used), a -3% shock: impact turns it into a cascade on every path."""
    quiet = {"garch": False, "tail_dof": 0.0, "jump_intensity_per_day": 0.0}
    shock = {"shock": -0.03, "shock_start": 6, "shock_steps": 1}

    def run(depth):
        d = small_dict(run=RUN)
        for a in d["market"]["assets"].values():
            a.update(vol_annual=0.01, jump_std=0.0, jump_mean=0.0, impact_law="linear", depth_usd=depth)
        return outputs(config(assets=d["market"]["assets"], scenario=shock, **quiet))

    on, off = run(40e9), run(1e30)
    assert np.all(off["liquidated_total"] > 0)
    assert np.all(on["liquidated_total"] > 1.2 * off["liquidated_total"])
    assert np.all(on["cascade_rounds"] >= 3) and np.all(off["cascade_rounds"] == 1)
    assert np.all(on["max_drawdown"].max(-1) > off["max_drawdown"].max(-1) + 0.01)
