"""Result cubes: per-part Datasets over `point`, and the combined cube over the sweep axes.

A part is what one `engine.simulate` call returns for a block of grid points, with `point`
holding the global grid index and one coordinate per sweep axis along `point`. The cube
concatenates the parts, unstacks `point` into one dimension per axis (in the config's value
order; netCDF cannot store the MultiIndex, so the cube is stored unstacked) and carries CF 1.8
metadata: `units` and `long_name` on every variable and coordinate, no `_FillValue` on
coordinates, and global `Conventions`, `title`, `history`, `source`, `seed`, `n_paths` and the
resolved config text. Parts carry the same variable and coordinate metadata. The one departure
from CF is the unit "USD", which UDUNITS does not define.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from engine.config.sweep import Study

CONVENTIONS = "CF-1.8"
COORD_ATTRS = {
    "asset": {"long_name": "perpetual market"},
    "side": {"long_name": "position side"},
    "leverage": {"long_name": "leverage bucket at t0 (x; account leverage for cross margin)"},
    "margin_mode": {"long_name": "margin mode"},
    "quantile": {"units": "1", "long_name": "probability level of the quantile across paths"},
    "band_quantile": {"units": "1", "long_name": "probability level of the fan-chart band"},
    "point": {"units": "1", "long_name": "index of the point in the sweep grid"},
}


def part_dataset(study: Study, ds: xr.Dataset, points: Sequence[int]) -> xr.Dataset:
    """The first `len(points)` points of a `simulate` result, labelled with their grid index
    and sweep-axis values (coordinates along `point`)."""
    part = ds.isel(point=slice(0, len(points))).assign_coords(point=np.asarray(points, np.int32))
    for k, axis in enumerate(study.axes):
        values = _axis_array([study.coords[i][k] for i in points])
        part = part.assign_coords({axis.name: ("point", values)})
    part = part.assign_attrs(
        Conventions=CONVENTIONS,
        title=f"liqstress loss distributions, part of a sweep: {study.name}",
        history=f"liqstress simulated grid points {list(points)}",
    )
    return _describe_coords(study, part)


def _axis_array(values: list) -> np.ndarray:
    """Sweep-axis values as an array of a CF 1.8 type: integers as int32 (float64 beyond it,
    exact to 2**53), as CF 1.8 has no 64-bit integers."""
    array = np.asarray(values)
    if array.dtype.kind != "i":
        return array
    return array.astype(np.int32 if np.abs(array).max() < 2**31 else np.float64)


def _describe_coords(study: Study, ds: xr.Dataset) -> xr.Dataset:
    """`ds` with `units` and `long_name` on its sweep-axis and other coordinates."""
    ds = ds.copy()  # new attribute dicts: the caller's dataset keeps its own
    for a in study.axes:
        attrs = {"long_name": f"sweep axis {a.path}", "sweep_path": a.path}
        if a.units:
            attrs["units"] = a.units
        ds[a.name].attrs.update(attrs)
    for name, attrs in COORD_ATTRS.items():
        if name in ds.coords:
            ds[name].attrs.update(attrs)
    return ds


def write_atomic(ds: xr.Dataset, path: Path, before_rename: Callable[[], None] | None = None) -> None:
    """Write netCDF through a temporary name in the same directory, then rename over `path`,
    so a crash leaves either the old file, the new one or a stray `.tmp` file, never a torn one.
    A failed write removes its temporary file at once; one for want of disk space raises
    `OSError(ENOSPC)` saying so (netCDF reports only "HDF error"). `before_rename` is called
    between the write and the rename (a fault-injection point for tests)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            # CF: coordinate variables have no missing values, so no `_FillValue` either
            ds.to_netcdf(tmp, engine="netcdf4", encoding={name: {"_FillValue": None} for name in ds.coords})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:
            _raise_if_disk_full(err, ds, path)
            raise
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _raise_if_disk_full(err: Exception, ds: xr.Dataset, path: Path) -> None:
    """Raise a clear `OSError(ENOSPC)` if `err`, writing `ds` to `path`, came from a full disk:
    its errno says so, or the disk has less room left than the data (with the failed file in
    place still: measured before it is removed)."""
    free = shutil.disk_usage(path.parent).free
    if getattr(err, "errno", None) == errno.ENOSPC or free < ds.nbytes:
        raise OSError(
            errno.ENOSPC,
            f"no space left on device ({path.parent}: {free / 2**20:.1f} MiB free, "
            f"writing {path.name} needs about {ds.nbytes / 2**20:.1f} MiB)",
        ) from err


def read(path: Path) -> xr.Dataset:
    """A netCDF file fully loaded into memory (the file is closed again); `time` stays in
    minutes since the scenario start (`engine.sim.dataset.TIME_ATTRS`), not decoded to dates."""
    with xr.open_dataset(path, engine="netcdf4", decode_times=False) as ds:
        return ds.load()


def _unstack(study: Study, ds: xr.Dataset) -> xr.Dataset:
    """`point` (the whole grid, in grid order) -> one dimension per sweep axis, in axis order and
    with each axis's values in config order; a study without axes drops `point`."""
    if not study.axes:
        return ds.isel(point=0, drop=True)
    names = [a.name for a in study.axes]
    for k, name in enumerate(names):
        if name not in ds.coords or ds[name].values.tolist() != [c[k] for c in study.coords]:
            raise ValueError(f"the parts' values of sweep axis {name} are not the sweep's")
    # `unstack` needs a MultiIndex, which `set_index` makes only from two or more axes
    index = pd.MultiIndex.from_arrays([ds[n].values for n in names], names=names)
    ds = ds.drop_vars(["point", *names]).assign_coords(xr.Coordinates.from_pandas_multiindex(index, "point"))
    # `unstack` sorts each axis's values; the cube keeps the config's order
    ds = ds.unstack("point").reindex({a.name: _axis_array(list(a.values)) for a in study.axes})
    return ds.transpose(*names, ...)


def assemble(study: Study, parts: Sequence[xr.Dataset], attrs: dict) -> xr.Dataset:
    """The cube: parts over `point` -> one dimension per sweep axis, with CF metadata.

    attrs: global attributes to add (`history`, `source`, run id, ...).
    """
    ds = xr.concat(parts, dim="point", data_vars="all", coords="different", compat="equals")
    ds = ds.sortby("point")
    if len(ds.point) != len(study.points) or not np.array_equal(ds.point, np.arange(len(study.points))):
        raise ValueError(
            f"parts cover points {ds.point.values.tolist()}, expected 0..{len(study.points) - 1}"
        )
    ds = _unstack(study, ds)
    ds = _describe_coords(study, ds)
    for name in ds.data_vars:
        if name.endswith(("_diff_mean", "_diff_se")):
            ds[name].attrs["baseline"] = study.label(study.baseline)
    cfg = study.config
    ds.attrs = {
        "Conventions": CONVENTIONS,
        "title": f"liqstress loss distributions: {cfg.name}",
        "description": cfg.description,
        "seed": cfg.run.seed,
        "n_paths": cfg.run.n_paths,
        "steps": cfg.run.steps,
        "dt_minutes": cfg.run.dt_minutes,
        "sweep_axes": " ".join(a.path for a in study.axes),
        "sweep_dims": " ".join(a.name for a in study.axes),
        "baseline": study.label(study.baseline),
        "baseline_point": study.baseline,
        **attrs,
        "config": study.resolved_toml(),
    }
    return ds
