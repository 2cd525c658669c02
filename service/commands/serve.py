"""``v1motion serve``: run the API and dashboard with uvicorn."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the service and its dashboard")
    p.add_argument("--host", default=None, help="bind address (default from V1MOTION_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default from V1MOTION_PORT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)
    return 0
