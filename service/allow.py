"""``405 Method Not Allowed`` with the ``Allow`` header the OpenAPI schema implies.

The dashboard's static files are mounted at ``/``, so a request whose method no API route takes (``PUT
/v1/streams``) falls through to them and gets *their* ``Allow: GET, HEAD``; and when a path has several
routes (``GET`` and ``DELETE``), Starlette names only one route's methods. This handler lists the methods
the schema gives the path (RFC 9110 §15.5.6); paths outside the schema keep their own answer.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException as StarletteHTTPException

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


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


async def _method_not_allowed(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 405:
        path, root = request.scope["path"], request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        methods = allowed_methods(request.app, path)
        if methods:
            exc = StarletteHTTPException(405, exc.detail, headers={"Allow": ", ".join(methods)})
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    """Register the handler (it leaves every other HTTP error to FastAPI's default)."""
    app.add_exception_handler(StarletteHTTPException, _method_not_allowed)
