"""``v1motion serve``: run the API and dashboard with uvicorn."""

from __future__ import annotations

import argparse
import socket


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the service and its dashboard")
    p.add_argument("--host", default=None, help="bind address (default from V1MOTION_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default from V1MOTION_PORT)")
    p.add_argument(
        "--source",
        action="append",
        dest="sources",
        metavar="NAME=KIND:TARGET",
        help="a source, repeatable: 'synthetic', 'cam=camera:0', 'clip=file:walk.mp4', "
        "'gate=url:rtsp://host/stream' (default from V1MOTION_SOURCES, else 'synthetic')",
    )
    p.add_argument("--engine", choices=["default", "random"], default=None)
    p.add_argument("--root-path", default=None, help="path prefix behind a reverse proxy")
    p.add_argument("--token", default=None, help="required token (default from V1MOTION_TOKEN)")
    p.add_argument("--log-format", choices=["text", "json"], default=None)
    p.set_defaults(func=run)


# Unsent bytes the kernel may hold per connection. Without a limit Linux buffers megabytes for a slow
# viewer, so it would see seconds-old frames and its sends would block for long; with it, a send waits
# only for the viewer to read what it already has, and the newest result replaces the rest.
NOTSENT_LOWAT = 128 * 1024


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket whose connections inherit ``TCP_NOTSENT_LOWAT`` (Linux, macOS)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if lowat is not None:
        sock.setsockopt(socket.IPPROTO_TCP, lowat, NOTSENT_LOWAT)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.logs import configure_logging
    from service.server import Server
    from service.settings import Settings, config_errors

    overrides = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("sources", args.sources),
            ("engine", args.engine),
            ("root_path", args.root_path),
            ("token", args.token),
            ("log_format", args.log_format),
        )
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"v1motion serve: bad configuration:\n{config_errors(exc)}")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    config = uvicorn.Config(
        create_app(settings),
        root_path=settings.root_path,
        log_config=None,
        ws_max_size=settings.camera_max_bytes * 2,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        proxy_headers=True,
    )
    sock = bind_socket(settings.host, settings.port)
    print(f"v1motion: dashboard on http://{settings.host}:{sock.getsockname()[1]}/", flush=True)
    Server(config).run(sockets=[sock])
    return 0
