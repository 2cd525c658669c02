"""What every JSON request body shares: a field the route does not know is refused, and a number is
not true or false.

A misspelt or misplaced field would otherwise be dropped without a word and the request answered
with the field's default, e.g. ``{"text": ...}`` sent to ``/v1/language/next``, whose field is
``context``, predicted the start of a sentence. With ``extra="forbid"`` it is a 422 naming it.
tests/service/test_service_hardening.py checks every JSON body in the OpenAPI schema for it.

Pydantic's lax mode reads JSON ``true`` and ``false`` as 1 and 0 for an integer or a number, so
``{"k": true}`` asked ``/v1/language/next`` for one word and ``{"seed": false}`` fitted with seed 0,
both answered 200 against a schema that says integer (found by CI's schemathesis run). Lax mode
stays (a form's fields arrive as strings, and JSON arrays fill tuples); only the booleans are refused.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _takes_bool(annotation: Any) -> bool:
    """Whether a field of this type may hold true or false (``bool`` or ``Any`` in it)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_takes_bool(a) for a in typing.get_args(annotation))
    return False


def _expected(annotation: Any) -> str:
    """What a field of this type takes, for people: 'a string' for ``{"text": true}``."""
    names = {str: "a string", int: "an integer", float: "a number"}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        kinds = [_expected(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(dict.fromkeys(kinds)) or "a number"
    if origin in (list, tuple):
        return "a list of numbers"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    return names.get(annotation, "a number")


def _has_bool(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(isinstance(v, bool) for v in value)
    return isinstance(value, bool)


class RequestBody(BaseModel):
    """Base of every JSON request body: unknown fields are a 422 naming them, and so is true or
    false where the field is a number (or a list of numbers)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if _has_bool(value) and not _takes_bool(annotation):
            raise ValueError(f"expected {_expected(annotation)}, not true or false")
        return value
