"""Result cubes: parts over `point` -> one dimension per sweep axis, values at the right
coordinates for any number of axes; CF 1.8 metadata checked by the IOOS compliance checker."""

import random
import re
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import xarray as xr
from compliance_checker.cf.cf_1_8 import CF1_8Check
from compliance_checker.suite import CheckSuite
from typer.testing import CliRunner

from engine import cli
from engine.config.sweep import build_study
from engine.runs import cube as C
from engine.sim.dataset import TIME_ATTRS
from tests.conftest import small_dict

SWEEPS = {
    "no axes": {},
    "one numeric axis": {"policy.leverage_cap": [20, 125]},
    "one string axis": {"policy.breaker.kind": ["halt", "none", "band"]},
    "two axes": {"policy.leverage_cap": [125, 50, 20], "policy.adl_rule": ["queue", "pro_rata"]},
    "three axes": {
        "policy.leverage_cap": [20, 125],
        "policy.adl_rule": ["pro_rata", "queue", "off"],
        "policy.breaker.kind": ["none", "halt"],
    },
    "a one-value axis": {"policy.leverage_cap": [20, 125], "scenario.shock": [-0.05]},
    "only a one-value axis": {"policy.breaker.kind": ["halt"]},
    "an integer axis": {"policy.leverage_cap": [125, 20], "policy.breaker.window": [4, 8]},
}
DIMS = {
    "policy.leverage_cap": "leverage_cap",
    "policy.adl_rule": "adl_rule",
    "policy.breaker.kind": "breaker_kind",
    "scenario.shock": "shock",
    "policy.breaker.window": "breaker_window",
}


def fake_result(n_points: int, first: int) -> xr.Dataset:
    """A `simulate`-like result of `n_points` points whose `value[point, asset]` encodes the
    grid index (`10 * index + asset`), with the `time` coordinate of a real result."""
    index = np.arange(first, first + n_points)
    return xr.Dataset(
        {
            "value": (("point", "asset"), 10.0 * index[:, None] + np.arange(2), {"units": "1"}),
            "count": (("point",), index.astype(np.int32), {"units": "1"}),
        },
        coords={
            "point": np.arange(n_points),
            "asset": ["BTC", "SOL"],
            "time": ("time", [30.0, 60.0], TIME_ATTRS),
        },
    )


@pytest.mark.parametrize("sweep", SWEEPS.values(), ids=SWEEPS.keys())
def test_every_point_lands_at_its_coordinates(sweep, tmp_path):
    study = build_study({**small_dict(), "sweep": {**sweep, "points_per_part": 2}})
    names = [DIMS[path] for path in sweep]
    files = []
    for k, points in enumerate(study.parts()):
        # `simulate` may return an extra point (the baseline) after the part's own
        ds = fake_result(len(points) + 1, points[0])
        files.append(tmp_path / f"part-{k}.nc")
        C.write_atomic(C.part_dataset(study, ds, points), files[-1])
    random.Random(0).shuffle(files)
    cube = C.assemble(study, [C.read(f) for f in files], {"history": "test"})

    assert cube["value"].dims == (*names, "asset")
    assert "point" not in cube.dims
    for axis, name in zip(study.axes, names):
        assert cube[name].values.tolist() == list(sweep[axis.path])  # config order
        assert cube[name].dtype.itemsize <= 4 or cube[name].dtype.kind != "i"  # CF 1.8: no int64
    for i, coords in enumerate(study.coords):
        cell = cube.sel(dict(zip(names, coords)))
        assert cell["value"].values.tolist() == [10.0 * i, 10.0 * i + 1], coords
        assert int(cell["count"]) == i
    assert cube["count"].dtype == np.int32
    assert cube.attrs["sweep_dims"] == " ".join(names)
    assert cube.attrs["baseline_point"] == study.baseline


def test_parts_of_another_sweep_are_refused():
    study = build_study({**small_dict(), "sweep": {"policy.leverage_cap": [20, 125]}})
    other = build_study({**small_dict(), "sweep": {"policy.leverage_cap": [20, 50]}})
    part = C.part_dataset(other, fake_result(2, 0), [0, 1])
    with pytest.raises(ValueError, match="leverage_cap are not the sweep's"):
        C.assemble(study, [part], {})


def invoke(*argv: str):
    return CliRunner().invoke(cli.app, [str(a) for a in argv])


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """SMALL with two hours of steps and a short fan chart, as a config file without a sweep."""
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(tomli_w.dumps(small_dict(run={"steps": 24, "fan_points": 4})))
    return path


def test_a_run_with_one_sweep_axis_writes_its_cube(tiny_config, tmp_path):
    d = tmp_path / "run"
    result = invoke(
        "run", tiny_config, "--paths", 256, "--set", "sweep.policy.leverage_cap=[20,125]",
        "--run-dir", d, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cube = C.read(d / "cube.nc")
    part = C.read(d / "parts" / "part-0000.nc")
    assert cube["liquidated_total"].dims == ("leverage_cap", "quantile")
    assert cube.leverage_cap.values.tolist() == [20.0, 125.0]
    for i, cap in enumerate([20.0, 125.0]):
        cell, point = cube.sel(leverage_cap=cap), part.sel(point=i)
        assert float(point.leverage_cap) == cap
        for name in ("liquidated_total", "mark_price_band", "bad_debt_diff_mean"):
            np.testing.assert_array_equal(cell[name].values, point[name].values)
    assert float(cube.liquidated_total_mean.sel(leverage_cap=125)) > float(
        cube.liquidated_total_mean.sel(leverage_cap=20)
    )


# --------------------------------------------------------------------------------------
# CF conventions
# --------------------------------------------------------------------------------------

USD_UNITS = r'units for \w+, "USD" are not recognized by UDUNITS'
# The checker's cost grows with the square of the number of variables (the whole cube's 114
# take about a minute): it checks one output of each kind with every other kind of variable.
CHECKED = ("liquidated_notional", "max_drawdown")


def cf_problems(ds: xr.Dataset, path: Path) -> tuple[list[str], dict]:
    """The CF 1.8 checker's messages for the failed checks of `ds` written as `path` (errors
    and warnings alike) and the checks that raised, by name."""
    keep = [v for v in ds.data_vars if any(o in v for o in CHECKED)]
    keep += ["p_bad_debt", "mark_price_band", "n_nonfinite"]
    # with the status flags that the kept variables name as `ancillary_variables`
    keep += sorted({a for v in keep for a in ds[v].attrs.get("ancillary_variables", "").split()} - set(keep))
    C.write_atomic(ds[keep], path)
    suite = CheckSuite()
    suite.checkers = {"cf:1.8": CF1_8Check}  # only this checker: the others are not needed
    results, raised = suite.run_all(suite.load_dataset(str(path)), ["cf:1.8"], skip_checks=[])["cf:1.8"]
    return [m for r in results if r.value[0] < r.value[1] for m in r.msgs], raised


@pytest.fixture(scope="module")
def swept_run(tiny_config, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cf") / "run"
    result = invoke(
        "run", tiny_config, "--paths", 256, "--set", "sweep.policy.leverage_cap=[125,20]",
        "--set", 'sweep.policy.breaker.kind=["none","halt"]', "--set", "sweep.policy.breaker.window=[4,8]",
        "--run-dir", d, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return d


@pytest.mark.parametrize("name", ["cube.nc", "parts/part-0000.nc"])
def test_cube_and_parts_follow_cf_1_8_but_for_the_usd_unit(swept_run, name, tmp_path):
    ds = C.read(swept_run / name)
    messages, raised = cf_problems(ds, tmp_path / "checked.nc")
    assert messages, "the checker reported nothing: it did not check the units"
    assert all(re.fullmatch(USD_UNITS, m) for m in messages), messages
    # this check cannot subtract string coordinates (asset, side, breaker_kind): its rule
    # is checked here for the numeric ones
    assert set(raised) <= {"check_coordinate_variables_strict_monotonicity"}
    for coord in ds.coords.values():
        if coord.dims == (coord.name,) and coord.dtype.kind in "if":
            steps = np.diff(coord.values)
            assert (steps > 0).all() or (steps < 0).all(), coord.name


def test_cube_metadata_reads_as_cf_and_as_minutes(swept_run):
    with xr.open_dataset(swept_run / "cube.nc") as raw:  # decoded as CF times by default
        assert raw.Conventions == "CF-1.8"
        assert raw.time.values[0] == np.datetime64("1970-01-01T00:30")
        assert raw.breaker_kind.attrs["sweep_path"] == "policy.breaker.kind"
        for name in ("leverage_cap", "quantile", "band_quantile", "time", "point"):
            if name in raw.variables:
                assert "_FillValue" not in raw[name].encoding, name
    cube = C.read(swept_run / "cube.nc")
    assert cube.time.values.tolist() == [30.0, 60.0, 90.0, 120.0]  # minutes since the start
    assert cube.time.attrs["units"] == "minutes since 1970-01-01 00:00:00"
    assert cube.time.attrs["standard_name"] == "time"
    assert cube.leverage_cap.values.tolist() == [125.0, 20.0]
    assert cube.n_nonfinite.dtype == np.float64 and float(cube.n_nonfinite.sum()) == 0.0
    assert cube.mark_price_band.dims[-1] == "time"
