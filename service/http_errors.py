"""HTTP error answers that match the OpenAPI schema (CI fuzzes the service against it).

- **405 with the right ``Allow``.** The dashboard's static files are mounted at ``/``, so a request whose
  method no API route takes falls through to them: ``PUT /v1/streams`` got *their* ``Allow: GET, HEAD``
  and ``GET /v1/language/next`` (a POST route) got 404. Both now answer 405 with the methods the schema
  gives the path (RFC 9110 §15.5.6); paths outside the schema keep the static files' answer.
- **Unparseable bodies are 422**, with the same ``detail`` list as a validation error, instead of
  FastAPI's undocumented ``400 There was an error parsing the body``.
- **422 ``detail`` may be a sentence.** Routes raise ``HTTPException(422, "what is wrong")``; the schema's
  ``HTTPValidationError.detail`` now says "a list of validation errors, or a string".
- **Error bodies are always valid JSON.** A validation error echoes the input it refused, and Python's JSON
  reader accepts ``NaN`` and ``Infinity``, which strict JSON cannot write: ``{"k": NaN}`` made the 422
  itself fail with a 500. Non-finite numbers in an error body are written as the strings ``"NaN"``,
  ``"Infinity"`` and ``"-Infinity"``, for every route at once.
- **Unknown query parameters are 422.** ``GET /v1/videos?status=failed`` answered the newest jobs of
  every state, 200, before the route had a ``status`` filter: a misspelt or unsupported parameter
  was ignored and the client got the wrong data without a word. Every ``/v1`` route now refuses a
  parameter it does not declare, naming it and those it takes (:func:`refuse_unknown_query`,
  applied where the routers are included), and the schema lists that 422 on each operation it
  guards (those without parameters had none). The probes outside ``/v1`` ignore a query.
- **Every 503 may carry ``Retry-After``.** The shutdown's, the connection limit's and a data
  folder's 503 can end any operation and send it; the schema declared the header on one.
"""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from v1motion.service.security import app_path, guarded_path, require_token

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
    """Methods the OpenAPI schema gives ``path``, and HEAD where it has GET (every GET route
    answers HEAD, v1motion.service.app.answer_head_as_get); empty for paths outside the schema."""
    methods: set[str] = set()
    for regex, ms in _path_patterns(app):
        if regex.fullmatch(path):
            methods |= ms
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def json_safe(value: Any) -> Any:
    """``value`` made writable as strict JSON: non-finite floats become strings, deep nesting is cut."""
    return _safe(jsonable_encoder(_safe(value, 0)), 0)


_MAX_DEPTH = 32


def _safe(value: Any, depth: int) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict | list | tuple) and depth >= _MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {k: _safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v, depth + 1) for v in value]
    return value


ECHO_MAX_CHARS = 200
"""A refused input longer than this is echoed cut, with its length: a 5,000-character header came
back whole in its 422."""


def _cut_input(error: dict) -> dict:
    value = error.get("input")
    if isinstance(value, str | bytes) and len(value) > ECHO_MAX_CHARS:
        kind = "characters" if isinstance(value, str) else "bytes"
        cut = value[:ECHO_MAX_CHARS]
        cut = cut if isinstance(cut, str) else cut.decode("utf-8", "replace")
        return {**error, "input": f"{cut}... ({len(value)} {kind})"}
    return error


async def _validation_error(request: Request, exc: RequestValidationError):
    # FastAPI reads and parses a JSON body before it runs the route's dependencies, so a malformed
    # body would get its 422 before the token check: a guarded route answers 401 first.
    errors = [_cut_input(e) if isinstance(e, dict) else e for e in exc.errors()]
    return await _token_first(request) or JSONResponse({"detail": json_safe(errors)}, 422)


async def _token_first(request: Request):
    """The 401 of a guarded (/v1) route without the right token, else None: body errors come after
    the token check (v1motion.service.app guards every /v1 router with v1motion.service.security.authorize)."""
    if guarded_path(request.scope):
        try:
            require_token(request)
        except StarletteHTTPException as denied:
            return await _http_error(request, denied)
    return None


async def _http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code in (404, 405):
        methods = allowed_methods(request.app, app_path(request.scope))
        if methods and request.method not in methods:
            allow = ", ".join(methods)
            exc = StarletteHTTPException(
                405, f"method {request.method} not allowed here; use {allow}", {"Allow": allow}
            )
    elif exc.status_code == 400 and exc.detail == PARSE_ERROR:
        if (denied := await _token_first(request)) is not None:
            return denied
        msg = "the request body could not be parsed (malformed JSON, form data or encoding)"
        return JSONResponse(
            {"detail": [{"type": "body_unparseable", "loc": ["body"], "msg": msg}]}, 422
        )
    if not isinstance(exc.detail, str):
        exc = StarletteHTTPException(exc.status_code, json_safe(exc.detail), exc.headers)
    return await http_exception_handler(request, exc)


GUARD_REFUSED = (
    "a Host that is not this server's or a cross-site Origin, while the server has no token "
    "(docs/security.md)"
)
BODY_REFUSED = {
    "413": "the body is over its limit (docs/security.md)",
    "415": "the body's Content-Type is not one this operation reads",
}
SERVER_BUSY = (
    "the server is shutting down, has too many open connections (V1MOTION_MAX_CONNECTIONS) or "
    "cannot use its data folder"
)
UNKNOWN_QUERY = "a query parameter this operation does not take (the detail names those it takes)"
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}
"""The header of a 429 or 503 that says when to retry, for the routes whose own refusal sends it (a
client generated from the schema reads only the headers it declares)."""
SERVER_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again; sent with the 503 of the connection "
        "limit, of a data folder the server cannot use and of a request the shutdown cut short",
        "schema": {"type": "integer"},
    }
}


def also_answers(responses: dict, code, response: dict) -> dict:
    """Add ``response`` to ``responses[code]`` (an operation's answers, by status) and return it: a
    status that is already there keeps its own reason and says this one too, once (``a | b`` kept
    only b's). Used by routes that merge refusals and by the schema pass below."""
    said = responses.get(code)
    if said is None:
        responses[code] = dict(response)
        return responses[code]
    before, reason = said.get("description", ""), response.get("description", "")
    merged = {**said, **response}
    merged["description"] = (
        before if reason in before else "; or ".join(filter(None, (before, reason)))
    )
    responses[code] = merged
    return merged


def _refusals_every_operation_can_get(
    schema: dict, checks_query: frozenset[tuple[str, str]] = frozenset()
) -> None:
    """Document the answers of the middleware and of the media-type check, which every operation
    (403; 503 at shutdown or at the connection limit) and every operation with a body (413, 415)
    can give, and the 422 of an unknown query parameter on the operations of ``checks_query``
    (``(path, method)``), where the routes do not already. Every 503 may carry ``Retry-After``:
    the shutdown's, the connection limit's and the data folder's do, whatever the route's own does
    (a route whose own refusal sends it declares it, with :data:`RETRY_AFTER`)."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "head", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            responses.setdefault("403", {"description": GUARD_REFUSED})
            busy = also_answers(responses, "503", {"description": SERVER_BUSY})
            for name, header in SERVER_RETRY_AFTER.items():
                busy.setdefault("headers", {}).setdefault(name, header)
            if "requestBody" in operation:
                for code, description in BODY_REFUSED.items():
                    responses.setdefault(code, {"description": description})
            if (path, method) in checks_query:
                # GET /v1/streams, which takes no parameter, answered ?x=1 with an undocumented 422
                also_answers(responses, "422", {"description": UNKNOWN_QUERY})
            # Every refusal's body is {"detail": ...}: said in the schema, so that generated clients
            # can read it (they were given a description only).
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400 and "content" not in response:
                    shape = "HTTPValidationError" if code == "422" else "Error"
                    response["content"] = {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}
                    }
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "title": "Error",
        "type": "object",
        "properties": {"detail": {"title": "Detail", "type": "string"}},
        "required": ["detail"],
        "description": "A refusal: what was wrong, in words",
    }


def install(app: FastAPI) -> None:
    """Register the handler and the schema fix (other HTTP errors keep FastAPI's default answer)."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
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
            _refusals_every_operation_can_get(schema, _operations_checking_query(app))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _operations_checking_query(app: FastAPI) -> frozenset[tuple[str, str]]:
    """``(path, method)`` of the schema's operations that :func:`refuse_unknown_query` guards."""

    def checks(dependant) -> bool:
        return any(d.call is refuse_unknown_query or checks(d) for d in dependant.dependencies)

    # Route contexts, not app.routes: an included router's routes carry its dependencies there.
    routes = [r for r in iter_route_contexts(app.routes) if isinstance(r.original_route, APIRoute)]
    return frozenset(
        (route.path_format, method.lower())
        for route in routes
        if route.include_in_schema and checks(route.dependant)
        for method in route.methods
    )


def _query_names(dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_query(conn: HTTPConnection) -> None:
    """Dependency of every ``/v1`` router: a query parameter the route does not declare is a 422
    naming it (websockets read their own query: ``?flow``, ``?max_fps``)."""
    route = conn.scope.get("route")
    if conn.scope["type"] != "http" or not conn.query_params or route is None:
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(conn.query_params) - known)
    if unknown:
        takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
        raise HTTPException(
            422,
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)} for {conn.url.path}: {takes}",
        )


KnownQueryDep = Depends(refuse_unknown_query)
