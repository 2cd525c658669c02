"""Behind a reverse proxy: a path prefix stripped or forwarded whole, the dashboard opened without
its last slash, and a refused websocket said to the operator (real uvicorn with its root path)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import httpx
import pytest
from pydantic import ValidationError
from service_helpers import serving
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from v1motion.service.app import create_app
from v1motion.service.proxy import RootPathTolerance, index_with_base
from v1motion.service.security import refusal_hint
from v1motion.service.settings import Settings

TOKEN = "proxy-token-0123456789"


@pytest.fixture
def prefixed(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data", engine="random", token=TOKEN, root_path="/motion"
    )
    with serving(create_app(settings), root_path="/motion") as srv:
        yield srv


@pytest.mark.parametrize("path", ["/healthz", "/motion/healthz"])
def test_a_prefix_stripped_or_forwarded_whole_reaches_the_same_route(prefixed, path):
    """A proxy that kept its prefix (Traefik's PathPrefix alone) got 404 on every path."""
    r = httpx.get(prefixed.url + path)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("prefix", ["", "/motion"])
def test_the_token_guards_the_api_under_either_form_of_the_prefix(prefixed, prefix):
    url = f"{prefixed.url}{prefix}/v1/streams"
    assert httpx.get(url).status_code == 401
    ok = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["default"] == "synthetic"
    assert (
        httpx.post(f"{prefixed.url}{prefix}/v1/language/score", json={"text": "a"}).status_code
        == 401
    )


@pytest.mark.parametrize("prefix", ["", "/motion"])
def test_a_live_socket_opens_under_either_form_of_the_prefix(prefixed, prefix):
    url = f"{prefixed.ws_url}{prefix}/v1/streams/synthetic"
    with connect(url, subprotocols=["v1motion.v1", f"v1motion.token.{TOKEN}"]) as ws:
        first = json.loads(ws.recv(timeout=20))
    assert first["type"] == "hello"


@pytest.mark.parametrize("path", ["/", "/index.html", "/motion/"])
def test_the_dashboard_page_carries_a_base_at_the_root_path(prefixed, path):
    """Opened as https://host/motion (no last slash) through a stripping proxy, its style sheet and
    script resolved against / and were 404s."""
    r = httpx.get(prefixed.url + path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<head>\n  <base href="/motion/">' in r.text
    assert "content-security-policy" in r.headers  # the page's headers, as the static files'
    for asset in ("style.css", "app.js"):  # where the base sends the browser, either form
        assert httpx.get(f"{prefixed.url}/motion/{asset}").status_code == 200


def test_without_a_root_path_the_page_is_the_file_as_it_is(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", engine="random")
    with serving(create_app(settings)) as srv:
        page = httpx.get(srv.url + "/").text
    assert "<base" not in page
    assert page == (settings.web_dir / "index.html").read_text()


def test_index_with_base_escapes_the_prefix(tmp_path):
    (tmp_path / "index.html").write_text("<html><head><title>x</title></head></html>")
    assert '<base href="/a&quot;b/">' in index_with_base(tmp_path, '/a"b')
    (tmp_path / "index.html").write_text("<html></html>")
    with pytest.raises(ValueError, match="no <head>"):
        index_with_base(tmp_path, "/motion")


async def _path_seen(middleware, path: str, root: str = "/v1") -> str:
    seen = {}

    async def app(scope, receive, send):
        seen["path"] = scope["path"]

    await middleware(app)({"type": "http", "path": path, "root_path": root}, None, None)
    return seen["path"]


def test_a_prefix_that_is_also_a_route_prefix_is_not_taken_off_twice():
    """Under V1MOTION_ROOT_PATH=/v1 a doubled prefix cannot be told from the API's own /v1 routes."""

    def clash(app):
        return RootPathTolerance(app, "/v1", own_paths=("/v1/streams", "/healthz"))

    def clear(app):
        return RootPathTolerance(app, "/motion", own_paths=("/v1/streams", "/healthz"))

    assert asyncio.run(_path_seen(clash, "/v1/v1/streams")) == "/v1/v1/streams"
    assert asyncio.run(_path_seen(clear, "/motion/motion/healthz", "/motion")) == "/motion/healthz"
    assert asyncio.run(_path_seen(clear, "/motion/motionless", "/motion")) == "/motion/motionless"


def test_a_refused_origin_is_logged_with_the_host_it_was_compared_with(prefixed, caplog):
    """Behind nginx's `Host $host` (no port) every websocket got 403, logged as "origin refused"
    only."""
    url = "ws://localhost/motion/v1/streams/synthetic"  # Host: localhost, as nginx $host says it
    sock = socket.create_connection(("127.0.0.1", prefixed.port))
    headers = {"Origin": "https://localhost:8443"}
    with caplog.at_level(logging.WARNING, logger="v1motion.service.security"):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, sock=sock, additional_headers=headers, subprotocols=["v1motion.v1"])
    assert refused.value.response.status_code == 403
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "'localhost' is the page's 'localhost:8443' but for the port" in said
    assert "proxy_set_header Host $http_host" in said


def test_the_refusal_hint_tells_a_missing_port_from_another_host():
    port = refusal_hint("https://h.example:8443", {"host": "h.example"})
    assert (
        "but for the port" in port and "https://h.example:8443 to V1MOTION_ALLOWED_ORIGINS" in port
    )
    other = refusal_hint("https://evil.example", {"host": "h.example"})
    assert "is not the page's 'evil.example'" in other


def test_forwarded_allow_ips_reaches_uvicorn(monkeypatch):
    """uvicorn believed X-Forwarded-For from loopback only, a setting nowhere documented: behind a
    proxy in another container every client was logged as the proxy."""
    from v1motion.service.commands.serve import server_config
    from v1motion.service.server import ConnectionLimits

    limits = ConnectionLimits(10, 30, 100)
    monkeypatch.setenv("V1MOTION_FORWARDED_ALLOW_IPS", "172.16.0.0/12")
    config = server_config(Settings(), None, limits)
    assert config.forwarded_allow_ips == "172.16.0.0/12" and config.proxy_headers is True
    monkeypatch.delenv("V1MOTION_FORWARDED_ALLOW_IPS")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.1")  # unset: uvicorn's own variable
    assert server_config(Settings(), None, limits).forwarded_allow_ips == "10.0.0.1"


@pytest.mark.parametrize("bad", ["10.0.0.300", "10.0.0.0/33", "proxy.internal", "127.0.0.1,,"])
def test_a_proxy_address_that_is_not_one_is_refused(monkeypatch, bad):
    """uvicorn keeps what it cannot parse as a literal host name, which a proxy's address never
    is: a typo started a server that believed no proxy, every client logged as the proxy."""
    monkeypatch.setenv("V1MOTION_FORWARDED_ALLOW_IPS", bad)
    with pytest.raises(ValidationError, match="not an IP address or network"):
        Settings()
    for good in ("*", "127.0.0.1, 10.0.0.0/8", "::1,fd00::/8"):
        monkeypatch.setenv("V1MOTION_FORWARDED_ALLOW_IPS", good)
        assert Settings().forwarded_allow_ips == good
