"""The worker processes (spike fits, video jobs) log as the server does: its format and level, Python
warnings included. A spike worker's warnings reached the log as bare lines a JSON log reader cannot
parse, and the video workers logged text under ``--log-format json``."""

import json
import time

import numpy as np
import pytest
import video_samples as vs
from fastapi.testclient import TestClient

from v1motion.service.app import create_app
from v1motion.service.settings import Settings


def _json_lines(err: str, needle: str) -> list[dict]:
    lines = [line for line in err.splitlines() if needle in line]
    assert lines, f"no line with {needle!r} in:\n{err}"
    return [json.loads(line) for line in lines]  # each one a JSON object, or this fails


def test_a_spike_workers_fit_note_is_a_json_line_under_the_json_log_format(capfd):
    counts = np.random.default_rng(0).poisson(0.3, (4, 120, 3)).astype(float)
    body = {"counts": counts.tolist(), "kind": "lds", "options": {"n_iter": 2}}
    with TestClient(create_app(Settings(log_format="json"))) as c:
        r = c.post("/v1/spikes/models", json=body)
        assert r.status_code == 201, r.text
    (record,) = _json_lines(capfd.readouterr().err, "iteration cap")
    # an INFO line: the client's answer says it (fit.stop_reason), no operator needs a warning
    assert record["level"] == "info" and record["logger"] == "v1motion.models.spikes.lds"


def test_a_video_workers_log_is_json_lines_under_the_json_log_format(tmp_path, capfd):
    settings = Settings(data_dir=tmp_path / "data", video_engine="random", log_format="json")
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/v1/videos", files={"file": ("a.avi", vs.avi(tmp_path, n=4), "video/x-msvideo")}
        )
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        for _ in range(600):
            status = c.get(f"/v1/videos/{job}").json()["status"]
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.1)
        assert status == "succeeded"
    (record,) = _json_lines(capfd.readouterr().err, f"processed {job}")
    assert record["level"] == "info"


def test_a_threads_uncaught_exception_is_a_json_line_under_the_json_log_format(capfd, monkeypatch):
    """A slot thread that died printed Python's bare traceback, lines a JSON log reader cannot
    parse; it is logged as one record, the traceback under ``exc``."""
    import logging
    import threading

    from v1motion.service.logs import configure_logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    configure_logging("info", "json")

    def boom():
        raise RuntimeError("database or disk is full")

    t = threading.Thread(target=boom, name="local-slot-0")
    t.start()
    t.join()
    [line] = [x for x in capfd.readouterr().err.splitlines() if "local-slot-0" in x]
    record = json.loads(line)
    assert record["level"] == "error" and "database or disk is full" in record["exc"]


@pytest.mark.parametrize("level", ["info", "warning"])
def test_a_spike_workers_fit_notes_are_info_and_other_warnings_stay(capfd, monkeypatch, level):
    """Every client fit that reached an iteration cap, or predicted worse than constant rates, was a
    WARNING in the server's log (308 in 21 minutes of a soak); its answer says so already."""
    import logging

    from v1motion.service.logs import configure_logging, demote_client_fit_notes

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    before = root.level
    try:
        configure_logging(level, "json")
        demote_client_fit_notes()
        logging.getLogger("v1motion.models.spikes.base").warning(
            "RGLM: L-BFGS hit the iteration cap"
        )
        logging.getLogger("v1motion.service.spikes_state").warning("ran out of memory")
    finally:
        root.setLevel(before)
    records = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    said = {r["msg"]: r["level"] for r in records}
    assert said.pop("ran out of memory") == "warning"
    assert said == ({"RGLM: L-BFGS hit the iteration cap": "info"} if level == "info" else {})


@pytest.mark.parametrize("level", ["info", "debug"])
def test_uvicorns_bare_socket_lines_are_debug(capfd, monkeypatch, level):
    """Every viewer wrote uvicorn's "connection open" and "connection closed" at INFO, lines that
    name no client or path, beside the ones that do."""
    import logging

    from v1motion.service.logs import configure_logging

    root, uv = logging.getLogger(), logging.getLogger("uvicorn.error")
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    loggers = [root, logging.getLogger("uvicorn"), uv, logging.getLogger("uvicorn.access")]
    before = [x.level for x in loggers]  # a test's own uvicorn may have set theirs
    try:
        configure_logging(level, "json")
        uv.info("connection open")
        uv.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/v1/streams/synthetic")
        uv.info("connection closed")
    finally:
        for x, lv in zip(loggers, before, strict=True):
            x.setLevel(lv)
    records = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    said = [(r["msg"], r["level"]) for r in records]
    accepted = ('127.0.0.1:5 - "WebSocket /v1/streams/synthetic" [accepted]', "info")
    if level == "info":
        assert said == [accepted]
    else:
        assert said == [("connection open", "debug"), accepted, ("connection closed", "debug")]


@pytest.mark.parametrize("level", ["info", "debug"])
def test_serves_own_polls_of_readyz_are_debug(capfd, monkeypatch, level):
    """``serve`` polls /readyz every 0.1 s while it starts, to print the address once the server
    answers: a 30 s first start logged about 150 access lines of 503 (the operator's probe). Its own
    polls are DEBUG; anyone else's probe of /readyz is logged as before."""
    import logging

    from v1motion.service.commands.serve import SELF_PROBE
    from v1motion.service.logs import configure_logging

    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    loggers = [root, logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error"), access]
    before = [x.level for x in loggers]
    line = '%s - "%s %s HTTP/%s" %d'
    try:
        configure_logging(level, "json")
        access.info(line, "127.0.0.1:6", "GET", SELF_PROBE, "1.1", 503)
        access.info(line, "10.0.0.9:7", "GET", "/readyz", "1.1", 503)
    finally:
        for x, lv in zip(loggers, before, strict=True):
            x.setLevel(lv)
    records = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    said = [(r["msg"].split('"')[1], r["level"]) for r in records]
    other = ("GET /readyz HTTP/1.1", "info")
    if level == "info":
        assert said == [other]
    else:
        assert said == [(f"GET {SELF_PROBE} HTTP/1.1", "debug"), other]
