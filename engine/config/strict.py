"""The base of every configuration model, and the number types the models share.

`Strict` forbids unknown keys (a typo is an error naming its dotted path), rejects NaN and
infinity, freezes values, and refuses booleans where a number is expected.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Finite = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def _numbers_only(annotation: Any) -> bool:
    """Whether a field admits only numbers (`int`, `float`, tuples of them, optionally None)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _numbers_only(args[0])
    if origin in (typing.Union, types.UnionType):
        return all(_numbers_only(a) for a in args if a is not type(None))
    if origin is tuple:
        return all(_numbers_only(a) for a in args if a is not Ellipsis)
    return annotation in (int, float)


def _holds_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, bool)


class Strict(BaseModel):
    """Base model: unknown keys are errors, NaN and infinity are rejected, values are frozen,
    and numeric fields refuse booleans (Python would read `leverage_cap = true` as 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if _holds_bool(value) and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true or false")
        return value
