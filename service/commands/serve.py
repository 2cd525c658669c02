"""``v1motion serve``: run the API and dashboard with uvicorn."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from v1motion.service.logs import SELF_PROBE

DESCRIPTION = """\
Start the motion service and its live dashboard. With no options it analyses a synthetic source
(drifting gratings and panned images) with the shipped model on http://127.0.0.1:8000/, so it
needs no camera. The address is printed once the server answers; results start when the motion
engine is ready (a few seconds; the first start after installing may compile for longer).

Every option can also be set with an environment variable V1MOTION_<NAME> (see the README);
a flag wins over the variable."""

EPILOG = """\
examples:
  v1motion serve                                   # dashboard on http://127.0.0.1:8000/
  v1motion serve --port 8001                       # when port 8000 is taken
  v1motion serve --source lobby=camera:0           # your first webcam, as a source named lobby
  V1MOTION_TOKEN=change-me v1motion serve --host 0.0.0.0   # reachable from other machines"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the service and its live dashboard",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument(
        "--host",
        default=None,
        help="address to listen on; anything but localhost needs a token "
        "(default: V1MOTION_HOST, else 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on (default: V1MOTION_PORT, else 8000)",
    )
    p.add_argument(
        "--source",
        action="append",
        dest="sources",
        metavar="NAME=KIND:TARGET",
        help="a source the dashboard can pick, repeatable; kinds: synthetic, camera, file, url; "
        "e.g. 'synthetic', 'cam=camera:0', 'clip=file:walk.mp4', 'gate=url:rtsp://host/stream' "
        "(default: V1MOTION_SOURCES, else synthetic)",
    )
    p.add_argument(
        "--engine",
        choices=["default", "random"],
        default=None,
        help="motion engine: 'default' is the shipped trained model; 'random' a small untrained "
        "one that starts instantly but reads meaningless motion, for tests "
        "(default: V1MOTION_ENGINE, else default)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the live engine, at most the number of cores; frames under 150,000 pixels "
        "run on one; the results are the same with more (default: V1MOTION_ENGINE_THREADS, else 2 "
        "where there are 2 cores)",
    )
    p.add_argument(
        "--root-path",
        default=None,
        help="path prefix when served behind a reverse proxy, e.g. /motion "
        "(default: V1MOTION_ROOT_PATH, else none)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="access token that clients must send; prefer the environment variable, which "
        "other users cannot read from the process list (default: V1MOTION_TOKEN, else none)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=None,
        help="'json' writes one JSON object per log line (default: V1MOTION_LOG_FORMAT, else text)",
    )
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


MIN_TOKEN_CHARS = 16


def unreadable_files(settings) -> list[str]:
    """A line for each file source that OpenCV cannot open or read a frame of (not a video, or a
    truncated one): the source would fail and be retried for as long as the service runs."""
    import cv2

    lines = []
    for spec in settings.sources:
        if spec.kind != "file":
            continue
        cap = cv2.VideoCapture(str(Path(spec.target).expanduser()), cv2.CAP_FFMPEG)
        try:
            readable = cap.isOpened() and cap.read()[0]
        finally:
            cap.release()
        if not readable:
            lines.append(
                f"  sources: file source {spec.name!r}: {Path(spec.target).name!r} is not a video "
                "that can be read (not a video file, or a damaged or cut one)"
            )
    return lines


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from v1motion.service.app import create_app
    from v1motion.service.logs import configure_logging
    from v1motion.service.server import (
        ConnectionLimits,
        Server,
        connection_cap,
    )
    from v1motion.service.settings import (
        Settings,
        config_errors,
        env_not_json,
        unknown_variables,
    )

    given = (
        ("host", args.host, "--host"),
        ("port", args.port, "--port"),
        ("sources", args.sources, "--source"),
        ("engine", args.engine, "--engine"),
        ("engine_threads", args.threads, "--threads"),
        ("root_path", args.root_path, "--root-path"),
        ("token", args.token, "--token"),
        ("log_format", args.log_format, "--log-format"),
    )
    overrides = {k: v for k, v, _ in given if v is not None}
    flags = {k: flag for k, v, flag in given if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"v1motion serve: bad configuration:\n{config_errors(exc, flags)}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # a list setting's variable that is not JSON
        print(f"v1motion serve: bad configuration:\n  {env_not_json(exc)}", file=sys.stderr)
        return 2
    if settings.token is not None and len(settings.token.get_secret_value()) < MIN_TOKEN_CHARS:
        print(
            f"v1motion serve: warning: the token is shorter than {MIN_TOKEN_CHARS} characters, "
            'easy to guess (a wrong one is not slowed down); e.g. python -c "import secrets; '
            'print(secrets.token_urlsafe(32))"',
            file=sys.stderr,
        )
    unreadable = unreadable_files(settings)
    if unreadable:  # as a missing file is: at start, not retried for ever once a viewer comes
        print("v1motion serve: bad configuration:\n" + "\n".join(unreadable), file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    for line in unknown_variables(os.environ):
        logging.getLogger("v1motion.serve").warning(line)
    store_lock, refusal = _lock_data_dir(settings.data_dir, settings.port)
    if refusal:
        print(f"v1motion serve: {refusal}", file=sys.stderr)
        return 1
    max_connections, lowered = connection_cap(settings.max_connections)
    if lowered:
        logging.getLogger("v1motion.serve").warning(lowered)
    limits = ConnectionLimits(
        settings.header_timeout_s, settings.keep_alive_s, max_connections, settings.write_timeout_s
    )
    config = server_config(settings, create_app(settings, store_lock=store_lock), limits)
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        store_lock.release()
        print(f"v1motion serve: {_bind_error(exc, settings.host, settings.port)}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    stop = threading.Event()
    say = logging.getLogger("v1motion.serve").info if settings.log_format == "json" else _print
    threading.Thread(
        target=announce_when_answering,
        args=(settings.host, port, stop, started),
        kwargs={"say": say},
        name="announce",
        daemon=True,
    ).start()
    try:
        Server(config).run(sockets=[sock])
    finally:
        stop.set()
        store_lock.release()  # the app released it when it stopped; not if it never started
    return 0


def server_config(settings, app, limits):
    """uvicorn's configuration of ``v1motion serve``: ``app`` under ``limits`` (``ConnectionLimits``)."""
    import uvicorn

    from v1motion.service.server import bounded_http_protocol

    return uvicorn.Config(
        app,
        http=bounded_http_protocol(limits),
        root_path=settings.root_path,
        log_config=None,
        ws_max_size=settings.camera_max_bytes * 2,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        ws_per_message_deflate=settings.ws_compression,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        # uvicorn's 5 s equals httpx's pool expiry: a POST sent on a connection idle 4.8 s met the
        # server closing it, and failed without an answer (clients do not retry a POST)
        timeout_keep_alive=settings.keep_alive_s,
        proxy_headers=True,
        # None: uvicorn's own default (FORWARDED_ALLOW_IPS, else 127.0.0.1,::1)
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


def _exit_on_sigterm(_signum, _frame) -> None:
    """SIGTERM, once uvicorn has stopped gracefully on it, as a normal exit with status 0.

    uvicorn raises the signal again under the handler it found. With the default action the process
    died right there, before Python's exit handlers: the spike worker pools' semaphores were never
    unlinked, and every stop of a server that had done spike work logged the resource tracker's
    "There appear to be 5 leaked semaphore objects to clean up at shutdown". Status 0, as a
    requested stop is not a failure (systemd counts exit status 143 as one), and as the container
    gave before: as PID 1 the default action of SIGTERM is to ignore it."""
    raise SystemExit(0)


def _lock_data_dir(data_dir, port: int):
    """Take the job store's lock of ``data_dir`` for the app: ``(lock, None)``, or ``(None, one line)``
    if another running service holds it.

    Taken here, before the port, so that a second ``make serve`` on one machine learns both what it
    needs in one line (refused in the app's start-up, it was uvicorn's failed startup: some sixty
    lines of traceback). Held from here on and handed to the app, which releases it when it stops:
    a probe released again before the app took the lock let two services started in the same
    instant both pass it, and the second then failed with that traceback after all."""
    from v1motion.service.jobs.lock import StoreLock, StoreLocked

    lock = StoreLock(data_dir)
    try:
        lock.acquire()
    except StoreLocked as exc:
        other = port + 1 if port < 65535 else 8001
        return None, (
            f"{exc}. To run a second service on this machine, give it its own data folder and "
            f"port: V1MOTION_DATA_DIR=var/{other} v1motion serve --port {other}"
        )
    except OSError as exc:
        why = f"cannot use the data folder {data_dir}: {exc.strerror or exc}"
        if exc.errno == errno.EACCES:  # a host folder mounted for another user
            why += f"; it must be writable by this user (uid {os.getuid()})"
        return None, why
    return lock, None


def _bind_error(exc: OSError, host: str, port: int) -> str:
    """One line that says why the server cannot listen and what to change."""
    if exc.errno == errno.EADDRINUSE:
        other = port + 1 if port < 65535 else 8001
        return (
            f"port {port} on {host} is already in use (another v1motion serve?); "
            f"pick a free one with --port {other} or V1MOTION_PORT={other}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"not allowed to listen on port {port}; ports below 1024 need privileges: "
            f"use --port 8000 or V1MOTION_PORT=8000"
        )
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        return (
            f"cannot listen on {host}: not an address of this machine; "
            f"use --host 127.0.0.1 or V1MOTION_HOST=127.0.0.1"
        )
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _print(line: str) -> None:
    print(line, flush=True)


def announce_when_answering(
    host: str,
    port: int,
    stop: threading.Event,
    started: float,
    poll_s: float = 0.1,
    say: Callable[[str], None] = _print,
) -> None:
    """Print the dashboard's address once the server answers HTTP, then say when the engine is ready.

    Polls ``/readyz`` on the local socket: any HTTP answer means the server is up (503 while the
    engine loads); 200 means results are flowing. ``say`` prints a line; with JSON logs it logs
    it, as one JSON object like every other line.
    """
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    probe = f"http://{_url_host(local)}:{port}{SELF_PROBE}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    announced = False
    while not stop.is_set():
        status, body = _get(opener, probe)
        if status is not None and not announced:
            announced = True
            say(f"v1motion: dashboard on http://{_url_host(host)}:{port}/")
            if status != 200:
                say("v1motion: the motion engine is loading; results start when it is ready")
        if status == 200:
            say(f"v1motion: motion engine ready, {time.monotonic() - started:.1f} s after start")
            return
        if body.get("status") == "failed":
            say(f"v1motion: the motion engine failed to load: {body.get('detail')} (see the log)")
            return
        stop.wait(poll_s)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _get(opener, url: str) -> tuple[int | None, dict]:
    """Status and JSON body of a GET; ``(None, {})`` while nothing answers."""
    try:
        with opener.open(url, timeout=2) as r:
            return r.status, _json(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())
    except OSError:
        return None, {}


def _json(data: bytes) -> dict:
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
