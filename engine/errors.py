"""Errors raised at the API edge, with messages that name the offending field."""

from __future__ import annotations

from pydantic import ValidationError

from engine.config import Config


class ConfigError(ValueError):
    """Invalid configuration: the message names each bad field, its value and what is allowed."""


class SimulationError(RuntimeError):
    """A simulation could not run or produced unusable numbers."""


def describe(err: ValidationError, prefix: str = "") -> str:
    """One line per problem: `dotted.path: what is wrong (got value)`."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if p != "__root__")
        where = f"{prefix}{path}" if path else (prefix.rstrip(".") or "config")
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] in ("missing",) else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown}")
    return "\n".join(lines)


def validated(config: Config | dict) -> Config:
    """A `Config` from a `Config` or a plain dict, or a `ConfigError` naming the fields."""
    if isinstance(config, Config):
        return config
    try:
        return Config.model_validate(config)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None
