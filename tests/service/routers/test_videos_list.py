"""Listing video jobs: filters, cursors that hold while jobs come and go, unknown parameters."""

import pytest
from fastapi.testclient import TestClient

from v1motion.service.app import create_app
from v1motion.service.jobs.manager import DB_NAME, new_job_id
from v1motion.service.jobs.store import JobStore
from v1motion.service.settings import Settings


def _finished_jobs(data_dir, n_ok: int, n_failed: int) -> list[str]:
    """Jobs that have ended (the service's runner never picks them up), newest last."""
    store = JobStore(data_dir / DB_NAME)
    ids = []
    for k in range(n_ok + n_failed):
        job_id = new_job_id()
        store.create(job_id, f"clip{k}.avi", "video/x-msvideo", 100)
        if k < n_ok:
            store.succeed(job_id, {"frames": 2})
        else:
            store.fail(job_id, "planted")
        ids.append(job_id)
    store.close()
    return ids


@pytest.fixture
def client(tmp_path):
    def make(n_ok=0, n_failed=0):
        ids = _finished_jobs(tmp_path, n_ok, n_failed)
        c = TestClient(create_app(Settings(data_dir=tmp_path, video_engine="random")))
        c.__enter__()
        made.append(c)
        c.ids = ids
        return c

    made = []
    yield make
    for c in made:
        c.__exit__(None, None, None)


def _walk(client, url, delete=False, between=None) -> list[str]:
    seen = []
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [j["id"] for j in body["data"]]
        if delete:
            for j in body["data"]:
                assert client.delete(f"/v1/videos/{j['id']}").status_code == 204
        if between:
            between()
        url = body["next"]
    return seen


def test_status_filters_the_page_and_the_count(client):
    c = client(n_ok=5, n_failed=3)
    failed = c.get("/v1/videos?status=failed").json()
    assert [j["status"] for j in failed["data"]] == ["failed"] * 3 and failed["count"] == 3
    both = c.get("/v1/videos?status=failed&status=succeeded").json()
    assert both["count"] == 8 and len(both["data"]) == 8
    assert c.get("/v1/videos?status=running").json() == {"data": [], "count": 0, "next": None}
    bad = c.get("/v1/videos?status=cancelled")
    assert bad.status_code == 422 and "status" in bad.text


def test_a_download_then_delete_loop_following_next_gets_every_job(client):
    c = client(n_ok=25)
    seen = _walk(c, "/v1/videos?limit=10", delete=True)
    assert sorted(seen) == sorted(c.ids) and len(seen) == 25
    assert c.get("/v1/videos").json()["count"] == 0


def test_pages_followed_by_next_neither_repeat_nor_skip_while_jobs_are_added(client):
    c = client(n_ok=12)
    store = c.app.state.services.videos.store

    def add_two():
        for _ in range(2):
            job_id = new_job_id()
            store.create(job_id, "new.avi", "video/x-msvideo", 100)
            store.succeed(job_id, {"frames": 2})

    seen = _walk(c, "/v1/videos?limit=5", between=add_two)
    assert seen == list(reversed(c.ids))  # newest first, each once, none of those added meanwhile


def test_next_keeps_the_filter_and_is_null_on_the_last_page(client):
    c = client(n_ok=4, n_failed=4)
    first = c.get("/v1/videos?limit=2&status=failed").json()
    assert "status=failed" in first["next"] and "limit=2" in first["next"]
    seen = _walk(c, "/v1/videos?limit=2&status=failed")
    assert sorted(seen) == sorted(c.ids[4:])
    last = c.get("/v1/videos?limit=8").json()
    assert len(last["data"]) == 8 and last["next"] is None  # a full page with nothing after it


@pytest.mark.parametrize(
    "query, words",
    [
        ("after=yesterday", "not a cursor"),
        ("after=1.5_" + "0" * 32 + "&offset=3", "not both"),
        ("stauts=failed", "'stauts'"),
        ("order=asc&page=2", "'order', 'page'"),
    ],
)
def test_bad_or_unknown_list_parameters_are_422_naming_them(client, query, words):
    r = client().get(f"/v1/videos?{query}")
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    if "takes" in r.json()["detail"]:
        assert "after, limit, offset, status" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/streams", "/v1/units", "/v1/streams/synthetic"])
def test_every_v1_route_refuses_a_query_parameter_it_does_not_take(client, path):
    r = client().get(f"{path}?verbose=1")
    assert r.status_code == 422 and "'verbose'" in r.json()["detail"] and path in r.text


def test_deleted_ids_are_remembered_for_a_while_then_forgotten(tmp_path):
    import time

    from v1motion.service.jobs import store as store_module

    store = JobStore(tmp_path / DB_NAME)
    old, new = new_job_id(), new_job_id()
    for job_id in (old, new):
        store.create(job_id, "a.avi", "video/x-msvideo", 9)
    store.delete(old)
    store._db.execute(
        "UPDATE gone SET deleted_at = ?", (time.time() - store_module.GONE_KEEP_DAYS * 86400 - 1,)
    )
    store.delete(new, why="ended more than 7 days ago")
    assert store.gone(old) is None  # forgotten: the table does not grow for ever
    assert store.gone(new)[1] == "ended more than 7 days ago"
    store.close()


def test_metrics_count_the_jobs_by_status(client):
    c = client(n_ok=3, n_failed=2)
    text = c.get("/metrics").text
    assert 'v1motion_video_jobs{status="succeeded"} 3.0' in text
    assert 'v1motion_video_jobs{status="failed"} 2.0' in text
    assert 'v1motion_video_jobs{status="queued"} 0.0' in text
    c.delete(f"/v1/videos/{c.ids[0]}")
    assert 'v1motion_video_jobs{status="succeeded"} 2.0' in c.get("/metrics").text


def test_metrics_count_the_jobs_that_ended_and_a_deletion_does_not_uncount_them(client):
    """Jobs were only a gauge of those kept by status: a client deleting its failed jobs hid them
    from an alert on the failure rate."""
    c = client()
    store = c.app.state.services.videos.store
    ids = []
    for k, ok in enumerate((True, False, False)):
        job_id = new_job_id()
        store.create(job_id, f"clip{k}.avi", "video/x-msvideo", 100)
        if ok:
            store.succeed(job_id, {"frames": 2})
        else:
            store.fail(job_id, "planted")
        ids.append(job_id)
    for job_id in ids:
        assert c.delete(f"/v1/videos/{job_id}").status_code == 204
    text = c.get("/metrics").text
    assert 'v1motion_video_jobs_ended_total{status="succeeded"} 1.0' in text
    assert 'v1motion_video_jobs_ended_total{status="failed"} 2.0' in text
    assert 'v1motion_video_jobs{status="failed"} 0.0' in text
