"""Logging set-up: plain text for people, one JSON object per line for log collectors."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import time
from urllib.parse import unquote

# A secret in a query string (``?token=...``) would reach the access log with the path.
# Any name that holds one of these words (my_token, access-token, x_api_key, passwd, auth,
# bearer...), after ? & or ;, the name percent-decoded as servers read it (%74oken is token).
_SECRET_PARAM = re.compile(
    r"([?&;](?:[\w.%-]*?)(?:token|key|pass(?:word|wd)?|secret|auth|bearer|session|sig)"
    r"(?:[\w.%-]*)=)[^&;\s\"']*",
    re.IGNORECASE,
)
_ESCAPED_NAME = re.compile(r"(?<=[?&;])[^=&;\s\"']*%[0-9A-Fa-f]{2}[^=&;\s\"']*(?==)")


def redact(text: str) -> str:
    """``text`` with the values of secret-looking query parameters replaced by ``[redacted]``."""
    text = _ESCAPED_NAME.sub(lambda m: unquote(m.group()), text)
    return _SECRET_PARAM.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    """Redacts secret query parameters in every record (uvicorn's access log puts the path in
    ``args``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


# and uvicorn's copy of its message with terminal colour codes, which a JSON line has no use for
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JSONFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "thread", ...extra}``; tracebacks under ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


SELF_PROBE = "/readyz?from=v1motion-serve"
"""The path ``serve`` polls for its own start: its access lines are DEBUG (``QuietSocketLines``).
Polled every 0.1 s, they filled a 30 s first start's log with about 150 lines of 503."""

REQUEST_START: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "request_start", default=None
)
"""``time.perf_counter()`` at a request's arrival, set by
:class:`v1motion.service.metrics.RequestMetrics` for the code that runs while it is answered
(uvicorn's access line: :class:`AccessTime`)."""


class QuietSocketLines(logging.Filter):
    """uvicorn's "connection open" and "connection closed" for every websocket are DEBUG here: they
    name neither the client nor the path, and the lines beside them do ("WebSocket /v1/streams/x"
    [accepted] with the address; the stream's "viewer joined" and "viewer left (sent, missed)").
    Fifty viewers coming and going wrote two hundred lines, half of them these. So are the access
    lines of ``serve``'s own polls of ``/readyz`` while it starts (``SELF_PROBE``): ten a second."""

    QUIET = frozenset({"connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        quiet = (record.name == "uvicorn.error" and record.msg in self.QUIET) or (
            record.name == "uvicorn.access"
            and isinstance(record.args, tuple)
            and len(record.args) > 2
            and record.args[2] == SELF_PROBE
        )
        if quiet:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).getEffectiveLevel() <= logging.DEBUG
        return True


class AccessTime(logging.Filter):
    """uvicorn's access line with the time its answer took to start, in milliseconds: ``... 200
    (3.1 ms)`` and ``"ms": 3.1`` in a JSON line. uvicorn writes the line when the answer's headers
    go out, so a download's body is not in it (``v1motion_http_request_seconds`` times the whole
    answer). Operators had to turn to the metrics to find the slow requests of a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and not hasattr(record, "ms"):
            start = REQUEST_START.get()
            if start is not None:
                record.ms = round((time.perf_counter() - start) * 1000, 1)
                if isinstance(record.msg, str):
                    record.msg += f" ({record.ms} ms)"
        return True


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(AccessTime())
    handler.addFilter(RedactSecrets())
    handler.addFilter(QuietSocketLines())
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)  # the level given here decides
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as a log record (one JSON object with JSON logs), not the
    bare traceback Python prints to stderr, which a log reader cannot parse."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("v1motion").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


WORKER_LOG = ("info", "text")
"""A worker process's (level, format) where the server's are not given: ``configure_logging``'s."""


def configure_worker_logging(level: str = "info", fmt: str = "text") -> None:
    """A worker process's logging, as the server's (``configure_logging``): its records and Python
    warnings in the server's format and level. Left alone, a spike worker's warnings reached the
    server's log as bare lines (no time, level or logger: lines a JSON log reader cannot parse), its
    INFO records nowhere, and the video workers logged text under ``--log-format json``."""
    configure_logging(level, fmt)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger, formatted


class ClientFitNotes(logging.Filter):
    """What a model fit says of a client's data (an iteration cap reached, held-out spikes predicted
    worse than constant rates) goes back in its answer (``fit``, ``warnings``); in the server's log
    it is INFO, not a WARNING that an operator's alert fires on (308 in 21 minutes of a soak, every
    one a client's fit)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.name.startswith("v1motion.models."):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).getEffectiveLevel() <= logging.INFO
        return True


def demote_client_fit_notes() -> None:
    """Put :class:`ClientFitNotes` on the root logger's handlers (where the records of every
    ``v1motion.models`` logger end up): for a process that fits clients' models."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(ClientFitNotes())
