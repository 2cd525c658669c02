"""Serving under a reverse proxy's path prefix (``V1MOTION_ROOT_PATH``), whichever way it forwards.

uvicorn, given the root path, puts it in front of every request's path; the app's routes see what
follows it. A proxy that strips its prefix (nginx ``proxy_pass http://app/;``, Caddy's
``handle_path``, Traefik's StripPrefix) then works as is. One that forwards the path whole (Traefik's
PathPrefix alone, nginx ``proxy_pass http://app;``) sent ``/motion/healthz``, which became
``/motion/motion/healthz``: every path was a 404. :class:`RootPathTolerance` takes the doubled prefix
off, so both kinds of proxy work (and so do direct requests to the service, prefixed or not).

``https://host/motion`` without its last slash, forwarded by a stripping proxy as ``/``, loaded the
dashboard with its relative links resolved against ``/``: no style sheet, no script.
:func:`index_with_base` gives the page a ``<base>`` at the root path, whatever address it was
opened at.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send


class RootPathTolerance:
    """ASGI middleware: a path that still starts with the root path after uvicorn added it in front
    (a proxy that did not strip its prefix) loses one copy of it.

    Off when the root path is also the start of a route of the app's own (``/v1`` as a prefix):
    there a doubled prefix cannot be told from a route under the prefix."""

    def __init__(self, app: ASGIApp, root_path: str, own_paths: tuple[str, ...] = ()):
        self.app = app
        self.root = root_path.rstrip("/")
        self.on = bool(self.root) and not any(
            p == self.root or p.startswith(self.root + "/") for p in own_paths
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.on and scope["type"] in ("http", "websocket"):
            root = scope.get("root_path", "")
            twice = root + root
            path = scope["path"]
            if root == self.root and (path == twice or path.startswith(twice + "/")):
                scope = dict(scope, path=path[len(root) :])
                raw = scope.get("raw_path")
                if raw is not None and raw.startswith(twice.encode()):
                    scope["raw_path"] = raw[len(root) :]
        await self.app(scope, receive, send)


def index_with_base(web_dir: Path, root_path: str) -> str:
    """The dashboard's page with ``<base href="{root_path}/">`` first in its head."""
    page = (web_dir / "index.html").read_text(encoding="utf-8")
    base = f'<base href="{html.escape(root_path.rstrip("/") + "/", quote=True)}">'
    head = page.find("<head>")
    if head < 0:
        raise ValueError(f"{web_dir / 'index.html'} has no <head>")
    at = head + len("<head>")
    return page[:at] + "\n  " + base + page[at:]
