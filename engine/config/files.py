"""Reading configuration files (TOML) into validated `Config` and `Study` objects.

A config file may start from another with `base = "oct10_2025.toml"` (a path relative to the
file, or the name of a config shipped in the package): tables are merged key by key, the
including file wins. A file may hold a `[sweep]` table (`engine.config.sweep`); `load_config` ignores
it and returns the base scenario, `load_study` expands it.
"""

from __future__ import annotations

import functools
import tomllib
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from engine.config.errors import ConfigError, describe
from engine.config.schema import Config
from engine.config.sweep import Study, apply_overrides, build_study, flatten_sweep, set_path

DEFAULT_SCENARIO = "oct10_2025"
# The fields that name a file the config reads besides its TOML (the book's data), as dotted
# paths. A relative path is relative to the config file that names it, or to the current
# directory where a `--set` item names it; every one is made absolute on reading, so that a run's
# `config.toml` works from any directory.
FILE_FIELDS = ("book.positions", "book.liquidation_map")


def packaged_configs_dir() -> Path:
    return Path(str(resources.files("engine") / "configs"))


def default_config_path() -> Path:
    """The default scenario shipped inside the package (works from any directory)."""
    return packaged_configs_dir() / f"{DEFAULT_SCENARIO}.toml"


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config file by path, or by the name of a config shipped in the package (`quick`).

    Paths are tried relative to `relative_to` first (for `base = ...`), then as given.
    """
    p = Path(name)
    candidates = [relative_to / p] if relative_to is not None and not p.is_absolute() else []
    candidates.append(p)
    if len(p.parts) == 1:
        stem = p.name if p.suffix == ".toml" else f"{p.name}.toml"
        candidates.append(packaged_configs_dir() / stem)
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def read_toml(path: str | Path) -> dict:
    """The parsed TOML of `path`, or a `ConfigError` that names the file and the problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the config file ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: cannot read the config file (not UTF-8 text)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML ({err})") from None


def merge_tables(base: dict, top: dict) -> dict:
    """`top` over `base`: tables merge key by key, anything else in `top` replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def read_config_dict(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The raw (unvalidated) settings of a config file with its `base` chain merged in."""
    p = resolve_config_path(path)
    data = read_toml(p)
    if isinstance(data.get("sweep"), dict):  # flat, for `absolute_files` (merges the same)
        data["sweep"] = flatten_sweep(data["sweep"])
    absolute_files(data, p.parent)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base: must be the path or name of a config file (got {base!r})")
    parent = resolve_config_path(base, relative_to=p.parent)
    if parent.resolve() in _seen + (p.resolve(),):
        raise ConfigError(f"{p}: base: {base!r} includes itself")
    return merge_tables(read_config_dict(parent, _seen + (p.resolve(),)), data)


def absolute_files(data: dict, base: Path) -> None:
    """Make the relative paths of `FILE_FIELDS` in raw config dict `data` absolute against
    directory `base`, in place: the fields themselves, and a (flattened) sweep's axes over them
    and its baseline values for them. Values of the wrong type are left to validation."""
    sweep = data.get("sweep") if isinstance(data.get("sweep"), dict) else {}
    baseline = sweep.get("baseline") if isinstance(sweep.get("baseline"), dict) else {}
    for field in FILE_FIELDS:
        table, key = field.split(".")
        if isinstance(data.get(table), dict) and isinstance(data[table].get(key), str):
            data[table][key] = _absolute(data[table][key], base)
        if isinstance(sweep.get(field), list):
            sweep[field] = [_absolute(v, base) if isinstance(v, str) else v for v in sweep[field]]
        if isinstance(baseline.get(field), str):
            baseline[field] = _absolute(baseline[field], base)


def input_files(study: Study) -> dict[str, str]:
    """Every file `study` reads besides its TOML, by where its config names it: the base
    config's `FILE_FIELDS` (`book.positions`), and each value of a sweep axis over one of them
    (`sweep.book.positions[1]`, the axis's second value) -> the file's (absolute) path."""
    out = {}
    for field in FILE_FIELDS:
        if path := functools.reduce(getattr, field.split("."), study.config):
            out[field] = path
    for axis in study.axes:
        if axis.path in FILE_FIELDS:
            out.update({f"sweep.{axis.path}[{k}]": v for k, v in enumerate(axis.values) if v})
    return out


def _absolute(path: str, base: Path) -> str:
    return str((base / path).resolve()) if path else path  # "": no file (as validation reads it)


def load_config(path: str | Path | None = None) -> Config:
    """Validated `Config` from a TOML file (the default scenario when `path` is None).

    A `[sweep]` table is ignored here: the result is the sweep's base scenario.
    """
    p = resolve_config_path(path) if path is not None else default_config_path()
    data = read_config_dict(p)
    data.pop("sweep", None)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{p}:\n{describe(err)}") from None


def load_study(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    n_paths: int | None = None,
    seed: int | None = None,
) -> Study:
    """A validated `engine.config.sweep.Study` from a config file and `--set key=value` overrides;
    `n_paths` and `seed` (the CLI's `--paths`, `--seed`), if given, replace `run.n_paths` and
    `run.seed` after the overrides. A file path given by a `--set` item (`FILE_FIELDS`) is
    relative to the current directory, as the shell where it was typed would read it.

    A problem that the file alone does not have is reported as the `--set` items' (or
    `--paths`', `--seed`'s: those that cause it on their own, else all of them), not the file's.
    """
    p = resolve_config_path(path) if path is not None else default_config_path()
    raw = read_config_dict(p)
    edits: list[tuple[str, str | tuple[str, int]]] = [(f"--set {item}", item) for item in overrides]
    for option, field, value in (("--paths", "n_paths", n_paths), ("--seed", "seed", seed)):
        if value is not None:
            edits.append((f"{option} {value}", (field, value)))
    data = _edited(raw, [e for _, e in edits])
    try:
        return build_study(data, source=str(p))
    except ConfigError as err:
        culprits = _culprits(raw, edits, str(p))
        if not culprits:
            raise
        where = ", ".join(culprits)
        raise ConfigError(f"{where}:\n{str(err).removeprefix(f'{p}:').lstrip()}") from None


def _edited(raw: dict, edits: list[str | tuple[str, int]]) -> dict:
    """A copy of `raw` with the `--set` items among `edits` applied (their file paths made
    absolute against the current directory), then the typed `(run field, value)` ones."""
    data = apply_overrides(raw, [e for e in edits if isinstance(e, str)])
    absolute_files(data, Path.cwd())  # only the `--set` ones are still relative
    for field, value in (e for e in edits if not isinstance(e, str)):
        set_path(data, ["run", field], value, create=True)
    return data


def _culprits(raw: dict, edits: list[tuple[str, str | tuple[str, int]]], source: str) -> list[str]:
    """The names (`--set item`, `--paths N`) of the `edits` to blame for a failed validation:
    none if the file alone fails; else those that fail on their own, or all when only their
    combination does."""

    def fails(chosen) -> bool:
        try:
            build_study(_edited(raw, [e for _, e in chosen]), source=source)
        except ConfigError:
            return True
        return False

    if not edits or fails([]):
        return []
    return [name for name, e in edits if fails([(name, e)])] or [name for name, _ in edits]
