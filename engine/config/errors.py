"""Errors raised at the API edge, with messages that name the offending field."""

from __future__ import annotations

import re
import types
import typing

from pydantic import BaseModel, ValidationError

from engine.config.schema import Config


class ConfigError(ValueError):
    """Invalid configuration: the message names each bad field, its value and what is allowed."""


class SimulationError(RuntimeError):
    """A simulation could not run or produced unusable numbers."""


def _fields_at(loc: tuple) -> list[str] | None:
    """Field names of the model that holds `loc[-1]` (for "unknown key" messages), if any."""
    ann: typing.Any = Config
    for part in loc[:-1]:
        while True:
            origin = typing.get_origin(ann)
            if origin is typing.Annotated:
                ann = typing.get_args(ann)[0]
            elif origin in (typing.Union, types.UnionType):
                ann = next(a for a in typing.get_args(ann) if a is not type(None))
            else:
                break
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(str(part))
            if field is None:
                return None
            ann = field.annotation
        elif origin is dict:
            ann = typing.get_args(ann)[1]
        elif origin in (tuple, list):
            ann = typing.get_args(ann)[0]
        else:
            return None
    while typing.get_origin(ann) in (typing.Union, types.UnionType, typing.Annotated):
        args = typing.get_args(ann)
        ann = (
            args[0]
            if typing.get_origin(ann) is typing.Annotated
            else next(a for a in args if a is not type(None))
        )
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return None


# A message that starts with a dotted field path: `scenario.shock_start = 48: ...`.
NAMES_FIELD = re.compile(r"[a-z_]+(\.[A-Za-z0-9_\-]+)+[ :]")


def _short(value: typing.Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters (a 300-character name is not worth repeating)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def describe(err: ValidationError, prefix: str = "") -> str:
    """One line per problem: `dotted.path: what is wrong (got value)`; unknown keys list the
    fields allowed there."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if p != "__root__")
        msg = e["msg"].removeprefix("Value error, ")
        where = f"{prefix}{path}" if path else (prefix.rstrip(".") or "config")
        if not path and not prefix and NAMES_FIELD.match(msg):  # a cross-field check names its field
            lines.append(msg)
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] in ("missing",) else f" (got {_short(got)})"
        if e["type"] == "extra_forbidden":
            fields = _fields_at(tuple(e["loc"])) if not prefix else None
            msg = "unknown key" + (f"; allowed: {', '.join(fields)}" if fields else "")
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
