"""Smoke test of a running v1motion container (or any running server), from the outside.

Skipped unless ``V1MOTION_CONTAINER_URL`` is set, e.g. by ``.ci/run`` through
``../shared/tools/container_smoke.sh``::

    V1MOTION_CONTAINER_URL=http://127.0.0.1:8000 V1MOTION_CONTAINER_TOKEN=... \
        python -m pytest -q tests/container

It checks what every build has (health, readiness, dashboard, metrics behind the token, one result from
the synthetic source over the websocket) and, when the server's OpenAPI schema has ``/v1/videos``,
uploads a short video and fetches its motion map.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

URL = os.environ.get("V1MOTION_CONTAINER_URL", "").rstrip("/")
TOKEN = os.environ.get("V1MOTION_CONTAINER_TOKEN", "")
READY_TIMEOUT_S = float(os.environ.get("V1MOTION_CONTAINER_READY_TIMEOUT_S", "180"))
JOB_TIMEOUT_S = float(os.environ.get("V1MOTION_CONTAINER_JOB_TIMEOUT_S", "180"))

pytestmark = pytest.mark.skipif(
    not URL, reason="set V1MOTION_CONTAINER_URL to smoke-test a running container"
)


@pytest.fixture(scope="module")
def client():
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
    with httpx.Client(base_url=URL, headers=headers, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def ready(client):
    """Wait until the engine is loaded and compiled (``/readyz`` 200)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        last = client.get("/readyz")
        if last.status_code == 200:
            return last.json()
        assert last.status_code == 503, last.text
        assert last.json()["status"] != "failed", last.text
        time.sleep(1.0)
    pytest.fail(f"not ready after {READY_TIMEOUT_S:.0f} s: {last.text if last else 'no answer'}")


def test_healthz(client):
    res = client.get("/healthz")
    assert res.status_code == 200
    assert res.json() == {"status": "ok"}


def test_readyz(ready):
    assert ready == {"status": "ready"}


def test_dashboard_page_and_its_script(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>v1motion" in page.text
    script = client.get("/app.js")
    assert script.status_code == 200 and len(script.content) > 1000


def test_api_docs_are_served_by_the_image(client):
    """/docs and /redoc load their libraries from the image (web/vendor/), not a CDN."""
    for path, library in (
        ("/docs", "vendor/swagger-ui/swagger-ui-bundle.js"),
        ("/redoc", "vendor/redoc/redoc.standalone.js"),
    ):
        page = client.get(path)
        assert page.status_code == 200 and library in page.text, path
        assert "default-src 'self'" in page.headers["content-security-policy"]
        script = client.get(f"/{library}")
        assert script.status_code == 200 and len(script.content) > 500_000, library


def test_metrics_need_the_token(client):
    import httpx

    if not TOKEN:
        pytest.skip("no V1MOTION_CONTAINER_TOKEN: the server under test has no token")
    assert httpx.get(f"{URL}/metrics", timeout=10).status_code == 401
    res = client.get("/metrics")
    assert res.status_code == 200
    assert "v1motion_" in res.text


def test_websocket_result_from_the_synthetic_source(ready):
    from websockets.sync.client import connect

    ws_url = "ws" + URL[len("http") :] + "/v1/streams/synthetic"
    protocols = ["v1motion.v1"] + ([f"v1motion.token.{TOKEN}"] if TOKEN else [])
    with connect(ws_url, subprotocols=protocols, open_timeout=10, max_size=2**22) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello" and hello["stream"] == "synthetic"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = ws.recv(timeout=30)
            if isinstance(msg, bytes):
                assert msg[:4] == b"V1MP"  # a preview frame
                continue
            msg = json.loads(msg)
            if msg["type"] == "result":
                break
        else:
            pytest.fail("no result message within 60 s")
    assert msg["v"] == 2 and msg["stream"] == "synthetic"
    motion = msg["motion"]
    assert motion["rows"] > 0 and motion["cols"] > 0
    assert len(motion["direction_deg"]) == motion["rows"]
    assert len(motion["speed_px_per_frame"][0]) == motion["cols"]
    assert msg["timing"]["engine_ms"] > 0


def _moving_square_avi(path: Path, n: int = 16, size=(128, 96)) -> bytes:
    """An MJPG AVI of a textured square moving right by 2 px per frame."""
    import cv2
    import numpy as np

    w, h = size
    tex = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(n):
        frame = np.full((h, w, 3), 30, np.uint8)
        x, y = 8 + 2 * i, (h - 32) // 2
        frame[y : y + 32, x : x + 32] = tex
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def test_video_upload_and_motion_map(client, ready, tmp_path):
    paths = client.get("/openapi.json").json()["paths"]
    if "/v1/videos" not in paths:
        pytest.skip("this build has no video jobs (/v1/videos is not in its OpenAPI schema)")
    data = _moving_square_avi(tmp_path / "square.avi")
    res = client.post("/v1/videos", files={"file": ("square.avi", data, "video/x-msvideo")})
    assert res.status_code == 202, res.text
    job = res.json()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job['status']} after {JOB_TIMEOUT_S} s"
        time.sleep(0.5)
        job = client.get(f"/v1/videos/{job['id']}").json()
    assert job["status"] == "succeeded", job
    motion = client.get(job["links"]["motion.json"])
    assert motion.status_code == 200
    frames = motion.json()["frames"]
    assert len(frames) == 16
    assert len(frames[0]["direction_deg"]) > 0 and len(frames[0]["direction_deg"][0]) > 0


def test_spike_model_fit_evaluate_and_sample(client):
    """The spike endpoints' worker processes start and answer inside the container, a large body
    (read by the worker's reader process) included."""
    paths = client.get("/openapi.json").json()["paths"]
    if "/v1/spikes/models" not in paths:
        pytest.skip("this build has no spike endpoints")
    import numpy as np

    counts = np.random.default_rng(0).poisson(0.3, (4, 200, 3)).tolist()
    res = client.post("/v1/spikes/models", json={"counts": counts, "kind": "glm"}, timeout=120)
    assert res.status_code == 201, res.text
    mid = res.json()["id"]
    big = np.random.default_rng(1).poisson(0.3, (4, 15_000, 3))  # about 0.9 MB of JSON
    res = client.post(
        f"/v1/spikes/models/{mid}/evaluate", json={"counts": big.tolist()}, timeout=120
    )
    assert res.status_code == 200, res.text
    assert res.json()["n_spikes"] == big.sum()
    res = client.post(f"/v1/spikes/models/{mid}/sample", json={"n_bins": 50, "seed": 3})
    assert res.status_code == 200, res.text
    assert np.asarray(res.json()["counts"]).shape == (1, 50, 3)
