"""The dashboard's files gzipped for a browser that takes them (a phone on a slow link waited 1.7 s
for 85 KB of script, style and page before it could show anything)."""

from __future__ import annotations

import gzip
import os

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount

from v1motion.service.app import create_app
from v1motion.service.settings import PROJECT_ROOT, Settings
from v1motion.service.webfiles import CompressedStaticFiles

TEXT = ("function f() { return 1; }\n" * 200).encode()  # 5.4 KB of script


@pytest.fixture
def site(tmp_path):
    (tmp_path / "app.js").write_bytes(TEXT)
    (tmp_path / "tiny.css").write_bytes(b"body{}")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG" + bytes(4000))
    app = Starlette(routes=[Mount("/", CompressedStaticFiles(directory=tmp_path, html=True))])
    with TestClient(app) as client:
        yield client, tmp_path


def raw(client, path, **headers):
    with client.stream("GET", path, headers=headers) as r:
        return r, b"".join(r.iter_raw())


def test_a_text_file_is_gzipped_for_a_client_that_takes_it(site):
    client, _ = site
    r, body = raw(client, "/app.js", **{"Accept-Encoding": "br, gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == TEXT and len(body) < len(TEXT) / 10
    assert r.headers["content-length"] == str(len(body))
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["vary"] == "Accept-Encoding" and "etag" in r.headers
    assert "accept-ranges" not in r.headers  # a range of the gzipped bytes is not offered


@pytest.mark.parametrize("accept", ["identity", "gzip;q=0, identity", ""])
def test_a_client_that_does_not_take_gzip_gets_the_file(site, accept):
    client, _ = site
    r, body = raw(client, "/app.js", **{"Accept-Encoding": accept})
    assert "content-encoding" not in r.headers and body == TEXT
    assert r.headers["vary"] == "Accept-Encoding"  # a cache keeps the two apart


def test_ranges_small_files_pictures_and_not_modified_are_served_as_they_are(site):
    client, _ = site
    r, body = raw(client, "/app.js", Range="bytes=0-9")
    assert r.status_code == 206 and body == TEXT[:10] and "content-encoding" not in r.headers
    for path in ("/tiny.css", "/pic.png"):
        r, _ = raw(client, path)
        assert "content-encoding" not in r.headers and "vary" not in r.headers, path
    etag = client.get("/app.js").headers["etag"]
    again = client.get("/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    head = client.head("/app.js")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(TEXT))


def test_a_file_changed_on_disk_is_compressed_again(site):
    client, folder = site
    assert client.get("/app.js").content == TEXT  # compressed once, kept
    new = TEXT.replace(b"return 1", b"return 2")
    (folder / "app.js").write_bytes(new)
    st = os.stat(folder / "app.js")
    os.utime(folder / "app.js", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r, body = raw(client, "/app.js")
    assert gzip.decompress(body) == new


def test_the_dashboard_itself_is_served_gzipped(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, engine="random"))
    with TestClient(app) as client:
        for path, name in (("/", "index.html"), ("/app.js", "app.js"), ("/style.css", "style.css")):
            r, body = raw(client, path)
            assert r.headers.get("content-encoding") == "gzip", path
            assert gzip.decompress(body) == (PROJECT_ROOT / "web" / name).read_bytes()
