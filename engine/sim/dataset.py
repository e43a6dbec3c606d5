"""The simulation result as an xarray Dataset over `point`: every output's quantiles, moments,
paired differences and status flags, with CF metadata (units, long names, flags, time)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from engine.config.forms import FORMS
from engine.config.schema import Config
from engine.model import params as P
from engine.model.outputs import DIAGNOSTICS, OUTPUTS
from engine.sim.reduce import BAND_QUANTILES, MIN_ES_TAIL_PATHS, QUANTILES
from engine.sim.tipping import NUDGE_ULPS, TIPPING_RTOL

# Configs carry no calendar date, so every scenario starts at this documented reference time
# (CF needs "minutes since <time>"); `engine.runs.cube.read` keeps the values as minutes.
SCENARIO_START = "1970-01-01 00:00:00"
TIME_ATTRS = {
    "standard_name": "time",
    "axis": "T",
    "units": f"minutes since {SCENARIO_START}",
    "calendar": "standard",
    "long_name": f"time since the scenario start, which is set at {SCENARIO_START} UTC",
}


def _flags(meanings: str, long_name: str, comment: str) -> dict:
    """CF attributes of an int8 status variable whose values are 0, 1, ... in `meanings`' order."""
    values = np.arange(len(meanings.split()), dtype=np.int8)
    return {
        "units": "1",
        "long_name": long_name,
        "flag_values": values,
        "flag_meanings": meanings,
        "comment": comment,
    }


FEW_PATHS = "estimated too_few_paths"
FEW_PATHS_RULE = (
    "a q-quantile needs n_paths * min(q, 1 - q) >= 1 paths beyond it, ES99 needs n_paths * 0.01 >= "
    f"{MIN_ES_TAIL_PATHS} tail paths; a value flagged too_few_paths describes the paths run, not the distribution"
)
KERNEL_FORMS = " ".join(f.replace(" ", "_") for f in FORMS)
KERNEL_FORMS_RULE = "chosen per point by engine.config.forms.specialise; the run plan said which and why"
CLIPPED = "in_range clipped"
CLIPPED_RULE = (
    "clipped: the band reads an end bin of the fan-chart histogram (the value may lie beyond it) and is NaN"
)


def _status_variables(results: list[dict]) -> dict:
    """Whether each quantile, ES99 and fan-chart band value is an estimate (int8 CF flags)."""
    stack = lambda key: np.stack([r[key] for r in results])
    bands = ("point", "time", "asset", "band_quantile")
    return {
        "quantile_status": (
            ("point", "quantile"),
            stack("quantile_status"),
            _flags(FEW_PATHS, "estimability of the quantiles", FEW_PATHS_RULE),
        ),
        "band_quantile_status": (
            ("point", "band_quantile"),
            stack("band_quantile_status"),
            _flags(FEW_PATHS, "estimability of the fan-chart band quantiles", FEW_PATHS_RULE),
        ),
        "es99_status": (
            ("point",),
            stack("es99_status"),
            _flags(FEW_PATHS, "estimability of the expected shortfalls at 99%", FEW_PATHS_RULE),
        ),
        "mark_price_band_status": (
            bands,
            stack("mark_price_band_status"),
            _flags(CLIPPED, "status of the mark price bands", CLIPPED_RULE),
        ),
        "cum_liquidations_band_status": (
            bands,
            stack("cum_liquidations_band_status"),
            _flags(CLIPPED, "status of the cumulative liquidation bands", CLIPPED_RULE),
        ),
    }


def _output_variables(results: list[dict]) -> dict:
    """The statistics of every output of `OUTPUTS` over `point`: quantiles, mean, Monte Carlo
    error, paired difference to the baseline, probability of a positive value, and for losses
    ES99 (the output's units, or 1 for probabilities)."""
    stack = lambda key: np.stack([r[key] for r in results])
    data = {}
    for o in OUTPUTS:
        d = o.dims
        attrs = {"units": o.units, "long_name": o.long_name}
        data[o.name] = (
            ("point", "quantile") + d,
            stack(o.name),
            {**attrs, "long_name": f"quantiles of {o.long_name}"},
        )
        data[f"{o.name}_mean"] = (
            ("point",) + d,
            stack(f"{o.name}_mean"),
            {**attrs, "long_name": f"mean of {o.long_name}"},
        )
        data[f"{o.name}_mc_se"] = (
            ("point",) + d,
            stack(f"{o.name}_mc_se"),
            {**attrs, "long_name": f"Monte Carlo standard error of the mean of {o.long_name}"},
        )
        data[f"{o.name}_diff_mean"] = (
            ("point",) + d,
            stack(f"{o.name}_diff_mean"),
            {**attrs, "long_name": f"mean paired difference to the baseline point of {o.long_name}"},
        )
        data[f"{o.name}_diff_se"] = (
            ("point",) + d,
            stack(f"{o.name}_diff_se"),
            {**attrs, "long_name": f"standard error of the paired difference of {o.long_name}"},
        )
        data[f"p_{o.name}_positive"] = (
            ("point",) + d,
            stack(f"p_{o.name}_positive"),
            {"units": "1", "long_name": f"probability that {o.long_name} is positive"},
        )
        if o.loss:
            data[f"es99_{o.name}"] = (
                ("point",) + d,
                stack(f"es99_{o.name}"),
                {**attrs, "long_name": f"expected shortfall at 99% of {o.long_name}"},
            )
    return data


def _run_variables(results: list[dict]) -> dict:
    """Per-point variables beside the outputs' statistics: P(bad debt), the fan-chart bands
    `[point, time, asset, band_quantile]` (USD), the tipping share if measured, path counts."""
    data = {}
    data["p_bad_debt"] = (
        ("point",),
        np.stack([r["p_bad_debt_positive"] for r in results]),
        {"units": "1", "long_name": "probability of bad debt > 0"},
    )
    data["mark_price_band"] = (
        ("point", "time", "asset", "band_quantile"),
        np.stack([r["mark_price_band"] for r in results]),
        {"units": "USD", "long_name": "quantiles of the mark price over time"},
    )
    data["cum_liquidations_band"] = (
        ("point", "time", "asset", "band_quantile"),
        np.stack([r["cum_liquidations_band"] for r in results]),
        {"units": "USD", "long_name": "quantiles of cumulative liquidated notional over time"},
    )
    if "tipping_share" in results[0]:
        data["tipping_share"] = (
            ("point",),
            np.stack([r["tipping_share"] for r in results]),
            {
                "units": "1",
                "long_name": f"share of sampled paths whose liquidated total moves by more than {TIPPING_RTOL:.1%} when every random draw moves by {NUDGE_ULPS:.0f} ulps (engine.sim.tipping)",
            },
        )
        data["tipping_sampled"] = (
            ("point",),
            np.stack([r["tipping_sampled"] for r in results]),
            {"units": "1", "long_name": "paths rerun for tipping_share"},
        )
    # path counts in float64: CF 1.8 has no 64-bit integers, and up to 1e10 paths overflow int32
    data["n_nonfinite"] = (
        ("point",),
        np.stack([r["n_nonfinite"] for r in results]).astype(np.float64),
        {"units": "1", "long_name": "paths with non-finite values"},
    )
    data["n_dense_fallback"] = (
        ("point",),
        np.stack([r["n_dense_fallback"] for r in results]),
        {
            "units": "1",
            "long_name": "paths the ladder kernel handed to the dense kernel (engine/sim/fallback.py)",
        },
    )
    for name, long_name in DIAGNOSTICS.items():
        data[name] = (
            ("point",),
            np.stack([r[name] for r in results]).astype(np.float64),
            {"units": "1", "long_name": long_name},
        )
    return data


def to_dataset(
    cfg: Config, results: list[dict], static: P.Static, kernel_forms: list[str] | None = None
) -> xr.Dataset:
    """Stack per-point results into a Dataset with units and long names; `kernel_forms`: the
    form each point ran in (`engine.config.forms.FORMS`), as the int8 flags `kernel_form`."""
    assets = cfg.asset_names
    data = _output_variables(results) | _run_variables(results)
    data.update(_status_variables(results))
    if kernel_forms is not None:
        data["kernel_form"] = (
            ("point",),
            np.array([FORMS.index(f) for f in kernel_forms], np.int8),
            _flags(KERNEL_FORMS, "kernel form the point ran in", KERNEL_FORMS_RULE),
        )
    for o in OUTPUTS:
        data[o.name][2]["ancillary_variables"] = "quantile_status"
        if o.loss:
            data[f"es99_{o.name}"][2]["ancillary_variables"] = "es99_status"
    for band in ("mark_price_band", "cum_liquidations_band"):
        data[band][2]["ancillary_variables"] = f"{band}_status"
    steps_at = np.minimum((np.arange(static.fan_points) + 1) * static.fan_stride, static.steps)
    coords = {
        "point": np.arange(len(results), dtype=np.int32),
        "asset": assets,
        "side": ["long", "short"],
        "leverage": list(P.LEVERAGE_BUCKETS),
        "margin_mode": list(P.MARGIN_MODES),
        "quantile": list(QUANTILES),
        "band_quantile": list(BAND_QUANTILES),
        "time": ("time", steps_at * cfg.run.dt_minutes, TIME_ATTRS),
    }
    # CF orders a variable's dimensions as (others..., T): time is the last one
    ds = xr.Dataset(data, coords=coords).transpose(..., "time")
    ds.attrs.update(
        {
            "n_paths": cfg.run.n_paths,
            "seed": cfg.run.seed,
            "steps": cfg.run.steps,
            "dt_minutes": cfg.run.dt_minutes,
        }
    )
    return ds
