"""Token authentication and Origin checks; configuration refused at start-up."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_helpers import (
    pattern_factory,
    random_engine,
    serve_refused,
    server_warnings,
    serving,
)
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from v1motion.service.app import create_app
from v1motion.service.settings import Settings, SourceSpec, config_errors

TOKEN = "s3cret-token_1"


def _app(**settings):
    """The app on a synthetic source and a random engine; ``settings`` as for ``Settings``."""
    return create_app(
        Settings(sources=["synthetic"], **settings),
        engine_factory=random_engine,
        source_factories={"synthetic": pattern_factory()},
    )


def _token_app():
    return _app(host="0.0.0.0", token=TOKEN)


@pytest.fixture
def client():
    with TestClient(_token_app()) as c:
        yield c


def test_non_localhost_without_token_is_refused_at_start():
    with pytest.raises(ValidationError, match="V1MOTION_TOKEN"):
        Settings(host="0.0.0.0")
    with pytest.raises(ValidationError, match="V1MOTION_TOKEN"):
        Settings(host="192.168.1.20")
    assert not Settings(host="127.0.0.1").requires_token
    assert not Settings(host="::1").requires_token


@pytest.mark.parametrize("blank", ["", " ", "\t"])
def test_an_empty_token_is_refused_at_start(blank):
    """`-e V1MOTION_TOKEN=$TOKEN` with TOKEN unset started a service that refused every token."""
    with pytest.raises(ValidationError, match="(?s)token.*is empty"):
        Settings(host="0.0.0.0", token=blank)
    with pytest.raises(ValidationError, match="(?s)token.*is empty"):
        Settings(token=blank)


@pytest.mark.parametrize(
    "token", ["two words", "line\nbreak", "t\u00f6ken-with-umlaut", "tab\tbed"]
)
def test_a_token_no_header_can_carry_is_refused_at_start_without_saying_it(token):
    """The security probe started a service on a token with a space and a newline: no client could
    ever send it in an Authorization header."""
    with pytest.raises(ValidationError) as refused:
        Settings(host="0.0.0.0", token=token)
    said = config_errors(refused.value)
    assert "which an HTTP header cannot carry" in said and token not in said


def test_a_short_token_is_warned_of_at_start(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")  # refused after the warning: ends at once
    out = serve_refused("--token", "abc", "--source", f"c=file:{tmp_path / 'notes.mp4'}")
    assert out.returncode == 2
    assert "warning: the token is shorter than 16 characters" in out.stderr
    assert "abc" not in out.stderr


def test_http_routes_need_the_token(client):
    assert client.get("/v1/streams").status_code == 401
    assert "token" in client.get("/v1/streams").json()["detail"]
    assert client.get("/metrics").status_code == 401
    assert client.get("/v1/streams", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.get("/v1/streams", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    )
    assert client.get("/v1/streams", headers={"X-V1Motion-Token": TOKEN}).status_code == 200
    # probes and the dashboard's files stay open: the page must load to ask for the token
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200


def test_websocket_token_as_subprotocol(client):
    with client.websocket_connect(
        "/v1/streams/synthetic", subprotocols=["v1motion.v1", f"v1motion.token.{TOKEN}"]
    ) as ws:
        assert ws.accepted_subprotocol == "v1motion.v1"
        assert json.loads(ws.receive_text())["type"] == "hello"


def test_websocket_token_as_first_message(client):
    with client.websocket_connect("/v1/streams/synthetic") as ws:
        ws.send_text(json.dumps({"type": "auth", "token": TOKEN}))
        assert json.loads(ws.receive_text())["type"] == "hello"


def _first_error(ws) -> dict:
    """The first error among the messages coming (results, previews and statuses pass by)."""
    for _ in range(200):
        m = ws.receive()
        if m.get("text") and json.loads(m["text"])["type"] == "error":
            return json.loads(m["text"])
    raise AssertionError("no error in 200 messages")


AUTH = json.dumps({"type": "auth", "token": TOKEN})
BAD_OPTIONS = json.dumps({"type": "options", "flow": "yes"})


@pytest.mark.parametrize("tokened", [False, True])
def test_an_auth_message_on_an_authorised_socket_is_ignored(tokened):
    """A client that always sends the documented auth message got a bad_message for it from a
    service that needs no token, or after it had offered the token in the handshake (integrator's
    probe). The bad options after it are the first error either way."""
    app = _token_app() if tokened else _app()
    offer = ["v1motion.v1", f"v1motion.token.{TOKEN}"] if tokened else None
    with TestClient(app) as c:
        with c.websocket_connect("/v1/streams/synthetic", subprotocols=offer) as ws:
            if not tokened:
                ws.send_text(AUTH)  # as the first message, before the hello
            assert json.loads(ws.receive_text())["type"] == "hello"
            ws.send_text(AUTH)
            ws.send_text(BAD_OPTIONS)
            error = _first_error(ws)
            assert error["code"] == "bad_message" and '"flow"' in error["detail"], error
        with c.websocket_connect("/v1/camera", subprotocols=offer) as ws:
            if not tokened:
                ws.send_text(AUTH)
            ws.send_text(AUTH)  # before the hello, too
            ws.send_text(json.dumps({"type": "hello", "width": 64, "height": 64}))
            assert json.loads(ws.receive_text())["type"] == "ready"
            ws.send_text(AUTH)
            ws.send_text(BAD_OPTIONS)
            error = _first_error(ws)
            assert error["code"] == "bad_message" and '"flow"' in error["detail"], error


@pytest.mark.parametrize(
    "first",
    [json.dumps({"type": "auth", "token": "nope"}), "garbage", "[" * 100_000],  # nested deep
)
def test_websocket_wrong_token_is_closed(client, first, caplog):
    caplog.set_level("INFO", "v1motion.service.security")
    with client.websocket_connect("/v1/camera") as ws:
        ws.send_text(first)
        m = json.loads(ws.receive_text())
        assert m["code"] == "unauthorized"
        with pytest.raises(WebSocketDisconnect) as exc:
            ws.receive_text()
        assert exc.value.code == 4401
    # the log said only "[accepted]" (operators' probe)
    assert "websocket /v1/camera refused (4401): missing or wrong token" in caplog.text


def test_websocket_from_a_foreign_origin_is_refused():
    with TestClient(create_app(Settings(), engine_factory=random_engine)) as c:
        with pytest.raises(WebSocketDenialResponse) as exc:
            with c.websocket_connect("/v1/camera", headers={"Origin": "https://evil.example"}):
                pass
        assert exc.value.status_code == 403 and "cross-site" in exc.value.json()["detail"]
        assert exc.value.headers["x-content-type-options"] == "nosniff"
        # the page's own origin, and a configured one, are allowed
        with c.websocket_connect("/v1/camera", headers={"Origin": "http://testserver"}) as ws:
            ws.send_text(json.dumps({"type": "hello", "width": 64, "height": 64}))
            assert json.loads(ws.receive_text())["type"] == "ready"
    s = Settings(allowed_origins=["https://dash.example"])
    with TestClient(create_app(s, engine_factory=random_engine)) as c:
        with c.websocket_connect("/v1/camera", headers={"Origin": "https://dash.example"}) as ws:
            ws.send_text(json.dumps({"type": "hello", "width": 64, "height": 64}))
            assert json.loads(ws.receive_text())["type"] == "ready"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus:1", "unknown kind 'bogus'"),
        ("x=synthetic:640x480", "synthetic source 'x' takes no target"),  # was ignored silently
        ("Big Name=camera:0", "source name"),
        ("cam=camera:front", "device index"),
        ("clip=file:/no/such/video.mp4", "no such file"),
        ("net=url:file:///etc/passwd", "scheme 'file' not supported"),
        ("url:rtsp://x/y", "a url source needs a name"),
        ("url:rtsp://admin:s3cret@cam/live", "a url source needs a name"),
        ("gate=rtps://admin:s3cret@cam/live", "source 'gate': unknown kind 'rtps'"),
        ("rtsp://admin:s3cret@cam/live", "unknown kind 'rtsp'"),
    ],
)
def test_bad_sources_are_refused_with_a_clear_message(text, message):
    with pytest.raises((ValueError, ValidationError), match=message) as refused:
        Settings(sources=[text])
    said = refused.value
    if isinstance(said, ValidationError):  # as `v1motion serve` prints it: without the input
        said = config_errors(said)
    assert message in str(said) and "s3cret" not in str(said)  # a URL's password is never echoed


def test_source_strings_and_duplicates():
    s = Settings(sources=["synthetic", "cam0=camera:0", "gate=url:rtsp://10.0.0.2/live"])
    assert [(x.name, x.kind, x.target) for x in s.sources] == [
        ("synthetic", "synthetic", ""),
        ("cam0", "camera", "0"),
        ("gate", "url", "rtsp://10.0.0.2/live"),
    ]
    assert "10.0.0.2" not in s.sources[2].describe()  # URLs may hold credentials: never shown
    with pytest.raises(ValidationError, match="duplicate source names: synthetic"):
        Settings(sources=["synthetic", SourceSpec(name="synthetic", kind="synthetic")])


def test_sources_from_the_environment(monkeypatch):
    monkeypatch.setenv("V1MOTION_SOURCES", json.dumps(["synthetic", "cam=camera:1"]))
    assert [s.name for s in Settings().sources] == ["synthetic", "cam"]


# Routes that answer without a token by design: probes and the dashboard's static files.
PUBLIC = {"/healthz", "/readyz"}


def _leaf_routes(routes, prefix=""):
    """Every route with its full path, also inside routers that FastAPI keeps as included objects."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _leaf_routes(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
        else:
            yield prefix + getattr(route, "path", ""), route


def _api_routes(app):
    from fastapi.routing import APIRoute, APIWebSocketRoute

    http, ws = [], []
    for path, route in _leaf_routes(app.routes):
        if path in PUBLIC or path.startswith(("/docs", "/redoc", "/openapi")) or path == "/":
            continue
        if path == "/{path:path}":  # websockets to no route: their 404
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        if isinstance(route, APIRoute):
            http += [(m, concrete) for m in sorted(route.methods - {"HEAD"})]
        elif isinstance(route, APIWebSocketRoute):
            ws.append(concrete)
    return http, ws


def test_every_http_route_refuses_a_missing_or_wrong_token(client):
    http, _ = _api_routes(client.app)
    prefixes = {p.split("/")[2] for _, p in http if p.startswith("/v1/")}
    assert {"spikes", "language", "videos", "streams"} <= prefixes  # the walk sees every router
    for method, path in http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-V1Motion-Token": "wrong"}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)


def test_an_api_route_included_without_the_routers_guard_still_needs_the_token():
    """A contributor's first route, included with app.include_router alone, answered 200 to anyone."""
    from fastapi import APIRouter

    extra = APIRouter(prefix="/v1/about")

    @extra.get("")
    def about() -> dict:
        return {"name": "v1motion"}

    @extra.delete("/{item}")
    def forget(item: str) -> dict:
        return {"gone": item}

    app = _token_app()
    n = len(app.router.routes)
    app.include_router(extra)  # no guard of its own; moved before the dashboard's catch-all mount
    added = app.router.routes[n:]
    del app.router.routes[n:]
    app.router.routes[:0] = added
    with TestClient(app) as c:
        for method, path in (
            ("GET", "/v1/about"),
            ("DELETE", "/v1/about/x"),
            ("HEAD", "/v1/about"),
        ):
            r = c.request(method, path)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "connection" not in r.headers  # no body was left unread
        assert c.get("/v1/about", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {
            "name": "v1motion"
        }
        assert c.options("/v1/about").status_code != 401  # a CORS preflight carries no token
        assert c.get("/healthz").status_code == 200  # outside /v1: public


def test_spike_and_language_routes_accept_the_right_token(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/v1/language/next", json={"context": "the", "k": 3}, headers=auth)
    assert r.status_code != 401
    assert client.get("/v1/spikes/models/nope", headers=auth).status_code == 404


def test_every_websocket_route_refuses_a_wrong_token(client):
    _, ws = _api_routes(client.app)
    assert {"/v1/camera", "/v1/streams/x"} <= set(ws)
    for path in ws:
        with client.websocket_connect(path) as sock:
            sock.send_text(json.dumps({"type": "auth", "token": "wrong"}))
            assert json.loads(sock.receive_text())["code"] == "unauthorized"
            with pytest.raises(WebSocketDisconnect) as exc:
                sock.receive_text()
            assert exc.value.code == 4401


@pytest.mark.parametrize("path", ["/v1/language/score", "/v1/spikes/models"])
def test_a_body_without_the_token_is_refused_before_it_is_read(path):
    """FastAPI reads a JSON body before any dependency, the token check included: a tokenless
    client could send 15 MB bodies (the probe: 60 at once took the server from 442 to 856 MB), or
    hold a connection by sending half of one. Now the 401 comes with the headers alone."""
    with serving(_token_app()) as srv, socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.settimeout(5)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            'Content-Length: 15000000\r\n\r\n{"text": "'.encode()
        )
        head = sock.recv(65536).decode(errors="replace")  # the body has not come: answered anyway
        assert head.startswith("HTTP/1.1 401"), head
        assert "missing or wrong token" in head and "www-authenticate: bearer" in head.lower()


def test_a_stream_socket_refuses_json_nested_too_deep_as_a_bad_message(client):
    with client.websocket_connect("/v1/streams/synthetic") as ws:
        ws.send_text(json.dumps({"type": "auth", "token": TOKEN}))
        assert json.loads(ws.receive_text())["type"] == "hello"
        ws.send_text("[" * 100_000)
        while (m := json.loads(ws.receive_text()))["type"] != "error":
            pass
        assert m["code"] == "bad_message" and "nested too deep" in m["detail"]


def test_a_websocket_that_leaves_or_sends_binary_while_the_token_is_awaited():
    """On a real uvicorn: a client that goes away while the server waits for its token is let go
    without an error in the server's log (it logged "Exception in ASGI application" with a
    traceback); a binary first message is refused like a wrong token."""
    app = _token_app()
    _, paths = _api_routes(app)
    with serving(app) as srv, server_warnings() as warnings:
        for path in paths:
            ws = connect(srv.ws_url + path)  # no token in the handshake, and no message
            time.sleep(0.2)  # the server waits for its first message
            ws.close()
            with connect(srv.ws_url + path) as ws:
                ws.send(b"\xff\xd8 not a token")
                assert json.loads(ws.recv(timeout=5))["code"] == "unauthorized"
                with pytest.raises(ConnectionClosed) as exc:
                    ws.recv(timeout=5)
                assert exc.value.rcvd.code == 4401
        with connect(srv.ws_url + "/v1/streams/synthetic") as ws:  # the server goes on
            ws.send(json.dumps({"type": "auth", "token": TOKEN}))
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
    assert warnings == []


def test_the_schema_declares_the_token_on_every_guarded_operation_and_only_there(client):
    """/docs offers "Authorize" from this; the operations that refuse a missing token (the walk
    above, /metrics included) are exactly the ones that say they need it, and that 401 may answer."""
    schema = client.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["token"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "X-V1Motion-Token" in scheme["description"]
    declared = {
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if op.get("security") == [{"token": []}]
    }
    http, _ = _api_routes(client.app)
    assert ("GET", "/metrics") in http
    assert declared - set(http) == set(), "declared but not guarded"
    assert set(http) - declared == set(), (
        "guarded but not declared: a router under /v1 included outside the `api` tuple of "
        "create_app (service/app.py; docs/architecture.md)"
    )
    for item in schema["paths"].values():  # and they document the 401 (schemathesis checks it)
        for op in item.values():
            assert ("401" in op["responses"]) == ("security" in op), op["operationId"]
    for path in PUBLIC:
        assert "security" not in schema["paths"][path]["get"]


def test_every_answer_says_how_a_browser_may_use_it(client, tmp_path):
    """The dashboard, the API, errors and the middleware's own refusals all carry the headers."""
    from v1motion.service.security import API_DOCS_POLICY, SECURITY_HEADERS

    def check(r, policy=SECURITY_HEADERS["content-security-policy"]):
        for name, value in SECURITY_HEADERS.items():
            want = policy if name == "content-security-policy" else value
            assert r.headers.get(name) == want, (r.request.url, r.status_code, name)

    with TestClient(_app(data_dir=tmp_path / "a")) as local:
        for path in ("/", "/index.html", "/app.js", "/healthz", "/openapi.json", "/v1/streams"):
            r = local.get(path)
            assert r.status_code == 200, path
            check(r)
        check(local.get("/nosuch"))  # 404
        check(local.post("/v1/language/next", json={"k": "x"}))  # 422
        check(local.get("/", headers={"Host": "attacker.example"}))  # the Host guard's 403
        for path in ("/docs", "/redoc"):
            r = local.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            check(r, API_DOCS_POLICY)
            assert local.head(path).status_code == 200
    check(client.get("/v1/streams"))  # 401
    assert "'unsafe-inline'" not in SECURITY_HEADERS["content-security-policy"]
    assert "frame-ancestors 'none'" in API_DOCS_POLICY

    with TestClient(_app(data_dir=tmp_path / "b", web_dir=tmp_path / "none")) as bare:
        r = bare.get("/docs")
        assert r.status_code == 404 and "docs.html" in r.json()["detail"]


WEB = Path(__file__).resolve().parents[2] / "web"


@pytest.mark.parametrize("page", ["index.html", "docs.html", "redoc.html"])
def test_pages_load_only_the_services_own_files(page):
    """No CDN, no web fonts: every script and style a page names is a file of web/ (so /docs and
    /redoc work offline, and no third-party script sees a token typed into them)."""
    html = (WEB / page).read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs
    for ref in refs:
        if ref.startswith("data:image/svg+xml"):
            continue
        assert "://" not in ref and not ref.startswith("/"), ref  # relative: path prefixes work
        assert (WEB / ref).is_file(), ref
    assert "<script>" not in html and "style=" not in html  # the policy allows no inline script


def test_vendored_api_docs_match_the_makefile_pins():
    """`make vendor-docs` remakes web/vendor/ from the versions the Makefile pins."""
    makefile = (WEB.parent / "Makefile").read_text()
    swagger = re.search(r"^SWAGGER_UI := (\S+)", makefile, re.M).group(1)
    redoc = re.search(r"^REDOC := (\S+)", makefile, re.M).group(1)
    for name in ("SWAGGER_UI_SHA512", "REDOC_SHA512"):
        assert re.search(rf"^{name} := [0-9a-f]{{128}}$", makefile, re.M), name
    bundle = (WEB / "vendor/swagger-ui/swagger-ui-bundle.js").read_text()
    assert f'PACKAGE_VERSION:"{swagger}"' in bundle
    redoc_js = (WEB / "vendor/redoc/redoc.standalone.js").read_text()
    assert f'"{redoc}"' in redoc_js
    assert "cdn.redoc.ly" not in redoc_js  # its footer's logo: a blocked request, a console error
    for licence in ("swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE"):
        assert (WEB / "vendor" / licence).stat().st_size > 0


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/streams/a%2Fb", "/"])
def test_a_websocket_to_no_route_gets_a_404_that_says_where_sockets_are(path):
    """It got Starlette's bare 403: no reason, none of the security headers."""
    with serving(_app()) as srv:
        with pytest.raises(InvalidStatus) as refused:
            connect(srv.ws_url + path)
    response = refused.value.response
    assert response.status_code == 404
    assert b"they are v1/streams/{name} and v1/camera" in response.body
    assert response.headers["X-Frame-Options"] == "DENY"


def test_a_first_message_longer_than_an_auth_message_is_not_parsed(client):
    """Before the token check, a tokenless socket's first message (up to 1 MiB) was parsed as
    JSON on the event loop: 200 sockets sending 1 MiB each held it for 1.5 s. Longer than an
    auth message can be, it is refused unparsed, even holding the right token."""
    from v1motion.service import security

    padded = json.dumps({"type": "auth", "token": TOKEN, "pad": "x" * security.AUTH_MESSAGE_MAX})
    with client.websocket_connect("/v1/streams/synthetic") as ws:
        ws.send_text(padded)
        assert json.loads(ws.receive_text())["code"] == "unauthorized"
        with pytest.raises(WebSocketDisconnect) as exc:
            ws.receive_text()
        assert exc.value.code == 4401


def test_every_answer_is_counted_by_route_template_and_status(client):
    """From the operators' probe: 500s, refusals and slow answers were in no metric. Each answer is
    counted by method, the route's path template (one series per route, never per id) and status,
    refusals before routing too, and timed."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    client.get("/v1/streams", headers=auth)
    client.get("/v1/videos/0123456789abcdef0123456789abcdef", headers=auth)
    client.get("/v1/streams")  # no token
    client.post("/v1/language/score", json={"text": 1}, headers=auth)
    client.get("/app.js")
    text = client.get("/metrics", headers=auth).text
    for line in (
        'v1motion_http_requests_total{method="GET",route="/v1/streams",status="200"} 1.0',
        'v1motion_http_requests_total{method="GET",route="/v1/videos/{job_id}",status="404"} 1.0',
        'v1motion_http_requests_total{method="GET",route="unrouted",status="401"} 1.0',
        'v1motion_http_requests_total{method="POST",route="/v1/language/score",status="422"} 1.0',
        'v1motion_http_requests_total{method="GET",route="web",status="200"} 1.0',
        'v1motion_http_request_seconds_count{method="GET",route="/v1/streams"} 1.0',
    ):
        assert line in text, line
    assert "0123456789abcdef" not in text
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"):
        assert f"\n{name} " in text, name  # the registry is the app's own: they were missing
