"""What every JSON request body shares: a field the route does not know is refused.

A misspelt or misplaced field would otherwise be dropped without a word and the request answered
with the field's default, e.g. ``{"text": ...}`` sent to ``/v1/language/next``, whose field is
``context``, predicted the start of a sentence. With ``extra="forbid"`` it is a 422 naming it.
tests/service/test_service_hardening.py checks every JSON body in the OpenAPI schema for it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestBody(BaseModel):
    """Base of every JSON request body: unknown fields are a 422 naming them."""

    model_config = ConfigDict(extra="forbid")
