"""HTTP error answers that match the OpenAPI schema (CI fuzzes the service against it).

- **405 with the right ``Allow``.** The dashboard's static files are mounted at ``/``, so a request whose
  method no API route takes falls through to them: ``PUT /v1/streams`` got *their* ``Allow: GET, HEAD``
  and ``GET /v1/language/next`` (a POST route) got 404. Both now answer 405 with the methods the schema
  gives the path (RFC 9110 §15.5.6); paths outside the schema keep the static files' answer.
- **Unparseable bodies are 422**, with the same ``detail`` list as a validation error, instead of
  FastAPI's undocumented ``400 There was an error parsing the body``.
- **422 ``detail`` may be a sentence.** Routes raise ``HTTPException(422, "what is wrong")``; the schema's
  ``HTTPValidationError.detail`` now says "a list of validation errors, or a string".
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 for a body it cannot decode


def _path_patterns(app: FastAPI) -> list[tuple[re.Pattern, set[str]]]:
    cached = getattr(app.state, "allow_patterns", None)
    if cached is None:
        cached = []
        for template, item in app.openapi().get("paths", {}).items():
            parts = re.split(r"(\{[^}]+\})", template)
            regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
            methods = {m.upper() for m in item if m in _METHODS}
            cached.append((re.compile(regex), methods))
        app.state.allow_patterns = cached
    return cached


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Methods the OpenAPI schema gives ``path`` (empty for paths outside the schema)."""
    methods: set[str] = set()
    for regex, ms in _path_patterns(app):
        if regex.fullmatch(path):
            methods |= ms
    return sorted(methods)


async def _http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code in (404, 405):
        path, root = request.scope["path"], request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        methods = allowed_methods(request.app, path)
        if methods and request.method not in methods:
            allow = ", ".join(methods)
            exc = StarletteHTTPException(
                405, f"method {request.method} not allowed here; use {allow}", {"Allow": allow}
            )
    elif exc.status_code == 400 and exc.detail == PARSE_ERROR:
        msg = "the request body could not be parsed (malformed JSON, form data or encoding)"
        return JSONResponse(
            {"detail": [{"type": "body_unparseable", "loc": ["body"], "msg": msg}]}, 422
        )
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    """Register the handler and the schema fix (other HTTP errors keep FastAPI's default answer)."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    build_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build_schema()
            err = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if err is not None:
                err["properties"]["detail"] = {
                    "title": "Detail",
                    "anyOf": [
                        {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ValidationError"},
                        },
                        {"type": "string"},
                    ],
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
