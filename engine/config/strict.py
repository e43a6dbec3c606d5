"""The base of every configuration model, and the number types the models share.

`Strict` forbids unknown keys (a typo is an error naming its dotted path), rejects NaN and
infinity, freezes values, refuses booleans where a number is expected, and keeps every float
within the range the model's float32 arithmetic holds (`MAGNITUDE`).
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

# Smallest and largest magnitude of a float setting other than 0. float32 holds 1e-38 to 3e38:
# settings within 1e-30 to 1e30 leave the kernel's products (open interest by impact, prices by
# quantities) room, and still take 1e30 as "no limit" (a depth without impact). Beyond them an
# overflow or underflow would show only as non-finite outputs at run time.
MAGNITUDE = (1e-30, 1e30)


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

    @field_validator("*", mode="after")
    @classmethod
    def _within_magnitude(cls, value: Any) -> Any:
        for x in value if isinstance(value, tuple) else (value,):
            if isinstance(x, float) and x != 0 and not MAGNITUDE[0] <= abs(x) <= MAGNITUDE[1]:
                low, high = MAGNITUDE
                raise ValueError(
                    f"beyond the model's range: allowed 0 or a magnitude from {low:g} to {high:g}"
                )
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if _holds_bool(value) and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true or false")
        return value
