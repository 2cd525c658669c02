"""Why a url source does not open: v1motion.service.live.netcheck, against servers on this machine."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from v1motion.service.live.netcheck import diagnose_url
from v1motion.service.live.sources import OpenCVSource, SourceError
from v1motion.service.settings import Settings, SourceSpec


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    """An HTTP server answering ``/ok`` 200 (text/html), ``/secret`` 200 only with user:pw, and
    anything else 404 with a reason phrase carrying control characters."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ok":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
            elif self.path == "/secret":
                good = self.headers.get("Authorization") == "Basic dXNlcjpwdw=="  # user:pw
                self.send_response(200 if good else 401)
            else:
                self.send_response(404, "Not \x1b[31mFound\x07")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def tcp_server():
    """A TCP server that answers each connection with the bytes it is given (nothing: silence)."""
    servers = []

    def start(answer: bytes) -> str:
        lst = socket.create_server(("127.0.0.1", 0))
        held = []

        def serve():
            while True:
                try:
                    conn, _ = lst.accept()
                except OSError:
                    return
                held.append(conn)
                if answer:
                    conn.recv(4096)
                    conn.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        servers.append((lst, held))
        return f"127.0.0.1:{lst.getsockname()[1]}"

    yield start
    for lst, held in servers:
        lst.close()
        for c in held:
            c.close()


def test_nothing_listening_is_a_refused_connection():
    port = free_port()
    for scheme in ("http", "rtsp", "rtmp"):
        said = diagnose_url(f"{scheme}://127.0.0.1:{port}/live", 2.0)
        assert said == f"connection refused by 127.0.0.1:{port}: nothing listens there"


def test_an_unknown_host_name_is_said():
    assert diagnose_url("http://nonexistent.invalid/x.mjpg", 2.0) == (
        "the host name 'nonexistent.invalid' is not found"
    )


def test_http_answers_are_said_with_their_status(http_server):
    said = diagnose_url(f"http://{http_server}/cam.mjpg", 2.0)
    assert said == f"{http_server} answered HTTP 404 Not [31mFound"  # no control characters
    said = diagnose_url(f"http://{http_server}/ok", 2.0)
    assert (
        said == f"{http_server} answered HTTP 200 (text/html), but no video could be read from it"
    )


def test_credentials_in_the_url_are_sent_and_never_said(http_server):
    good = diagnose_url(f"http://user:pw@{http_server}/secret", 2.0)
    assert good.startswith(f"{http_server} answered HTTP 200")
    bad = diagnose_url(f"http://user:wrong@{http_server}/secret", 2.0)
    assert bad == f"{http_server} answered HTTP 401 Unauthorized" and "wrong" not in bad


def test_rtsp_servers_are_asked_for_the_stream(tcp_server):
    where = tcp_server(b"RTSP/1.0 404 Stream Not Found\r\nCSeq: 1\r\n\r\n")
    assert (
        diagnose_url(f"rtsp://{where}/live", 2.0) == f"{where} answered RTSP 404 Stream Not Found"
    )
    where = tcp_server(b"SSH-2.0-OpenSSH_9.6\r\n")
    said = diagnose_url(f"rtsp://{where}/live", 2.0)
    assert said == f"{where} accepts connections, but does not answer as an RTSP server"


def test_a_server_that_never_answers_is_said_within_the_timeout(tcp_server):
    where = tcp_server(b"")
    said = diagnose_url(f"rtsp://{where}/live", 0.3)
    assert said == f"{where} accepts connections, but did not answer an RTSP request within 0.3 s"
    assert diagnose_url(f"http://{where}/x", 0.3) == f"no answer from {where} within 0.3 s"


@pytest.mark.parametrize(
    "url, said",
    [
        ("http:///x", "the URL has no host"),
        ("http://host:99999/x", "the URL cannot be parsed"),
        ("srt://127.0.0.1/x", "no port in the URL and none known for srt:"),
    ],
)
def test_urls_that_name_no_server(url, said):
    assert diagnose_url(url, 1.0) == said


def test_a_url_source_that_does_not_open_says_why():
    port = free_port()
    spec = SourceSpec(name="gate", kind="url", target=f"rtsp://admin:hunter2@127.0.0.1:{port}/live")
    source = OpenCVSource(spec, Settings(open_timeout_s=2.0))
    with pytest.raises(SourceError) as caught:
        source.open()
    said = str(caught.value)
    assert said.endswith(f"connection refused by 127.0.0.1:{port}: nothing listens there")
    assert "hunter2" not in said and "admin" not in said


def test_ffmpeg_and_opencv_say_nothing_on_stderr():
    """Their lines went between the log's, breaking one JSON object a line."""
    code = (
        "import v1motion.service, cv2; "
        f"c = cv2.VideoCapture('http://127.0.0.1:{free_port()}/x', cv2.CAP_FFMPEG); "
        "assert not c.isOpened()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
