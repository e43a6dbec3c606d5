"""Sweep grids: the `[sweep]` table of a config file, `--set` overrides, and grid expansion.

A sweep names axes by dotted paths into `Config` (`policy.leverage_cap`,
`policy.breaker.kind`, `market.assets.BTC.vol_annual`, `scenario.shocks.0.size`) with a list
of values each; the run is their cartesian product, the last axis varying fastest. A point is
the base config with the axis fields replaced, validated again as a whole.

```toml
[sweep]
policy.leverage_cap = [5, 10, 20, 50, 125]
policy.breaker.kind = ["none", "halt"]
baseline = { policy.leverage_cap = 125 }   # paired differences are against this point
points_per_part = 8                         # points per part file (one simulate call)
```

The baseline is a grid point: the axes it names take the given values, the others their
first value; without `baseline` it is the first grid point. Every part is simulated together
with the baseline point, so all paired differences share one reference.

Axes may not change what the compiled kernel's shapes depend on (`run.*`, the number of
assets, cohorts per asset): such points belong to separate runs. Axis values are scalars
(numbers, strings, booleans); numbers in increasing or decreasing order, since an axis is a
CF coordinate variable of the cube.

The cube's dimension for an axis is named by a suffix of its path joined by `_`: the field
of a top-level section alone (`policy.leverage_cap` -> `leverage_cap`, `scenario.shock` ->
`shock`), a deeper field with its parent (`policy.breaker.kind` -> `breaker_kind`,
`market.assets.BTC.vol_annual` -> `BTC_vol_annual`). The suffix grows to the left while it
starts with a digit (`scenario.shocks.0.size` -> `shocks_0_size`), is a dimension of the cube
already (`time`, `asset`, ...) or is another axis's name. Characters other than letters,
digits and `_` become `_`.
"""

from __future__ import annotations

import copy
import itertools
import re
import tomllib
from dataclasses import dataclass
from typing import Annotated, Any

import tomli_w
from pydantic import Field, ValidationError

from engine.config import book_checks, build, forms, levers
from engine.config.errors import ConfigError, describe
from engine.config.schema import Config, Strict

SWEEP_KEYS = ("baseline", "points_per_part")
# Top-level settings that are not sweepable: run.* decides sizes and compiled shapes.
FIXED_ROOTS = ("run", "name", "description")
# Dimension names the cube uses already.
RESERVED_DIMS = ("point", "asset", "side", "quantile", "band_quantile", "time")

Scalar = bool | int | float | str


class SweepSpec(Strict):
    """The `[sweep]` table after flattening: axis path -> values."""

    axes: dict[str, tuple[Scalar, ...]] = Field(default_factory=dict)
    baseline: dict[str, Scalar] = Field(default_factory=dict)
    points_per_part: Annotated[int, Field(ge=1, le=1_000_000)] = 8


@dataclass(frozen=True)
class Axis:
    """One sweep axis: its dotted path, cube dimension name and validated values."""

    path: str
    name: str
    values: tuple[Scalar, ...]

    @property
    def units(self) -> str | None:
        if isinstance(self.values[0], str):
            return None
        return "USD" if self.path.endswith("_usd") else "1"


@dataclass(frozen=True)
class Study:
    """A validated base config, its sweep axes, the expanded points and the baseline point."""

    config: Config
    axes: tuple[Axis, ...]
    points: tuple[Config, ...]
    coords: tuple[tuple[Scalar, ...], ...]  # per point, one value per axis
    baseline: int
    points_per_part: int
    # What is odd but allowed (a lever that cannot change anything, positions already beyond
    # their liquidation price): one sentence each, printed before a run and kept in its report.
    warnings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a.values) for a in self.axes)

    def label(self, point: int) -> str:
        """`leverage_cap=20, breaker_kind=halt` (the config name when there are no axes)."""
        if not self.axes:
            return self.name
        return ", ".join(f"{a.name}={_fmt(v)}" for a, v in zip(self.axes, self.coords[point]))

    def parts(self) -> list[list[int]]:
        """Point indices of each part, in grid order."""
        n, k = len(self.points), self.points_per_part
        return [list(range(i, min(i + k, n))) for i in range(0, n, k)]

    def resolved_toml(self) -> str:
        """The fully resolved config (every default filled in) with its sweep, as TOML."""
        data = self.config.model_dump(mode="json", exclude_none=True)
        if self.axes:
            sweep: dict[str, Any] = {"points_per_part": self.points_per_part}
            sweep["baseline"] = {a.path: v for a, v in zip(self.axes, self.coords[self.baseline])}
            sweep.update({a.path: list(a.values) for a in self.axes})
            data["sweep"] = sweep
        return tomli_w.dumps(data)


def _fmt(v: Scalar) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------------------
# Dotted paths into nested dicts and lists
# --------------------------------------------------------------------------------------


def split_path(path: str) -> list[str]:
    return [p.strip() for p in path.split(".")]


def get_path(data: Any, parts: list[str]) -> Any:
    """The value at `parts` (dict keys, list indices), or KeyError naming the missing step."""
    node = data
    for i, key in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if isinstance(node, dict):
            if key not in node:
                fields = ", ".join(map(str, node)) or "none"
                raise KeyError(f"{where} has no field {key!r} (fields: {fields})")
            node = node[key]
        elif isinstance(node, (list, tuple)):
            if not key.isdigit() or int(key) >= len(node):
                raise KeyError(f"{where} is a list of {len(node)}: {key!r} is not an index of it")
            node = node[int(key)]
        else:
            raise KeyError(f"{where} is a value, not a table: it has no field {key!r}")
    return node


def set_path(data: dict, parts: list[str], value: Any, *, create: bool) -> None:
    """Set `parts` in nested dicts/lists in place; `create` makes missing tables."""
    node: Any = data
    for i, key in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, dict):
            if key not in node and create:
                node[key] = {}
            if key not in node:
                raise KeyError(f"{'.'.join(parts[:i]) or 'the config'} has no field {key!r}")
            if isinstance(node[key], tuple):
                node[key] = list(node[key])
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            if isinstance(node[int(key)], tuple):
                node[int(key)] = list(node[int(key)])
            node = node[int(key)]
        else:
            raise KeyError(f"{where}: {'.'.join(parts[:i]) or 'the config'} is not a table")
        if not isinstance(node, (dict, list)):
            raise KeyError(f"{where} is a value, not a table")
    last = parts[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    else:
        raise KeyError(f"{'.'.join(parts)}: not a field of a table")


def flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """`{"policy": {"leverage_cap": [..]}}` and `{"policy.leverage_cap": [..]}` -> dotted keys."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


# --------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------


# A `--set` value that is not TOML is taken as a string only if it is one bare word like this
# (`policy.adl_rule=queue`, `name=2025_oct`, `book.positions=books/desk.csv`); anything else
# (`[20,`, `"x`, `1.2.3`, `two words`) is a mistake, not a string.
BARE_WORD = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9_.\-/]+")


def parse_value(text: str) -> Any:
    """A `--set` value: any TOML value (`5`, `0.1`, `[1, 2]`, `"x y"`, `true`), or a bare word
    (letters, digits, `_`, `.`, `-`, at least one letter) as a string; ValueError otherwise."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as err:
        if BARE_WORD.fullmatch(text.strip()):
            return text.strip()
        # the position tomllib gives is in "v = <text>", not in what the user typed
        why = re.sub(r" \(at (end of document|line \d+, column \d+)\)$", "", str(err))
        raise ValueError(f"not a TOML value ({why}); quote a string that is not one bare word") from None


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in split_path(key)):
        raise ConfigError(
            f"--set {item!r}: expected key=value with a dotted key, e.g. policy.leverage_cap=20"
        )
    try:
        return key, parse_value(value)
    except ValueError as err:
        raise ConfigError(f"--set {item!r}: {err}") from None


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of a raw config dict with `--set key=value` items applied.

    Keys under `sweep.` address the sweep (`sweep.policy.leverage_cap=[5,10]`,
    `sweep.points_per_part=2`, `sweep.baseline.policy.leverage_cap=20`); all others address
    config fields and create missing tables (validation then rejects unknown keys).
    """
    data = copy.deepcopy(raw)
    sweep = flatten_sweep(data.pop("sweep", {}) or {})
    for item in overrides:
        key, value = parse_override(item)
        if key == "sweep" or key.startswith("sweep."):
            rest = key.removeprefix("sweep").removeprefix(".")
            if not rest:
                raise ConfigError(
                    f"--set {item!r}: name a sweep axis, e.g. sweep.policy.leverage_cap=[5, 10]"
                )
            if rest.startswith("baseline."):
                sweep.setdefault("baseline", {})[rest.removeprefix("baseline.")] = value
            else:
                sweep[rest] = value
            continue
        try:
            set_path(data, split_path(key), value, create=True)
        except KeyError as err:
            raise ConfigError(f"--set {key}: {err.args[0]}") from None
    if sweep:
        data["sweep"] = sweep
    return data


def flatten_sweep(table: Any) -> dict[str, Any]:
    """The raw `[sweep]` table with axes as dotted keys; reserved keys kept as they are."""
    if not isinstance(table, dict):
        raise ConfigError(f"sweep: must be a table of axes (got {table!r})")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in SWEEP_KEYS:
            out[key] = flatten(value) if key == "baseline" and isinstance(value, dict) else value
        else:
            out.update(flatten({key: value}))
    return out


# --------------------------------------------------------------------------------------
# Validation and expansion
# --------------------------------------------------------------------------------------


def _spec(table: dict) -> SweepSpec:
    axes = {k: v for k, v in table.items() if k not in SWEEP_KEYS}
    for path, values in axes.items():
        if not isinstance(values, list):
            raise ConfigError(
                f"sweep.{path}: an axis is a list of values, e.g. {path} = [{values!r}] (got {values!r})"
            )
        if not values:
            raise ConfigError(f"sweep.{path}: the axis is empty; give at least one value")
        for v in values:
            if not isinstance(v, Scalar):
                raise ConfigError(
                    f"sweep.{path}: axis values must be numbers, strings or booleans (got {v!r})"
                )
        kinds = {"str" if isinstance(v, str) else "bool" if isinstance(v, bool) else "num" for v in values}
        if len(kinds) > 1:
            raise ConfigError(f"sweep.{path}: values mix strings, numbers or booleans ({values!r})")
    rest = {k: v for k, v in table.items() if k in SWEEP_KEYS}
    try:
        return SweepSpec.model_validate({"axes": axes, **rest})
    except ValidationError as err:
        msg = describe(err, "sweep.").replace("sweep.axes.", "sweep.")
        raise ConfigError(msg) from None


def _monotonic(values: list) -> bool:
    pairs = list(itertools.pairwise(values))
    return all(a < b for a, b in pairs) or all(a > b for a, b in pairs)


def _point(base: dict, assignments: list[tuple[list[str], Scalar]]) -> dict:
    data = copy.deepcopy(base)
    for parts, value in assignments:
        set_path(data, parts, value, create=False)
    return data


def _dim_names(paths: list[str]) -> list[str]:
    """The cube's dimension names of the axes at `paths` (the rule is in the module docstring).

    Raises `ConfigError` if two paths give the same name even in full (`a.b_c` and `a_b.c`).
    """
    split = [[re.sub(r"[^A-Za-z0-9_]", "_", p) for p in split_path(path)] for path in paths]
    # the top-level section is dropped from a name unless the name is the whole path
    sizes = [1 if len(parts) <= 2 else 2 for parts in split]
    while True:
        names = ["_".join(parts[-k:]) for parts, k in zip(split, sizes)]
        bad = [
            i
            for i, name in enumerate(names)
            if not re.match("[A-Za-z]", name) or name in RESERVED_DIMS or names.count(name) > 1
        ]
        growable = [i for i in bad if sizes[i] < len(split[i])]
        if not growable:
            break
        for i in growable:
            sizes[i] += 1
    if bad:
        clashes = ", ".join(f"{paths[i]} -> {names[i]}" for i in bad)
        raise ConfigError(f"sweep: these axes cannot be given distinct valid dimension names: {clashes}")
    return names


def _axis_values(base: dict, path: str, values: tuple[Scalar, ...], static: tuple) -> tuple[Scalar, ...]:
    """The values of sweep axis `path` as the validated config holds them, after checking that
    the path names one swept field and that every value keeps the compiled shape `static`."""
    parts = split_path(path)
    if parts[0] in FIXED_ROOTS:
        raise ConfigError(
            f"sweep.{path}: {parts[0]} settings cannot be swept (they set the run's size, "
            "seed and compiled shapes); start separate runs instead"
        )
    try:
        current = get_path(base, parts)
    except KeyError as err:
        raise ConfigError(f"sweep.{path}: unknown sweep path: {err.args[0]}") from None
    if isinstance(current, (dict, list, tuple)):
        raise ConfigError(f"sweep.{path}: is a table or list, not a single value; sweep one of its fields")
    resolved = []
    for v in values:
        try:
            point = Config.model_validate(_point(base, [(parts, v)]))
        except ValidationError as err:
            raise ConfigError(f"sweep.{path} = {v!r}:\n{describe(err)}") from None
        if (build.static_of(point), point.run.dtype) != static:
            raise ConfigError(
                f"sweep.{path} = {v!r}: changes a compiled shape (assets, cohorts per asset, "
                "steps, cascade rounds); sweep values of one shape only, or start separate runs"
            )
        resolved.append(get_path(point.model_dump(), parts))
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"sweep.{path}: repeated values {values!r}")
    if isinstance(resolved[0], (int, float)) and not _monotonic(resolved):
        raise ConfigError(
            f"sweep.{path}: numbers must be in increasing or decreasing order (the axis is a "
            f"coordinate of the cube); e.g. {sorted(values)!r}"
        )
    return tuple(resolved)


def _baseline_choice(base: dict, axes: list[Axis], baseline: dict[str, Scalar]) -> dict[str, Scalar]:
    """The baseline's value on every axis: `sweep.baseline`'s where given, else the axis's first."""
    by_path = {a.path: a for a in axes}
    choice = {a.path: a.values[0] for a in axes}
    for path, v in baseline.items():
        if path not in by_path:
            allowed = ", ".join(by_path) or "none (the sweep has no axes)"
            raise ConfigError(f"sweep.baseline.{path}: not a sweep axis (axes: {allowed})")
        axis = by_path[path]
        try:
            value = get_path(
                Config.model_validate(_point(base, [(split_path(path), v)])).model_dump(), split_path(path)
            )
        except ValidationError as err:
            raise ConfigError(f"sweep.baseline.{path} = {v!r}:\n{describe(err)}") from None
        if value not in axis.values:
            allowed = ", ".join(_fmt(x) for x in axis.values)
            raise ConfigError(
                f"sweep.baseline.{path}: {v!r} is not a value of the axis (values: {allowed}); "
                f"pick one, e.g. --set sweep.baseline.{path}={_fmt(axis.values[0])}"
            )
        choice[path] = value
    return choice


def build_study(data: dict, source: str = "config") -> Study:
    """Validate a raw config dict (with an optional `sweep` table) into a `Study`.

    Raises `ConfigError` with one line per problem, each naming its dotted field.
    """
    data = dict(data)
    table = flatten_sweep(data.pop("sweep", {}) or {})
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}:\n{describe(err)}") from None
    spec = _spec(table)
    base = config.model_dump()
    static = (build.static_of(config), config.run.dtype)
    checked = {path: _axis_values(base, path, values, static) for path, values in spec.axes.items()}
    names = _dim_names(list(checked))
    axes = [Axis(path, name, values) for (path, values), name in zip(checked.items(), names)]
    choice = _baseline_choice(base, axes, spec.baseline)

    coords = list(itertools.product(*(a.values for a in axes)))
    points = []
    for c in coords:
        assignments = [(split_path(a.path), v) for a, v in zip(axes, c)]
        try:
            points.append(Config.model_validate(_point(base, assignments)))
        except ValidationError as err:
            where = ", ".join(f"{a.path} = {v!r}" for a, v in zip(axes, c))
            raise ConfigError(f"sweep point ({where}):\n{describe(err)}") from None
    baseline = coords.index(tuple(choice[a.path] for a in axes))
    forms.check_forced(static[0], points)  # run.kernel = "ladder" where a point cannot take it
    warnings = tuple(study_warnings(config, axes, points, coords))
    return Study(config, tuple(axes), tuple(points), tuple(coords), baseline, spec.points_per_part, warnings)


def study_warnings(config: Config, axes: list[Axis], points: list[Config], coords: list[tuple]) -> list[str]:
    """The study's warnings (`Study.warnings`): levers that cannot change anything
    (`engine.config.levers`), and what the book's own checks find odd but allowed."""
    warnings = levers.idle_settings(config) + levers.lever_warnings(axes, points, coords)
    warnings += book_checks.book_warnings(config)  # BookFileError: rows above the market, under water
    return warnings
