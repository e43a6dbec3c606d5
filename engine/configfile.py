"""Reading configuration files (TOML) into validated `Config` objects."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from engine.config import Config
from engine.errors import ConfigError, describe

DEFAULT_SCENARIO = "oct10_2025"


def default_config_path() -> Path:
    """The default scenario shipped inside the package (works from any directory)."""
    return Path(str(resources.files("engine") / "configs" / f"{DEFAULT_SCENARIO}.toml"))


def read_toml(path: str | Path) -> dict:
    """The parsed TOML of `path`, or a `ConfigError` that names the file and the problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the config file ({err.strerror or err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML ({err})") from None


def load_config(path: str | Path | None = None) -> Config:
    """Validated `Config` from a TOML file (the default scenario when `path` is None)."""
    p = Path(path) if path is not None else default_config_path()
    data = read_toml(p)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{p}:\n{describe(err)}") from None
