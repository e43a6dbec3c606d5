"""Reading configuration files (TOML) into validated `Config` and `Study` objects.

A config file may start from another with `base = "oct10_2025.toml"` (a path relative to the
file, or the name of a config shipped in the package): tables are merged key by key, the
including file wins. A file may hold a `[sweep]` table (`engine.config.sweep`); `load_config` ignores
it and returns the base scenario, `load_study` expands it.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from engine.config.errors import ConfigError, describe
from engine.config.schema import Config
from engine.config.sweep import Study, apply_overrides, build_study, set_path

DEFAULT_SCENARIO = "oct10_2025"


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
    book = data.get("book")
    for key in ("positions", "liquidation_map"):  # files of the book: relative to this config
        if isinstance(book, dict) and isinstance(book.get(key), str):
            book[key] = str((p.parent / book[key]).resolve())
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base: must be the path or name of a config file (got {base!r})")
    parent = resolve_config_path(base, relative_to=p.parent)
    if parent.resolve() in _seen + (p.resolve(),):
        raise ConfigError(f"{p}: base: {base!r} includes itself")
    return merge_tables(read_config_dict(parent, _seen + (p.resolve(),)), data)


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
    `run.seed` after the overrides.

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
    """A copy of `raw` with the `--set` items among `edits` applied, then the typed
    `(run field, value)` ones."""
    data = apply_overrides(raw, [e for e in edits if isinstance(e, str)])
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
