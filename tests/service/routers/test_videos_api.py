"""/v1/videos: the happy path and at least twelve kinds of bad input, none of them a 5xx."""

import os
import tempfile
import time

import pytest
import video_samples as vs
from fastapi.testclient import TestClient

from v1motion.service.app import create_app
from v1motion.service.settings import Settings

MAX_UPLOAD_MB = 0.25


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data_dir, video_max_upload_mb=MAX_UPLOAD_MB, video_engine="random")
    app = create_app(settings)  # the real engine (small, random weights) in a real worker process
    with TestClient(app) as c:
        c.data_dir = data_dir
        yield c


def upload(client, data: bytes, filename="clip.avi", content_type="video/x-msvideo"):
    r = client.post("/v1/videos", files={"file": (filename, data, content_type)})
    assert r.status_code < 500, r.text
    return r


def wait_done(client, job_id, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        body = client.get(f"/v1/videos/{job_id}").json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def job_folders(client):
    return sorted(p.name for p in (client.data_dir / "videos").iterdir())


def test_upload_process_fetch_delete(client, tmp_path):
    r = upload(client, vs.avi(tmp_path, n=12))
    assert r.status_code == 202, r.text
    job = r.json()
    assert (
        job["status"] in ("queued", "running")
        and r.headers["location"] == f"/v1/videos/{job['id']}"
    )
    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == {"frames_done": 12, "frames_total": 12, "fraction": 1.0}
    assert job["progress"]["frames_total"] == 12  # known from the probe while it waits
    assert done["result"]["frames"] == 12 and done["result"]["codec"] == "mjpg"
    assert done["result"]["cell_px"] == 16
    assert done["result"]["overlay"] is True
    results = {"motion.json", "motion.npz", "overlay.mp4", "summary.png"}
    assert results <= set(done["links"])

    base = f"/v1/videos/{job['id']}"
    motion = client.get(f"{base}/motion.json")
    assert motion.status_code == 200 and len(motion.json()["frames"]) == 12
    npz = client.get(f"{base}/motion.npz")
    assert npz.status_code == 200 and npz.content[:2] == b"PK"
    overlay = client.get(f"{base}/overlay.mp4")
    assert overlay.headers["content-type"] == "video/mp4"
    head = client.head(f"{base}/overlay.mp4")  # the size and type without the body
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(overlay.content))
    png = client.get(f"{base}/summary.png")
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    # a client that has the file does not download it again (an ETag was sent, never honoured)
    again = client.get(f"{base}/overlay.mp4", headers={"If-None-Match": overlay.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == overlay.headers["etag"]
    other = client.get(f"{base}/overlay.mp4", headers={"If-None-Match": png.headers["etag"]})
    assert other.status_code == 200 and other.content == overlay.content
    r = client.get(f"{base}/summary.jpg")  # a name the schema's list does not have: 404 naming them
    assert r.status_code == 404 and "summary.png" in r.json()["detail"]
    # the schema says what each file is, so /docs offers the names and a download
    op = client.get("/openapi.json").json()["paths"]["/v1/videos/{job_id}/{name}"]["get"]
    names = next(p for p in op["parameters"] if p["name"] == "name")["schema"]["enum"]
    assert names == ["motion.json", "motion.npz", "overlay.mp4", "summary.png"]
    assert set(op["responses"]["200"]["content"]) == {
        r.headers["content-type"] for r in (motion, npz, overlay, png)
    }
    listed = client.get("/v1/videos").json()
    assert job["id"] in [j["id"] for j in listed["data"]] and listed["count"] >= 1

    assert client.delete(base).status_code == 204
    gone = client.get(base)  # not the 404 of an id that never was
    assert gone.status_code == 410 and "deleted by a client" in gone.json()["detail"]
    assert client.delete(base).status_code == 410
    assert client.get(f"{base}/motion.json").status_code == 410
    assert job["id"] not in job_folders(client)


def test_a_range_is_served_refused_in_json_or_ignored(client, tmp_path):
    """A player seeking in overlay.mp4 gets its bytes (206); a range past the file's end is a 416
    with a JSON ``detail`` as every other API error (Starlette answered it, and a Range that does
    not parse, in plain text: a client reading ``detail`` failed on both); a Range that does not
    parse is ignored and the whole file sent (RFC 9110 §14.2), where it was a 400."""
    done = wait_done(client, upload(client, vs.avi(tmp_path, n=6)).json()["id"])
    url = f"/v1/videos/{done['id']}/overlay.mp4"
    whole = client.get(url).content
    part = client.get(url, headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == whole[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(whole)}"
    beyond = client.get(url, headers={"Range": f"bytes={len(whole)}-"})
    assert beyond.status_code == 416, beyond.text
    assert beyond.headers["content-range"] == f"bytes */{len(whole)}"
    assert str(len(whole)) in beyond.json()["detail"]
    for odd in ("bytes=9-3", "lines=0-5", "bytes=x-y"):
        r = client.get(url, headers={"Range": odd})
        assert r.status_code == 200 and r.content == whole, (odd, r.status_code, r.text[:80])
    # a copy that changed since the client's If-Range: the whole file, as before
    stale = client.get(url, headers={"Range": "bytes=0-3", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == whole
    same = client.get(url, headers={"Range": "bytes=0-3", "If-Range": part.headers["etag"]})
    assert same.status_code == 206 and same.content == whole[:4]


def test_format_characters_in_the_name_are_only_a_label(client, tmp_path):
    r = upload(client, vs.avi(tmp_path, n=6), filename="../../clip%d%s%n.avi")
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["filename"] == "clip%d%s%n.avi"
    folder = client.data_dir / "videos" / job["id"]
    deadline = time.monotonic() + 10  # the upload goes once the job's end is recorded
    while (folder / "input.bin").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(p.name for p in folder.iterdir()) == ["out"]


def test_a_phones_3gp_and_a_long_name_are_taken_as_client_libraries_send_them(client, tmp_path):
    """From the batch probe: httpx and requests name a .3gp file's part audio/3gpp (Python's
    mimetypes), which was a 415; a 300-character name was cut to 200 and lost its .mp4."""
    r = upload(client, vs.mp4(tmp_path, n=6), filename="phone.3gp", content_type="audio/3gpp")
    assert r.status_code == 202, r.text
    long = "v" * 300 + ".mp4"
    r = upload(client, vs.mp4(tmp_path, n=6), filename=long, content_type="video/mp4")
    assert r.status_code == 202, r.text
    assert r.json()["filename"] == "v" * 196 + ".mp4"
    r = upload(client, vs.mp4(tmp_path, n=6), filename="v" * 300, content_type="video/mp4")
    assert r.json()["filename"] == "v" * 200
    r = upload(client, vs.png_image(), filename="a.png", content_type="audio/mpeg")
    assert r.status_code == 415 and "not a video type" in r.json()["detail"]


def _huge(tmp):
    return vs.huge_dimensions_avi(tmp)


BAD_UPLOADS = [
    # name, bytes maker, content type, status, words in the detail
    ("empty", lambda t: b"", "video/mp4", 422, "empty"),
    ("random bytes", lambda t: os.urandom(4096), "video/mp4", 415, "unrecognised format"),
    ("still image", lambda t: vs.png_image(), "image/png", 415, "not a video type"),
    ("still image as video", lambda t: vs.png_image(), "video/mp4", 415, "PNG image"),
    ("truncated mp4", lambda t: vs.mp4(t)[:1200], "video/mp4", 422, "could not be opened"),
    ("huge dimensions", _huge, "video/x-msvideo", 422, "8000x6000 exceeds"),
    ("zero fps", vs.zero_fps_avi, "video/x-msvideo", 422, "frame rate"),
    (
        "too narrow once shrunk",  # 1300x64: 640x32 after the longer side is shrunk to 640
        lambda t: vs.write_video(t / "n.avi", "MJPG", n=3, size=(1300, 64)),
        "video/x-msvideo",
        422,
        "shrunk to 640x32",
    ),
    ("wrong content type", lambda t: vs.avi(t), "text/plain", 415, "not a video type"),
    ("hls playlist", lambda t: vs.hls_playlist(t / "x.mp4"), "video/mp4", 415, "HLS playlist"),
    ("ffconcat", lambda t: vs.ffconcat_script(t / "x.mp4"), "video/mp4", 415, "ffconcat"),
    ("no video stream", vs.no_video_stream_avi, "video/x-msvideo", 422, "no video stream"),
    (
        "codec not allowed",
        lambda t: vs.write_video(t / "r.avi", None),
        "video/x-msvideo",
        422,
        "codec",
    ),
]


@pytest.mark.parametrize(
    "make, content_type, status, words",
    [b[1:] for b in BAD_UPLOADS],
    ids=[b[0] for b in BAD_UPLOADS],
)
def test_bad_upload_is_refused_with_a_reason(client, tmp_path, make, content_type, status, words):
    before = job_folders(client)
    r = upload(client, make(tmp_path), content_type=content_type)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert job_folders(client) == before  # nothing half-written


def test_over_the_size_limit_is_413_and_leaves_no_file(client):
    before_tmp = set(os.listdir(tempfile.gettempdir()))
    before = job_folders(client)
    big = b"\x00\x00\x00\x18ftypisom" + os.urandom(int(MAX_UPLOAD_MB * 1024 * 1024))
    r = upload(client, big, content_type="video/mp4")
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]

    # Without a Content-Length to reject early, the streamed body is cut off at the limit.
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=a.mp4\r\n"
        yield b"Content-Type: video/mp4\r\n\r\n"
        for _ in range(40):
            yield bytes(16 * 1024)
        yield b"\r\n--b--\r\n"

    r = client.post(
        "/v1/videos", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413, r.text

    def other_field():  # a huge non-file field counts against the limit too
        yield b"--b\r\nContent-Disposition: form-data; name=notes\r\n\r\n"
        for _ in range(40):
            yield bytes(16 * 1024)
        yield b"\r\n--b--\r\n"

    r = client.post(
        "/v1/videos",
        content=other_field(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413, r.text
    assert job_folders(client) == before
    assert set(os.listdir(tempfile.gettempdir())) - before_tmp == set()


def test_an_upload_the_disk_has_no_room_for_is_507_and_leaves_no_file(client, monkeypatch):
    """On a full disk an upload was a 400 "malformed multipart body: [Errno 28] ...": the client's
    fault, by its status. Refused from its Content-Length when the room is known to be short,
    and when the disk fills while it arrives."""
    import errno

    from v1motion.service.jobs import upload as upload_module
    from v1motion.service.routers import videos

    before = job_folders(client)
    data = vs.avi(client.data_dir.parent, n=6)
    monkeypatch.setattr(videos, "free_mb", lambda folder: 0.001)
    files = {"file": ("clip.avi", data, "video/x-msvideo")}
    r = client.post("/v1/videos", files=files)  # a 5xx: the server's state, not the request
    assert r.status_code == 507
    assert r.json()["detail"].startswith("the server's disk has no room for the upload (")
    assert job_folders(client) == before
    monkeypatch.undo()

    real_open = open

    class FullFile:
        def __init__(self, path, mode):
            self.f = real_open(path, mode)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", "/srv/secret/input.bin")

        def close(self):
            self.f.close()

    monkeypatch.setattr(upload_module, "open", FullFile, raising=False)
    r = client.post("/v1/videos", files=files)
    assert r.status_code == 507, r.text
    assert "disk has no room for the upload" in r.json()["detail"]
    assert "/srv" not in r.text and "malformed" not in r.text
    assert job_folders(client) == before


@pytest.mark.parametrize(
    "kind", ["sqlite-full", "oserror-full", "read-only", "sqlite-readonly", "other"]
)
def test_a_request_that_meets_a_full_or_unusable_disk_says_so(tmp_path, monkeypatch, kind):
    """Wherever a route writes (here the job store, deleting a job), a full disk was a plain-text
    500 with a traceback in the log: now a 507. The kernel remounts the data folder read-only
    after an I/O error: uploads were a plain-text 500 (a user's probe), now a 503 saying the folder
    is the problem. Any other error is a 500, in JSON like every error."""
    import errno
    import sqlite3

    from v1motion.service.jobs.manager import VideoJobs

    def delete(self, job_id):
        if kind.startswith("sqlite"):
            full = kind == "sqlite-full"
            exc = sqlite3.OperationalError(
                "database or disk is full" if full else "attempt to write a readonly database"
            )
            exc.sqlite_errorcode = sqlite3.SQLITE_FULL if full else sqlite3.SQLITE_READONLY
            raise exc
        if kind == "read-only":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "videos" / job_id))
        code = errno.ENOSPC if kind == "oserror-full" else errno.EIO
        raise OSError(code, os.strerror(code), "/srv/secret/jobs.sqlite3")

    settings = Settings(data_dir=tmp_path, video_engine="random")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        job_id = upload(c, vs.avi(tmp_path, n=6)).json()["id"]
        wait_done(c, job_id)
        monkeypatch.setattr(VideoJobs, "delete", delete)
        r = c.delete(f"/v1/videos/{job_id}")
    assert "/srv" not in r.text and str(tmp_path) not in r.text
    detail = r.json()["detail"]
    if kind == "other":  # not on the data folder
        assert r.status_code == 500 and detail == "internal error"
    elif kind.endswith("full"):
        assert r.status_code == 507
        assert detail.startswith("the server's disk has no room for what this request ")
    else:
        assert r.status_code == 503 and r.headers["retry-after"] == "60"
        assert detail.startswith("the server cannot use its data folder (") and "operator" in detail
        assert ("Read-only file system" if kind == "read-only" else "readonly database") in detail


def test_a_data_folder_deleted_under_the_server_refuses_uploads_and_readiness(tmp_path):
    """rm -rf of the data folder under a running server: uploads were a plain-text 500, /readyz
    said ready; once the folder was back (a restore, a mount come back) uploads were accepted
    into the deleted store, unknown to the next start, whose sweep then removed them."""
    import shutil

    settings = Settings(data_dir=tmp_path / "data", video_engine="random")
    clip = vs.avi(tmp_path, n=6)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.app.state.services.engine.ready.wait(120)  # loads in the background
        assert c.get("/readyz").status_code == 200
        shutil.rmtree(tmp_path / "data")
        r = c.post("/v1/videos", files={"file": ("a.avi", clip, "video/x-msvideo")})
        ready = c.get("/readyz")
        (tmp_path / "data" / "videos").mkdir(parents=True)
        (tmp_path / "data" / "jobs.sqlite3").write_bytes(b"")
        again = c.post("/v1/videos", files={"file": ("a.avi", clip, "video/x-msvideo")})
        still = c.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "60"
    assert r.json()["detail"].startswith("the server cannot use its data folder (its job store is")
    assert ready.status_code == 503 and "data folder deleted?" in ready.json()["detail"]
    assert again.status_code == 503 and "replaced while the server ran" in again.json()["detail"]
    assert still.status_code == 503 and "restart the service" in still.json()["detail"]
    assert str(tmp_path) not in r.text + again.text + ready.text


def test_a_readiness_failure_is_logged_when_it_begins_changes_and_ends(tmp_path, caplog):
    """From the operators' probe: a read-only data folder made /readyz answer 503, and the log
    said nothing until a client uploaded (an idle replica: never)."""
    settings = Settings(data_dir=tmp_path / "data", video_engine="random")
    with (
        TestClient(create_app(settings)) as c,
        caplog.at_level("INFO", "v1motion.service.routers.ops"),
    ):
        jobs = c.app.state.services.videos
        assert c.app.state.services.engine.ready.wait(120)  # loads in the background
        for problem in (None, "read-only", "read-only", "gone", None, None):
            jobs.data_folder_problem = lambda problem=problem: problem
            assert c.get("/readyz").status_code == (200 if problem is None else 503)
        del jobs.data_folder_problem
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.endswith("ops")]
    assert said == [
        ("WARNING", "not ready: read-only"),
        ("WARNING", "not ready: gone"),
        ("INFO", "readiness no longer fails (it was: gone)"),
    ]


def test_an_upload_is_on_the_disk_before_the_202(tmp_path, monkeypatch):
    """A power cut after the 202 lost neither the upload nor its record (synchronous=FULL)."""
    import v1motion.service.routers.videos as videos

    synced = []
    monkeypatch.setattr(videos, "make_durable", lambda *paths: synced.extend(paths))
    settings = Settings(data_dir=tmp_path, video_engine="random")
    with TestClient(create_app(settings)) as c:
        job_id = upload(c, vs.avi(tmp_path, n=6)).json()["id"]
    folder = tmp_path / "videos" / job_id
    assert synced == [folder / "input.bin", folder, folder.parent]


def test_not_multipart_is_415(client):
    r = client.post("/v1/videos", json={"url": "http://example.com/a.mp4"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_missing_file_field_is_422(client):
    r = client.post("/v1/videos", files={"video": ("a.avi", b"RIFF", "video/x-msvideo")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]


def test_damage_found_mid_decode_fails_the_job_with_a_reason(client, tmp_path):
    r = upload(client, vs.damaged_frames_avi(tmp_path))
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    assert job["status"] == "failed" and "no frame could be decoded" in job["error"]
    res = client.get(f"/v1/videos/{job['id']}/motion.json")
    assert res.status_code == 409 and "no frame could be decoded" in res.json()["detail"]
    assert not (client.data_dir / "videos" / job["id"] / "out").exists()
    # and the service carries on: the next job succeeds
    nxt = wait_done(client, upload(client, vs.avi(tmp_path, n=4)).json()["id"])
    assert nxt["status"] == "succeeded"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "path, status",
    [
        ("/v1/videos/" + "0" * 32, 404),
        ("/v1/videos/..%2F..%2Fetc%2Fpasswd", 404),
        ("/v1/videos/" + "0" * 32 + "/motion.json", 404),
        ("/v1/videos/" + "0" * 32 + "/input.bin", 404),
        ("/v1/videos?limit=0", 422),
    ],
)
def test_unknown_jobs_and_names(client, path, status):
    r = client.get(path)
    assert r.status_code == status and r.json()["detail"]


def test_delete_unknown_is_404(client):
    assert client.delete("/v1/videos/" + "a" * 32).status_code == 404


def test_results_of_a_job_in_progress_are_409(client):
    jobs = client.app.state.services.videos
    job_id, folder = jobs.new_folder()
    with jobs.store._lock:  # a record some slot is running (inserted as such: no slot can claim it)
        jobs.store._db.execute(
            "INSERT INTO jobs (id, status, filename, content_type, size_bytes, created_at)"
            " VALUES (?, 'running', 'a.avi', 'video/x-msvideo', 10, 0)",
            (job_id,),
        )
    r = client.get(f"/v1/videos/{job_id}/summary.png")
    assert r.status_code == 409 and "the job is running" in r.json()["detail"]
    assert client.head(f"/v1/videos/{job_id}/summary.png").status_code == 409
    assert client.head("/v1/videos/no-such-job/summary.png").status_code == 404
    assert client.delete(f"/v1/videos/{job_id}").status_code == 204
    assert not folder.exists()


def test_openapi_documents_the_upload(client):
    post = client.get("/openapi.json").json()["paths"]["/v1/videos"]["post"]
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["file"]["format"] == "binary"
    assert {"202", "413", "415", "422", "507"} <= set(post["responses"])


def test_overlay_can_be_switched_off(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", video_engine="random", video_overlay=False)
    with TestClient(create_app(settings)) as c:
        job = wait_done(c, upload(c, vs.avi(tmp_path, n=4)).json()["id"])
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["overlay"] is False
        assert "overlay.mp4" not in job["links"] and "summary.png" in job["links"]  # no dead link
        r = c.get(f"/v1/videos/{job['id']}/overlay.mp4")
        assert r.status_code == 404 and "overlays were off when it ran" in r.json()["detail"]
        assert c.get(f"/v1/videos/{job['id']}/summary.png").status_code == 200


def test_a_token_is_required_when_the_service_is_exposed(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data", video_engine="random", host="0.0.0.0", token="s3cret"
    )
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/videos", files={"file": ("a.avi", vs.avi(tmp_path), "video/x-msvideo")})
        assert r.status_code == 401 and not any((tmp_path / "data" / "videos").iterdir())
        assert c.get("/v1/videos").status_code == 401
        r = c.post(
            "/v1/videos",
            files={"file": ("a.avi", vs.avi(tmp_path), "video/x-msvideo")},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert r.status_code == 202, r.text


def test_links_and_location_carry_the_root_path(tmp_path):
    """Behind a proxy that strips a prefix (V1MOTION_ROOT_PATH=/motion), Location and the job's
    links named /v1/videos/...: through the proxy, 404s."""
    settings = Settings(data_dir=tmp_path / "data", video_engine="random", root_path="/motion")
    with TestClient(create_app(settings), root_path="/motion") as c:
        r = upload(c, vs.avi(tmp_path, n=6))
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/motion/v1/videos/{job_id}"
        done = wait_done(c, job_id)
        assert done["status"] == "succeeded", done["error"]
        assert set(done["links"].values()) >= {
            f"/motion/v1/videos/{job_id}",
            f"/motion/v1/videos/{job_id}/motion.json",
        }
        listed = c.get("/v1/videos").json()["data"][0]["links"]["self"]
        assert listed == f"/motion/v1/videos/{job_id}"


def test_an_upload_cut_off_by_the_servers_shutdown_is_a_json_503(tmp_path):
    """An upload still arriving when the graceful shutdown ends: uvicorn cancels it. It was a
    plain-text 500 "Internal Server Error" and an ERROR with a traceback at every rolling restart
    during an upload; now a JSON 503 the client can retry on, and no upload left behind."""
    import socket

    from service_helpers import ServerThread, server_warnings

    settings = Settings(data_dir=tmp_path / "data", video_engine="random")
    srv = ServerThread(create_app(settings), timeout_graceful_shutdown=1)
    with srv, server_warnings() as warnings:
        body = b"x" * 100_000  # announced, a tenth of it sent: the upload is still arriving
        head = (
            "POST /v1/videos HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(body) + 200}\r\n\r\n"
        )
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="c.mp4"\r\n\r\n'
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(head.encode() + part + body[:10_000])
            time.sleep(0.5)
            srv.server.should_exit = True  # as on SIGTERM
            s.settimeout(15)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        srv.thread.join(15)
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b"application/json" in rest.lower() and b"shutting down" in rest
    assert not any("Exception in ASGI application" in w for w in warnings), warnings
    assert not any((tmp_path / "data" / "videos").glob("*/input*"))  # the upload is gone


def test_a_queue_that_filled_during_the_upload_refuses_it_and_keeps_nothing(client, tmp_path):
    """The queue was checked before the upload only: uploads arriving together all passed it (the
    probe: 34 jobs waiting against a limit of 32). It is checked again just before the job is made."""
    jobs = client.app.state.services.videos
    before = job_folders(client)
    answers = iter([False, True])  # room when the upload starts; full when it has arrived
    jobs.queue_full = lambda: next(answers)
    try:
        clip = ("clip.avi", vs.avi(tmp_path, n=4), "video/x-msvideo")
        r = client.post("/v1/videos", files={"file": clip})
    finally:
        del jobs.queue_full
    assert r.status_code == 503 and r.headers["retry-after"] == "30"
    assert "already waiting" in r.json()["detail"]
    assert job_folders(client) == before  # the upload is not left behind


def test_jobs_are_deleted_the_days_after_they_end_the_service_keeps_them(tmp_path):
    """Checked at each upload: the store grows then."""
    settings = Settings(data_dir=tmp_path, video_engine="random", video_keep_days=1)
    with TestClient(create_app(settings)) as c:
        c.data_dir = tmp_path
        first = upload(c, vs.avi(tmp_path, n=6)).json()["id"]
        assert wait_done(c, first)["status"] == "succeeded"
        assert c.get(f"/v1/videos/{first}/motion.json").status_code == 200
        store = c.app.state.services.videos.store
        store._db.execute("UPDATE jobs SET finished_at = finished_at - 2 * 86400")  # 2 days ago
        second = upload(c, vs.avi(tmp_path, n=6)).json()["id"]
        gone = c.get(f"/v1/videos/{first}")  # a user back after the keep time: told so, not 404
        assert gone.status_code == 410 and "V1MOTION_VIDEO_KEEP_DAYS" in gone.json()["detail"]
        assert first not in job_folders(c) and second in job_folders(c)


def test_a_post_repeated_with_its_idempotency_key_answers_the_first_job(client, tmp_path):
    """A client that retries an upload after a timeout made a second job of the same file (the
    header was ignored); with the same key and file it now gets the first job back, 200."""
    clip = vs.avi(tmp_path, n=4)
    key = {"Idempotency-Key": "batch-7f3a/clip-001"}
    first = client.post(
        "/v1/videos", files={"file": ("a.avi", clip, "video/x-msvideo")}, headers=key
    )
    assert first.status_code == 202, first.text
    folders = job_folders(client)
    again = client.post(
        "/v1/videos", files={"file": ("a.avi", clip, "video/x-msvideo")}, headers=key
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert job_folders(client) == folders  # nothing kept of the repeated upload
    other = vs.avi(tmp_path, n=5)
    refused = client.post(
        "/v1/videos", files={"file": ("b.avi", other, "video/x-msvideo")}, headers=key
    )
    assert refused.status_code == 422 and first.json()["id"] in refused.json()["detail"]
    fresh = client.post(
        "/v1/videos",
        files={"file": ("b.avi", other, "video/x-msvideo")},
        headers={"Idempotency-Key": "batch-7f3a/clip-002"},
    )
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
    plain = upload(client, clip)  # no key: a new job, as before
    assert plain.status_code == 202 and plain.json()["id"] != first.json()["id"]


def test_a_repeated_key_is_answered_while_the_queue_is_full(client, tmp_path):
    clip = vs.avi(tmp_path, n=4)
    key = {"Idempotency-Key": "retry-when-full"}
    first = client.post(
        "/v1/videos", files={"file": ("a.avi", clip, "video/x-msvideo")}, headers=key
    )
    jobs = client.app.state.services.videos
    jobs.queue_full = lambda: True
    try:
        again = client.post(
            "/v1/videos", files={"file": ("a.avi", clip, "video/x-msvideo")}, headers=key
        )
        other = client.post("/v1/videos", files={"file": ("a.avi", clip, "video/x-msvideo")})
    finally:
        del jobs.queue_full
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 503


@pytest.mark.parametrize("key", ["", "has space", "x" * 129, "naïve"])
def test_a_malformed_idempotency_key_is_422(client, tmp_path, key):
    r = client.post(
        "/v1/videos",
        files={"file": ("a.avi", vs.avi(tmp_path, n=4), "video/x-msvideo")},
        headers={"Idempotency-Key": key.encode()},
    )
    assert r.status_code == 422 and "idempotency-key" in r.text.lower()
    # said in words, not as the regular expression it must match
    assert "1 to 128 printable ASCII characters without spaces" in r.json()["detail"][0]["msg"]
    assert "\\x21" not in r.text


def test_a_store_from_before_idempotency_keys_opens_with_them(tmp_path):
    import sqlite3

    from v1motion.service.jobs.store import JobStore

    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, filename TEXT NOT NULL,"
        " content_type TEXT NOT NULL, size_bytes INTEGER NOT NULL, created_at REAL NOT NULL,"
        " started_at REAL, finished_at REAL, frames_done INTEGER NOT NULL DEFAULT 0,"
        " frames_total INTEGER, attempts INTEGER NOT NULL DEFAULT 0, error TEXT, result TEXT);"
        "INSERT INTO jobs (id, status, filename, content_type, size_bytes, created_at)"
        " VALUES ('a', 'queued', 'old.avi', 'video/x-msvideo', 9, 1.0);"
    )
    db.close()
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.get("a").idempotency_key is None
    store.create("b", "new.avi", "video/x-msvideo", 9, "k", "0" * 64)
    assert store.by_key("k").id == "b"
    with pytest.raises(sqlite3.IntegrityError):
        store.create("c", "new.avi", "video/x-msvideo", 9, "k", "0" * 64)
    store.close()


def test_a_download_under_way_when_its_job_is_deleted_is_sent_whole(client, tmp_path, monkeypatch):
    """A DELETE between the route's look at the file and the answer's first read removed the file
    the answer read from: the client got a 200 cut short and the server logged an error. The
    file held open since the look is sent whole, and nothing stays open after any answer."""
    import shutil

    from v1motion.service.routers import videos

    job_id = upload(client, vs.avi(tmp_path, n=12)).json()["id"]
    assert wait_done(client, job_id)["status"] == "succeeded"
    base = f"/v1/videos/{job_id}"
    whole = client.get(f"{base}/motion.json").content
    etag = client.get(f"{base}/summary.png").headers["etag"]
    open_fds = len(os.listdir("/proc/self/fd"))
    assert client.get(f"{base}/summary.png", headers={"If-None-Match": etag}).status_code == 304
    assert client.head(f"{base}/motion.npz").status_code == 200
    assert len(os.listdir("/proc/self/fd")) == open_fds  # the 304 and the HEAD closed theirs

    send = videos.HeldFileResponse.__call__

    async def deleted_first(self, scope, receive, send_):
        shutil.rmtree(client.data_dir / "videos" / job_id)  # the DELETE's work, just then
        await send(self, scope, receive, send_)

    monkeypatch.setattr(videos.HeldFileResponse, "__call__", deleted_first)
    r = client.get(f"{base}/motion.json")
    assert r.status_code == 200 and r.content == whole
    assert len(os.listdir("/proc/self/fd")) == open_fds
