"""``/v1/spikes`` endpoints: fit, get, evaluate, sample, and a 422 naming each kind of bad input."""

import asyncio
import errno
import io
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from spike_samples import bursty_counts

from v1motion.service.app import create_app
from v1motion.service.settings import Settings
from v1motion.service.spikes_state import SpikeModelStore


@pytest.fixture
def client():
    app = create_app(
        Settings(spikes_max_elements=20_000, spikes_max_models=2, spikes_max_sample_elements=5_000)
    )
    with TestClient(app) as c:
        yield c


def _counts(seed=0, trials=4, bins=200, n=3):
    return np.random.default_rng(seed).poisson(0.3, (trials, bins, n)).astype(float)


def _fit_body(**kw) -> dict:
    return {"counts": _counts().tolist(), "kind": "correlated", **kw}


def _fit(client, **kw):
    return client.post("/v1/spikes/models", json=_fit_body(**kw))


def test_fit_get_evaluate_sample(client):
    r = _fit(client)
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["kind"] == "correlated" and info["n_neurons"] == 3
    assert np.isfinite(info["held_out_bits_per_spike"])
    mid = info["id"]
    assert client.get(f"/v1/spikes/models/{mid}").json()["id"] == mid
    ev = client.post(f"/v1/spikes/models/{mid}/evaluate", json={"counts": _counts(1).tolist()})
    assert ev.status_code == 200 and np.isfinite(ev.json()["bits_per_spike"])
    s = client.post(
        f"/v1/spikes/models/{mid}/sample", json={"n_trials": 2, "n_bins": 50, "seed": 1}
    )
    assert s.status_code == 200
    assert np.asarray(s.json()["counts"]).shape == (2, 50, 3)
    assert s.json()["n_at_cap"] == 0


def test_fit_rglm_reports_timescales(client):
    r = _fit(client, kind="rglm_correlated", options={"n_hidden": 2, "max_iter": 30})
    assert r.status_code == 201, r.text
    assert len(r.json()["timescales_bins"]) == 2


def test_fit_from_spike_times(client):
    rng = np.random.default_rng(2)
    times = [[sorted(rng.uniform(0, 1000, 40).tolist()) for _ in range(3)] for _ in range(4)]
    r = client.post(
        "/v1/spikes/models",
        json={"spike_times": times, "bin_size": 10, "duration": 1000, "kind": "independent"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["n_neurons"] == 3
    assert r.json()["bin_size"] == 10  # what the counts are counts of, kept with the model
    # evaluated on other bins its rates per bin mean nothing: +2.02 bits/spike at its own bins
    # read -0.60 at twice as wide
    url = f"/v1/spikes/models/{r.json()['id']}/evaluate"
    same = client.post(url, json={"spike_times": times, "bin_size": 10, "duration": 1000})
    assert same.status_code == 200, same.text
    other = client.post(url, json={"spike_times": times, "bin_size": 20, "duration": 1000})
    assert other.status_code == 422 and "fitted on bins of 10" in other.json()["detail"]


def test_the_record_says_every_option_the_fit_used(client):
    """The record echoed the options given only: which n_basis or l2 a fit used was not on it."""
    r = client.post(
        "/v1/spikes/models",
        json={"counts": _counts().tolist(), "kind": "glm", "options": {"n_lags": 3}},
    )
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["options"] == {"n_lags": 3}
    assert rec["options_used"]["n_lags"] == 3 and rec["options_used"]["n_basis"] == 4
    assert rec["options_used"]["l2"] == 1e-4 and rec["bin_size"] is None
    assert (
        client.get(f"/v1/spikes/models/{rec['id']}").json()["options_used"] == rec["options_used"]
    )


def test_fit_from_npz_upload(client):
    buf = io.BytesIO()
    np.savez(buf, counts=_counts())
    r = client.post(
        "/v1/spikes/models",
        files={"file": ("c.npz", buf.getvalue(), "application/octet-stream")},
        data={"kind": "glm", "options": '{"n_lags": 3, "n_basis": 2}'},
    )
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "glm"


def _npz(**arrays) -> dict:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return {"file": ("c.npz", buf.getvalue(), "application/octet-stream")}


def test_evaluate_takes_the_npz_a_fit_takes(client):
    """A model fitted from an .npz upload is evaluated on an .npz too, with the same answer as the
    counts sent as JSON; a bad .npz is a 422 naming the problem, before the model is looked up."""
    mid = client.post("/v1/spikes/models", files=_npz(counts=_counts()), data={"kind": "glm"})
    mid = mid.json()["id"]
    url = f"/v1/spikes/models/{mid}/evaluate"
    as_json = client.post(url, json={"counts": _counts(1).tolist()})
    as_npz = client.post(url, files=_npz(counts=_counts(1)))
    assert as_npz.status_code == 200, as_npz.text
    assert as_npz.json() == as_json.json()
    r = client.post(url, files=_npz(spikes=_counts(1)))
    assert r.status_code == 422 and "no array 'counts'" in r.json()["detail"]
    r = client.post(url, files=_npz(counts=_counts(1, n=4)))
    assert r.status_code == 422 and "fitted on 3" in r.json()["detail"]
    r = client.post(url, files=_npz(counts=-_counts(1)))
    assert r.status_code == 422 and "negative" in r.json()["detail"]
    r = client.post(url, files={"counts": ("c.npz", b"1", "text/plain")})  # no 'file' field
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    # a field the upload does not take is named, not ignored (a fit ran with the default for a
    # misspelt test_fraction)
    r = client.post(url, files=_npz(counts=_counts(1)), data={"kind": "glm"})
    assert r.status_code == 422 and "unknown form field(s) 'kind'" in r.json()["detail"]
    fit = client.post(
        "/v1/spikes/models", files=_npz(counts=_counts()), data={"test_fractoin": "0.5"}
    )
    assert fit.status_code == 422, fit.text
    assert "'test_fractoin'" in fit.json()["detail"] and "'test_fraction'" in fit.json()["detail"]
    assert client.post(url, data={"counts": "1"}).status_code == 415  # a urlencoded form
    r = client.post("/v1/spikes/models/nope/evaluate", files=_npz(spikes=_counts(1)))
    assert r.status_code == 422
    assert (
        client.post("/v1/spikes/models/nope/evaluate", files=_npz(counts=_counts(1))).status_code
        == 404
    )
    schema = client.get("/openapi.json").json()["paths"]["/v1/spikes/models/{model_id}/evaluate"]
    assert set(schema["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }


@pytest.mark.parametrize(
    "body,expected",
    [
        ({"counts": [[[1, float("nan")]]]}, "NaN"),
        ({"counts": [[[1, -1], [0, 0]]]}, "negative"),
        ({"counts": [[1, 2], [3]]}, "ragged"),
        ({"counts": [[[], []]]}, "zero neurons"),
        ({"counts": np.zeros((1, 10_000, 3)).tolist()}, "too large"),
        ({"counts": [[[0.5]]]}, "non-integer"),
        ({"counts": [[[1e20, 0], [0, 1]]]}, "spikes in one bin"),  # was fitted: -1e17 bits/spike
        ({"counts": [[["1", "0"]]]}, "not strings"),  # numpy would read them as numbers
        ({"counts": [[[True, False]]]}, "not true/false"),
        ({"counts": [[[1, 0], [0, True]]]}, "not true/false"),  # numpy would read true as 1
        ({"spike_times": [["0.5"]], "bin_size": 1}, "not strings"),
        ({"spike_times": [[True]], "bin_size": 1}, "not true/false"),
        ({"spike_times": [[0.5, False]], "bin_size": 1}, "not true/false"),
        ({}, "exactly one of"),
        ({"spike_times": [[1.0]]}, "bin_size"),
        ({"spike_times": [[[1.0], [2.0]], [[1.0]]], "bin_size": 1}, "ragged"),
        ({"spike_times": [{"a": 1}], "bin_size": 0.1}, "lists of times"),  # was a 500 (KeyError)
        ({"spike_times": [{"0": [0.1]}], "bin_size": 0.1}, "lists of times"),
        ({"spike_times": [1.5], "bin_size": 1}, "lists of times"),
        ({"spike_times": [None], "bin_size": 1}, "lists of times"),
        ({"spike_times": [[[0.1]], [0.2]], "bin_size": 1}, "trial 1 is not"),  # mixed depths
        ({"spike_times": [[[1.0], [[2.0]]]], "bin_size": 1}, "nests deeper"),
        ({"spike_times": [[0.1, 0.5, 5.0, 7.0]], "bin_size": 0.1, "duration": 1}, "2 spike time"),
        ({"spike_times": [[0.1]], "bin_size": 0.1, "duration": 1.05}, "not a whole number"),
        # echoed back as the model's bin size, and said nothing of the counts
        ({"counts": _counts().tolist(), "bin_size": 0.1}, "bin_size go with 'spike_times'"),
        ({"counts": _counts().tolist(), "duration": 3}, "duration go with 'spike_times'"),
        ({"counts": _counts().tolist(), "kind": "hmm"}, "valid kinds"),
        ({"counts": _counts().tolist(), "kind": "glm", "options": {"lags": 3}}, "valid options"),
        ({"counts": np.zeros((2, 5, 2)).tolist(), "kind": "independent"}, "no spikes"),
        # a density against the Poisson baseline's probabilities: +87 bits/spike for a constant
        ({"counts": _counts().tolist(), "options": {"obs": "gaussian"}}, "density"),
        ({"counts": _counts().tolist(), "kind": "glm", "options": {"obs": "gaussian"}}, "density"),
    ],
)
def test_bad_input_gets_422_naming_the_problem(client, body, expected):
    # json.dumps writes NaN as the literal NaN, which strict JSON clients refuse to send
    r = client.post(
        "/v1/spikes/models", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert expected in str(r.json()["detail"])


def test_bad_npz_and_bad_json(client):
    r = client.post(
        "/v1/spikes/models", files={"file": ("c.npz", b"not a zip", "application/octet-stream")}
    )
    assert r.status_code == 422 and "npz" in r.json()["detail"]
    buf = io.BytesIO()
    np.savez(buf, spikes=_counts())
    r = client.post(
        "/v1/spikes/models", files={"file": ("c.npz", buf.getvalue(), "application/octet-stream")}
    )
    assert r.status_code == 422 and "'counts'" in r.json()["detail"]
    r = client.post(
        "/v1/spikes/models", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_evaluate_and_sample_refuse_bad_requests(client):
    mid = _fit(client).json()["id"]
    r = client.post(f"/v1/spikes/models/{mid}/evaluate", json={"counts": _counts(n=4).tolist()})
    assert r.status_code == 422 and "fitted on 3" in r.json()["detail"]
    r = client.post(f"/v1/spikes/models/{mid}/evaluate", json={"counts": [[[1, -2, 0]]]})
    assert r.status_code == 422 and "negative" in r.json()["detail"]
    r = client.post(f"/v1/spikes/models/{mid}/sample", json={"n_trials": 100, "n_bins": 1000})
    assert r.status_code == 422 and "too large" in r.json()["detail"]
    assert client.get("/v1/spikes/models/nope").status_code == 404


def test_store_is_bounded(client):
    ids = [_fit(client).json()["id"] for _ in range(3)]
    gone = client.get(f"/v1/spikes/models/{ids[0]}")
    assert gone.status_code == 404  # and says why an id it gave is unknown now (restart or oldest)
    assert "dropped as the oldest of the 2 models the server keeps" in gone.json()["detail"]
    assert client.get(f"/v1/spikes/models/{ids[2]}").status_code == 200
    folder = Path(client.app.state.settings.data_dir) / "spikes"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.pickle" for i in ids[1:])


def _small_app():
    return create_app(
        Settings(spikes_max_elements=20_000, spikes_max_models=2, spikes_max_sample_elements=5_000)
    )


def test_fitted_models_survive_a_restart_and_deletions_too():
    """A fit can take minutes: a restart (a redeploy) forgot every model the server held."""
    with TestClient(_small_app()) as client:
        kept, deleted = (_fit(client).json() for _ in range(2))
        assert client.delete(f"/v1/spikes/models/{deleted['id']}").status_code == 204
        evaluated = client.post(
            f"/v1/spikes/models/{kept['id']}/evaluate", json={"counts": _counts(1).tolist()}
        ).json()
    with TestClient(_small_app()) as again:  # the same data folder
        listed = again.get("/v1/spikes/models").json()
        assert [m["id"] for m in listed["data"]] == [kept["id"]]
        assert again.get(f"/v1/spikes/models/{kept['id']}").json() == kept
        assert again.get(f"/v1/spikes/models/{deleted['id']}").status_code == 404
        r = again.post(
            f"/v1/spikes/models/{kept['id']}/evaluate", json={"counts": _counts(1).tolist()}
        )
        assert r.status_code == 200 and r.json() == evaluated


def test_a_model_file_that_cannot_be_read_is_set_aside_and_the_others_load():
    with TestClient(_small_app()) as client:
        good = _fit(client).json()["id"]
    folder = Path(client.app.state.settings.data_dir) / "spikes"
    (folder / "0123456789ab.pickle").write_bytes(b"damaged")
    (folder / "ba9876543210.pickle.tmp").write_bytes(b"a write cut off")
    # a record of another version, which listed would fail GET /v1/spikes/models as a whole
    other = {"format": SpikeModelStore.FORMAT, "record": {"id": "bbbbbbbbbbbb", "created": 1.0}}
    (folder / "bbbbbbbbbbbb.pickle").write_bytes(pickle.dumps(other))
    with TestClient(_small_app()) as again:
        listed = again.get("/v1/spikes/models")
        assert listed.status_code == 200 and [m["id"] for m in listed.json()["data"]] == [good]
    assert {p.name for p in folder.iterdir()} == {
        "0123456789ab.pickle.unreadable",
        "bbbbbbbbbbbb.pickle.unreadable",
        f"{good}.pickle",
    }


def test_a_model_the_disk_cannot_take_is_held_and_its_record_says_so(client, monkeypatch):
    def full(self, rec):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SpikeModelStore, "_save", full)
    r = _fit(client)
    assert r.status_code == 201, r.text
    assert any("held in memory only" in w for w in r.json()["warnings"])
    assert client.get(f"/v1/spikes/models/{r.json()['id']}").status_code == 200


# Spike work runs in spawned worker processes, which import this module to find these functions.
def _gated_fit_record(*args):
    """The real fit, after this process has said it started and until the test opens the gate."""
    from v1motion.service.spikes_work import fit_record

    _hold_at_gate()
    return fit_record(*args)


def _hold_at_gate():
    """In a worker process: say it started, then wait until the test opens the gate."""
    gate = Path(os.environ["V1MOTION_TEST_GATE"])
    (gate / f"entered-{os.getpid()}").touch()
    deadline = time.monotonic() + 30
    while not (gate / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _dying_fit_record(*args):
    os._exit(3)  # as the kernel's OOM killer would end it: no exception, no reply


def _entered(gate: Path, timeout: float = 60.0) -> int:
    """The pid of the process that entered the gated fit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(gate.glob("entered-*"))
        if found:
            return int(found[0].name.split("-")[1])
        time.sleep(0.02)
    raise AssertionError("the gated fit never started")


@pytest.fixture
def gated_fit(tmp_path, monkeypatch):
    from v1motion.service.routers import spikes as spikes_router

    monkeypatch.setenv("V1MOTION_TEST_GATE", str(tmp_path))
    monkeypatch.setattr(spikes_router, "fit_record", _gated_fit_record)
    return tmp_path


def test_spike_work_runs_in_another_process_while_the_app_answers(gated_fit):
    app = create_app(Settings())
    with TestClient(app) as c:
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", _fit(c)))
        t.start()
        pid = _entered(gated_fit)
        assert pid != os.getpid()  # not a thread of the server's process
        assert c.get("/healthz").status_code == 200  # answered while the fit waits
        assert "r" not in result
        (gated_fit / "open").touch()
        t.join(60)
        assert result["r"].status_code == 201, result["r"].text
        mid = result["r"].json()["id"]
        assert c.post(f"/v1/spikes/models/{mid}/sample", json={"n_bins": 10}).status_code == 200


def test_too_many_pending_fits_get_429(gated_fit):
    # The first fit holds its place until the second request has been answered; the second is
    # sent only once the first is inside the worker (a fixed sleep raced with a loaded machine).
    app = create_app(Settings(spikes_max_pending=1))
    with TestClient(app) as c:
        t = threading.Thread(target=lambda: _fit(c))
        t.start()
        _entered(gated_fit)
        r = _fit(c)
        assert r.status_code == 429 and "retry" in r.json()["detail"]
        assert int(r.headers["retry-after"]) > 0  # as every other busy answer of the service
        (gated_fit / "open").touch()
        t.join(60)


def _gated_parsed_reply(*args):
    """The real reading of a large body, held at the gate as :func:`_gated_fit_record` is."""
    from v1motion.service.routers.spikes import _parsed_reply

    _hold_at_gate()
    return _parsed_reply(*args)


def test_the_queue_bound_counts_body_reading_and_fits_together(tmp_path, monkeypatch):
    """V1MOTION_SPIKES_MAX_PENDING bounds the spike requests of both of the worker's pools: while a
    large body is being read, a fit is one too many."""
    from v1motion.service.routers import spikes as spikes_router

    monkeypatch.setenv("V1MOTION_TEST_GATE", str(tmp_path))
    monkeypatch.setattr(spikes_router, "_parsed_reply", _gated_parsed_reply)
    app = create_app(Settings(spikes_max_pending=1))
    with TestClient(app) as c:
        big = {"counts": _counts(trials=4, bins=15_000).tolist(), "kind": "correlated"}
        out = {}
        t = threading.Thread(
            target=lambda: out.setdefault("r", c.post("/v1/spikes/models", json=big))
        )
        t.start()
        _entered(tmp_path)  # the large body is in the reader
        r = _fit(c)  # a small body, read inline, for the fit pool
        assert r.status_code == 429 and "retry" in r.json()["detail"]
        (tmp_path / "open").touch()
        t.join(60)
        assert out["r"].status_code == 201, out["r"].text
        assert _fit(c).status_code == 201


def test_a_worker_process_that_dies_fails_its_request_with_503_and_is_replaced(monkeypatch):
    from v1motion.service.routers import spikes as spikes_router
    from v1motion.service.spikes_work import fit_record

    app = create_app(Settings())
    with TestClient(app) as c:
        monkeypatch.setattr(spikes_router, "fit_record", _dying_fit_record)
        r = _fit(c)
        assert r.status_code == 503 and "died" in r.json()["detail"]
        monkeypatch.setattr(spikes_router, "fit_record", fit_record)
        assert _fit(c).status_code == 201
        assert c.get("/healthz").status_code == 200


def test_shutdown_stops_a_running_fit(gated_fit):
    """The server's shutdown does not wait for a fit: its process is stopped, its request answers 503.

    On one event loop, with no test client's thread: Starlette's TestClient, shut down while a
    response was on its way to another thread, closed the body's stream from that thread and left
    its own event loop asleep for ever (the test hung about 1 run in 15 on a loaded machine)."""
    import httpx

    app = create_app(Settings())

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            async with app.router.lifespan_context(app):
                fit = asyncio.ensure_future(client.post("/v1/spikes/models", json=_fit_body()))
                pid = await asyncio.to_thread(_entered, gated_fit)
                assert not fit.done()
            # the lifespan has ended, the gate is still closed: the fit was stopped, not awaited
            return pid, await asyncio.wait_for(fit, 30)

    pid, r = asyncio.run(scenario())
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _fit_while_the_server_stops(gate: Path, open_gate_after: float | None):
    """A real server (the service's own Server class, 5 s grace period) stopped while a fit is
    held at the gate, which is opened ``open_gate_after`` seconds into the shutdown (or never);
    returns the fit's answer (or the error of a request cut off) and the worker's pid."""
    import httpx
    from service_helpers import ServerThread

    app = create_app(Settings())
    out = {}
    with ServerThread(app, timeout_graceful_shutdown=5) as srv:

        def fit():
            try:
                out["r"] = httpx.post(f"{srv.url}/v1/spikes/models", json=_fit_body(), timeout=60)
            except httpx.HTTPError as exc:  # cut off without an answer
                out["r"] = exc

        t = threading.Thread(target=fit, daemon=True)
        t.start()
        pid = _entered(gate)
        srv.server.should_exit = True  # as on SIGTERM
        if open_gate_after is not None:
            time.sleep(open_gate_after)
            (gate / "open").touch()
        srv.thread.join(15)
        assert not srv.thread.is_alive(), "the server did not end"
    t.join(30)
    return out["r"], pid


def test_a_fit_whose_client_hangs_up_is_kept(gated_fit):
    """A client that gives up on a long fit (its own timeout, a proxy's) does not lose it: the fit
    runs on and its model is listed by ``GET /v1/spikes/models``."""
    import httpx
    from service_helpers import ServerThread

    with ServerThread(create_app(Settings())) as srv:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/v1/spikes/models", json=_fit_body(), timeout=(10, 1.0))
        _entered(gated_fit)
        assert httpx.get(f"{srv.url}/v1/spikes/models").json()["count"] == 0
        (gated_fit / "open").touch()
        deadline = time.monotonic() + 30
        while (listed := httpx.get(f"{srv.url}/v1/spikes/models").json())["count"] == 0:
            assert time.monotonic() < deadline, "the fit was lost"
            time.sleep(0.1)
    assert listed["data"][0]["kind"] == "correlated"


def test_a_stopping_server_answers_a_fit_it_stops(gated_fit):
    """A fit still running near the end of the grace period is stopped and answered 503; uvicorn
    alone would cancel its request at the end and close the connection without an answer."""
    r, pid = _fit_while_the_server_stops(gated_fit, open_gate_after=None)
    assert not isinstance(r, Exception), f"no answer: {r!r}"
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_stopping_server_lets_a_fit_finish_within_the_grace_period(gated_fit):
    """Work that ends within the grace period is answered as usual."""
    r, _ = _fit_while_the_server_stops(gated_fit, open_gate_after=0.5)
    assert not isinstance(r, Exception), f"no answer: {r!r}"
    assert r.status_code == 201, r.text


def test_a_worker_process_holds_no_multiprocessing_lock_for_its_progress_bars():
    """tqdm's default write lock holds a multiprocessing lock; a worker stopped by close() (SIGTERM)
    never unlinked its semaphore, and every `v1motion serve` that had run spike work ended with
    Python's "leaked semaphore objects" warning. The worker's set-up gives tqdm a thread lock."""
    code = (
        "import gc, multiprocessing.synchronize as mps\n"
        "from v1motion.service.spikes_state import _init_process\n"
        "_init_process(None, 0)\n"
        "from tqdm import tqdm\n"
        "for _ in tqdm(range(3), disable=None): pass\n"  # as the fits draw theirs
        "print(sum(isinstance(o, mps.SemLock) for o in gc.get_objects()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"]


def test_closing_ends_a_call_the_executor_never_finishes():
    """The pool's shutdown does not always fail a call whose process it stopped (a shutdown then
    hung, waiting for the request): close() itself ends every call still awaited, with a 503."""
    from concurrent.futures import Future

    from fastapi import HTTPException

    from v1motion.service import spikes_state

    class NeverFinishes:
        def submit(self, fn, *args):
            return Future()  # running for ever, as far as the caller can tell

    processes = spikes_state._Processes(1, None, 0)
    processes._pool = NeverFinishes()
    stopped = []

    async def scenario():
        call = asyncio.ensure_future(processes.run(print, "never run"))
        await asyncio.sleep(0.05)
        assert not call.done()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(spikes_state, "_stop", stopped.append)
            processes.close()
        with pytest.raises(HTTPException) as refused:
            await asyncio.wait_for(call, 5)
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status_code == 503 and "shutting down" in refused.detail
    assert len(stopped) == 1 and not processes._waiting


def test_a_request_cancelled_by_its_client_stays_cancelled():
    """Only close() turns a cancellation into a 503: a request cancelled from outside is cancelled."""
    from concurrent.futures import Future

    from v1motion.service import spikes_state

    class NeverFinishes:
        def submit(self, fn, *args):
            return Future()

    processes = spikes_state._Processes(1, None, 0)
    processes._pool = NeverFinishes()

    async def scenario():
        call = asyncio.ensure_future(processes.run(print, "never run"))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(scenario())
    assert not processes._waiting


@pytest.mark.parametrize(
    "kind,options",
    [
        ("correlated", {}),
        ("rglm", {"n_hidden": 2, "max_iter": 3}),
        ("lds", {"n_latent": 2}),
        ("plds", {"n_latent": 2, "n_iter": 3, "init_iter": 2}),
    ],
)
def test_fit_response_says_how_the_optimiser_ended(client, kind, options):
    r = _fit(client, kind=kind, options=options)
    assert r.status_code == 201, r.text
    fit = r.json()["fit"]
    assert set(fit) == {"converged", "stop_reason", "grad_norm", "n_iter"}
    if kind == "rglm":
        assert fit == {**fit, "converged": False, "stop_reason": "max_iter", "n_iter": 3}
        assert fit["grad_norm"] > 0
    elif kind == "correlated":
        assert fit["converged"] and fit["stop_reason"] == "gtol"
    else:
        assert fit["grad_norm"] is None
    mid = r.json()["id"]
    assert client.get(f"/v1/spikes/models/{mid}").json()["fit"] == fit


def test_work_cap_counts_the_glm_an_rglm_is_started_from():
    """2400 counts entries: an R-GLM with 2 hidden units started from a 10-lag GLM is 2 + 10 per entry."""
    from v1motion.service.routers.spikes import work_factor

    assert work_factor("rglm", {"n_hidden": 2}) == 12
    assert work_factor("rglm", {"n_hidden": 2, "init": "random"}) == 2
    assert work_factor("rglm_correlated", {"n_hidden": 2, "n_lags": 4}) == 2 + 4 + 4
    assert work_factor("glm", {"n_lags": 7}) == 7 and work_factor("lds", {}) == 4
    assert work_factor("plds", {"n_latent": 3}) == 3
    app = create_app(Settings(spikes_max_work=2400 * 6))
    with TestClient(app) as c:
        r = _fit(c, kind="rglm", options={"n_hidden": 2, "max_iter": 3})
        assert r.status_code == 422 and "GLM it starts from" in r.json()["detail"]
        r = _fit(c, kind="rglm", options={"n_hidden": 2, "max_iter": 3, "init": "random"})
        assert r.status_code == 201, r.text


def test_a_fit_that_needs_too_much_memory_is_refused_before_it_runs():
    """4 bins of 3,000 neurons is a small body within the work cap, but the default R-GLM would
    first fit a GLM coupling every pair of neurons: 40.5 million parameters, whose optimiser
    alone asked its worker for 55 GiB (a 500 and an error in the log). Refused with the reason;
    so is an LDS that would keep a 3,000 x 3,000 covariance for each of 300 bins (43 GB with its
    likelihood's)."""
    with TestClient(create_app(Settings())) as client:  # the default limits
        body = {"counts": np.random.default_rng(0).poisson(1.0, (4, 3000)).tolist()}
        t0 = time.monotonic()
        r = client.post("/v1/spikes/models", json=body)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "3000 neurons" in detail and "93,153 MB" in detail and "1,000 MB" in detail
        assert time.monotonic() - t0 < 10
        counts = np.random.default_rng(0).poisson(1.0, (300, 3000)).tolist()
        r = client.post("/v1/spikes/models", json={"counts": counts, "kind": "lds"})
        assert r.status_code == 422 and "43,200 MB" in r.json()["detail"], r.text
        r = _fit(client, kind="glm_correlated")  # a few neurons: within it
        assert r.status_code == 201, r.text


def test_an_evaluation_that_needs_too_much_memory_is_refused():
    """An LDS evaluates new counts with a covariance of the neurons per bin, as it fits: fitted
    on 4 trials of 30 bins of 40 neurons (under 1 MB), its evaluation of 3,000 bins needs 77 MB,
    refused under a limit of 50 MB (the fit is not)."""
    counts = np.random.default_rng(0).poisson(0.5, (4, 30, 40))
    with TestClient(create_app(Settings(spikes_max_fit_mb=50))) as client:
        r = client.post("/v1/spikes/models", json={"counts": counts.tolist(), "kind": "lds"})
        assert r.status_code == 201, r.text
        url = f"/v1/spikes/models/{r.json()['id']}/evaluate"
        assert client.post(url, json={"counts": counts[:2].tolist()}).status_code == 200
        more = np.random.default_rng(1).poisson(0.5, (1, 3000, 40)).tolist()
        r = client.post(url, json={"counts": more})
        assert r.status_code == 422, r.text
        assert "evaluation too large" in r.json()["detail"] and "77 MB" in r.json()["detail"]


def _fit_record_out_of_memory(*args):
    raise MemoryError("Unable to allocate 55.0 GiB for an array with shape (7380725800,)")


def test_a_fit_that_runs_out_of_memory_is_a_503_and_the_worker_goes_on(monkeypatch):
    """Memory the limits did not foresee: the request is answered 503 with the reason, not 500."""
    from v1motion.service.routers import spikes as spikes_router

    app = create_app(Settings())
    with TestClient(app) as c:
        monkeypatch.setattr(spikes_router, "fit_record", _fit_record_out_of_memory)
        r = _fit(c)
        assert r.status_code == 503 and "not enough memory" in r.json()["detail"], r.text
        monkeypatch.undo()
        assert _fit(c).status_code == 201


def test_default_rglm_fit_reports_convergence_and_stable_timescales(client):
    """The endpoint fits the stable-R R-GLM (from the GLM) and says whether it converged."""
    r = _fit(client, kind="rglm_correlated", options={"n_hidden": 2})
    assert r.status_code == 201, r.text
    info = r.json()
    assert isinstance(info["fit"]["converged"], bool) and info["fit"]["n_iter"] >= 1
    assert info["fit"]["stop_reason"] in ("gtol", "ftol", "max_iter")
    # converged means the gradient test holds (L-BFGS has no test on the loss's change: ftol = 0)
    assert info["fit"]["converged"] == (info["fit"]["stop_reason"] == "gtol")
    assert info["fit"]["converged"] == (info["fit"]["grad_norm"] <= 1e-6)
    tau = info["timescales_bins"]
    assert len(tau) == 2 and all(t > 0 for t in tau)  # R is stable by construction: never -1


def _locked_counts(seed=0, trials=6, bins=200, n=3):
    """Trials repeating one stimulus: a rate that changes over the trial, the same in every trial."""
    rng = np.random.default_rng(seed)
    t = np.arange(bins)
    rate = 0.05 + 0.6 * (np.sin(2 * np.pi * t / 40)[:, None] * np.ones(n) > 0.5)
    return rng.poisson(rate, (trials, bins, n)).astype(float)


def test_stimulus_locked_kinds_fit_score_and_sample_trials_of_their_stimulus(client):
    """The PSTH-driven kinds are offered: they use the repeats, and only take trials of that length."""
    y = _locked_counts()
    r = client.post("/v1/spikes/models", json={"counts": y.tolist(), "kind": "glm_correlated"})
    history_only = r.json()["held_out_bits_per_spike"]
    r = client.post(
        "/v1/spikes/models",
        json={"counts": y.tolist(), "kind": "glm_correlated_locked", "options": {"n_lags": 3}},
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["kind"] == "glm_correlated_locked" and info["stimulus_bins"] == 200
    assert info["fit"]["converged"] and info["fit"]["stop_reason"] == "gtol"
    # the stimulus-locked rate explains what the history alone cannot
    assert info["held_out_bits_per_spike"] > history_only + 0.1
    mid = info["id"]
    ev = client.post(
        f"/v1/spikes/models/{mid}/evaluate", json={"counts": _locked_counts(1).tolist()}
    )
    assert ev.status_code == 200 and ev.json()["bits_per_spike"] > 0.1
    r = client.post(
        f"/v1/spikes/models/{mid}/evaluate", json={"counts": _locked_counts(1, bins=150).tolist()}
    )
    assert r.status_code == 422 and "stimulus of 200 bins" in r.json()["detail"]
    s = client.post(f"/v1/spikes/models/{mid}/sample", json={"n_trials": 4, "seed": 1})
    assert s.status_code == 200, s.text
    counts = np.asarray(s.json()["counts"])
    assert counts.shape == (4, 200, 3)
    # samples follow the stimulus: more spikes where the repeated rate is high
    high = np.sin(2 * np.pi * np.arange(200) / 40) > 0.5
    assert counts[:, high].mean() > 3 * counts[:, ~high].mean()
    r = client.post(f"/v1/spikes/models/{mid}/sample", json={"n_bins": 50})
    assert r.status_code == 422 and "stimulus of 200 bins" in r.json()["detail"]


def test_stimulus_locked_rglm_reports_its_fit_and_timescales(client):
    r = client.post(
        "/v1/spikes/models",
        json={
            "counts": _locked_counts().tolist(),
            "kind": "rglm_correlated_locked",
            "options": {"n_hidden": 2, "max_iter": 20},
        },
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert len(info["timescales_bins"]) == 2 and info["stimulus_bins"] == 200
    assert info["fit"]["n_iter"] <= 20 and isinstance(info["fit"]["converged"], bool)


@pytest.mark.parametrize("counts", [_locked_counts(trials=1), _locked_counts(trials=1)[0]])
def test_stimulus_locked_kinds_refuse_a_single_trial(client, counts):
    r = client.post(
        "/v1/spikes/models", json={"counts": counts.tolist(), "kind": "glm_correlated_locked"}
    )
    assert r.status_code == 422 and "at least 2 trials" in r.json()["detail"]


def test_concurrent_calls_on_one_model_answer_as_sequential_ones():
    """Evaluate and sample of one stimulus-locked model (whose calls set a per-call offset on it),
    sent at once to several worker processes, answer as the same calls one after another."""
    app = create_app(Settings(spikes_fit_workers=3, spikes_max_pending=8))
    with TestClient(app) as c:
        r = c.post(
            "/v1/spikes/models",
            json={"counts": _locked_counts().tolist(), "kind": "glm_correlated_locked"},
        )
        assert r.status_code == 201, r.text
        mid = r.json()["id"]
        calls = [
            lambda s=s: c.post(
                f"/v1/spikes/models/{mid}/evaluate",
                json={"counts": _locked_counts(seed=s, trials=1).tolist()},
            )
            for s in range(3)
        ] + [
            lambda s=s: c.post(f"/v1/spikes/models/{mid}/sample", json={"n_trials": 2, "seed": s})
            for s in range(3)
        ]
        sequential = [call().json() for call in calls]
        out = [None] * len(calls)
        threads = [
            threading.Thread(target=lambda i=i: out.__setitem__(i, calls[i]()))
            for i in range(len(calls))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.status_code for r in out] == [200] * len(calls)
        assert [r.json() for r in out] == sequential


class _RunAway:
    """A model whose sample is stuck at the cap from mid-trial on."""

    def sample(self, n_trials, n_bins, seed):
        from v1motion.models.spikes.base import SAMPLE_MAX_COUNT

        y = np.zeros((n_trials, n_bins, 3))
        y[:, n_bins // 2 :, 0] = SAMPLE_MAX_COUNT
        return y


def test_a_sample_that_ran_away_says_how_many_counts_hit_the_cap(client):

    mid = _fit(client).json()["id"]
    rec = client.app.state.services.spike_store.get(mid)
    rec["model"] = _RunAway()
    s = client.post(f"/v1/spikes/models/{mid}/sample", json={"n_trials": 2, "n_bins": 40})
    assert s.status_code == 200 and s.json()["n_at_cap"] == 40


def test_the_service_fits_the_tables_settings_by_default():
    """A kind's defaults are the settings the table measured (where they differ from the class's)."""
    from v1motion.models.reports.spikes import OPTIONS
    from v1motion.models.spikes.registry import make_model

    plds = make_model("plds")
    for name in ("latent_scale", "l2_loadings", "l2_dynamics"):
        assert getattr(plds, name) == OPTIONS["plds"][name], name
    driven = make_model("rglm_correlated_locked")
    assert driven.model.l2_state == OPTIONS["rglm_correlated_locked"]["l2_state"]
    assert make_model("plds", l2_loadings=0.5).l2_loadings == 0.5  # an option still wins


def test_a_large_json_body_is_read_in_the_reader_process(monkeypatch):
    """Bodies over INLINE_BYTES are parsed off the event loop: the server's own parser is
    broken here, and every large request still answers as it would have, refusals included."""
    from v1motion.service.routers import spikes as spikes_router

    app = create_app(Settings())
    with TestClient(app) as c:
        mid = _fit(c).json()["id"]
        big = _counts(seed=2, trials=4, bins=15_000)  # 180,000 counts, about 0.9 MB of JSON
        body = json.dumps({"counts": big.tolist()})
        assert len(body) > spikes_router.INLINE_BYTES
        inline = c.post(f"/v1/spikes/models/{mid}/evaluate", json={"counts": big[:1, :50].tolist()})
        assert inline.status_code == 200

        def broken(*a):
            raise AssertionError("parsed on the event loop")

        monkeypatch.setattr(spikes_router, "parse_json_counts", broken)
        headers = {"Content-Type": "application/json"}
        r = c.post(f"/v1/spikes/models/{mid}/evaluate", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["n_spikes"] == big.sum()
        fit = body[:-1] + ', "kind": "correlated"}'
        r = c.post("/v1/spikes/models", content=fit, headers=headers)
        assert r.status_code == 201, r.text

        refusals = {
            body[:-2]: "body is not valid JSON",
            body.replace("[0.0,", "[-1.0,", 1): "negative",
            body[:-1] + ', "bin_size": -1}': "greater than 0",
            body[:-1] + ', "spike_times": [[1.0]]}': "exactly one",
        }
        for bad, words in refusals.items():
            r = c.post(f"/v1/spikes/models/{mid}/evaluate", content=bad, headers=headers)
            assert r.status_code == 422 and words in r.text, (words, r.text[:300])


SPIKE_WORKER_HOST = """
import asyncio, os, time
from v1motion.service.spikes_state import SpikeWorker

worker = SpikeWorker(1, 4)


async def main():
    print(await worker.run(os.getpid), await worker.read(os.getpid), flush=True)


asyncio.run(main())
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; its new parent may not reap it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_a_hard_kill_of_the_server_leaves_no_spike_worker_behind():
    proc = subprocess.Popen(
        [sys.executable, "-c", SPIKE_WORKER_HOST],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and proc.pid not in pids and all(_running(p) for p in pids)
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 20
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(p) for p in pids)


def test_spike_workers_run_below_the_live_streams_priority():
    from v1motion.service.spikes_state import SpikeWorker

    worker = SpikeWorker(1, 4, niceness=7)
    try:
        mine = os.nice(0)
        assert asyncio.run(worker.run(os.nice, 0)) == mine + 7
        assert asyncio.run(worker.read(os.nice, 0)) == mine + 7
    finally:
        worker.close()


def test_the_service_passes_its_batch_niceness_on():
    app = create_app(Settings(batch_niceness=3))
    with TestClient(app) as c:
        assert app.state.services.spike_worker._work.niceness == 3
        assert app.state.services.videos.runner.niceness == 3
        assert c.get("/healthz").status_code == 200


def _stderr_on_a_terminal(code: str) -> str:
    """What a Python child writes to its stderr when that is a terminal (a pseudo-terminal)."""
    import fcntl
    import select
    import struct
    import termios

    main_fd, child_fd = os.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    try:
        subprocess.run([sys.executable, "-c", code], stderr=child_fd, check=True, timeout=120)
        out = b""
        while select.select([main_fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        return out.decode(errors="replace")
    finally:
        os.close(main_fd)
        os.close(child_fd)


def test_spike_worker_processes_draw_no_progress_bars_on_the_servers_terminal():
    """A fit's progress bar is for `v1motion spikes` on a terminal; a worker process of the server
    writes its warnings to the server's stderr but no bar (the same code, with and without the
    worker's start-up)."""
    bar = (
        "import sys, time; from tqdm import tqdm\n"
        "for _ in tqdm(range(3), disable=None, mininterval=0): time.sleep(0.01)\n"
        "print('a warning', file=sys.stderr)\n"
    )
    start = "from v1motion.service.spikes_state import _init_process; _init_process(None, 0)\n"
    assert "3/3" in _stderr_on_a_terminal(bar)  # the control: a terminal gets the bar
    shown = _stderr_on_a_terminal(start + bar)
    assert "3/3" not in shown and "it/s" not in shown
    assert "a warning" in shown


def test_the_models_held_are_listed_newest_first_and_the_oldest_is_dropped(client):
    """A client that lost an id finds its models again; the list says how many the server keeps."""
    empty = client.get("/v1/spikes/models").json()
    assert empty == {"data": [], "count": 0, "max_models": 2}
    ids = [_fit(client).json()["id"] for _ in range(3)]  # the fixture keeps 2
    listed = client.get("/v1/spikes/models").json()
    assert [m["id"] for m in listed["data"]] == [ids[2], ids[1]] and listed["count"] == 2
    assert listed["data"][0] == client.get(f"/v1/spikes/models/{ids[2]}").json()
    assert client.get(f"/v1/spikes/models/{ids[0]}").status_code == 404
    assert client.head("/v1/spikes/models").status_code == 200
    assert client.put("/v1/spikes/models").headers["allow"] == "GET, HEAD, POST"


def test_a_fit_that_overfits_says_so_in_its_answer(client):
    """Two training trials of 12 bins under an R-GLM: the answer names both problems (its number
    alone, -1e3 bits/spike, was the only sign); a GLM on data it can learn carries no warning."""
    tiny = np.random.default_rng(0).poisson(0.5, (3, 12, 2)).tolist()
    r = client.post(
        "/v1/spikes/models",
        json={"counts": tiny, "kind": "rglm_correlated", "options": {"n_lags": 3, "max_iter": 200}},
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["held_out_bits_per_spike"] < 0 and len(info["warnings"]) == 2
    assert "parameters for 48 training counts" in info["warnings"][0]
    assert "constant mean rate" in info["warnings"][1]
    listed = client.get("/v1/spikes/models").json()["data"]
    assert listed[0]["warnings"] == info["warnings"]

    bursty = bursty_counts().astype(int).tolist()
    r = client.post(
        "/v1/spikes/models", json={"counts": bursty, "kind": "glm", "options": {"n_lags": 5}}
    )
    assert r.status_code == 201, r.text
    assert r.json()["held_out_bits_per_spike"] > 0.1 and r.json()["warnings"] == []


def test_delete_forgets_a_model_and_frees_its_place(client):
    """The store keeps two (the fixture): deleting one lets a third fit in without dropping the
    other; a deleted or unknown id is 404."""
    first, second = _fit(client).json()["id"], _fit(client, seed=1).json()["id"]
    assert client.delete(f"/v1/spikes/models/{first}").status_code == 204
    assert client.get(f"/v1/spikes/models/{first}").status_code == 404
    r = client.delete(f"/v1/spikes/models/{first}")
    assert r.status_code == 404 and first in r.json()["detail"]
    assert client.post(f"/v1/spikes/models/{first}/sample", json={"n_bins": 5}).status_code == 404
    third = _fit(client, seed=2).json()["id"]
    listed = client.get("/v1/spikes/models").json()
    assert [m["id"] for m in listed["data"]] == [third, second] and listed["count"] == 2


def test_the_fit_says_which_trials_it_held_out_and_samples_are_counts(client):
    from v1motion.models.spikes.registry import held_out

    r = _fit(client, test_fraction=0.5, seed=3)
    assert r.status_code == 201, r.text
    info = r.json()
    trials, first = held_out(4, 200, 0.5, 3)
    assert info["held_out_trials"] == trials.tolist() and len(trials) == info["n_test_trials"] == 2
    assert info["held_out_from_bin"] is None
    # the score is that of the trials it names: evaluate them, and the rest, with the same model
    counts = _counts()
    ev = client.post(
        f"/v1/spikes/models/{info['id']}/evaluate", json={"counts": counts[trials].tolist()}
    )
    assert ev.json()["n_spikes"] == info["n_spikes_test"]
    assert ev.json()["bits_per_spike"] == pytest.approx(info["held_out_bits_per_spike"])
    one = client.post(
        "/v1/spikes/models",
        json={"counts": counts[:1].tolist(), "kind": "independent", "test_fraction": 0.25},
    ).json()
    assert one["held_out_trials"] is None and one["held_out_from_bin"] == 150
    s = client.post(f"/v1/spikes/models/{info['id']}/sample", json={"n_bins": 20})
    assert all(isinstance(v, int) for v in np.ravel(s.json()["counts"]).tolist())
    assert "0.0" not in s.text.split('"n_spikes"')[0]  # counts written as counts
    assert isinstance(s.json()["n_spikes"], int)


def test_a_large_npz_is_read_in_the_reader_process(monkeypatch):
    """As large JSON bodies: a large .npz upload is parsed off the event loop."""
    import io

    from v1motion.service.routers import spikes as spikes_router

    app = create_app(Settings())
    with TestClient(app) as c:
        mid = _fit(c).json()["id"]
        big = _counts(seed=2, trials=4, bins=15_000)
        buf = io.BytesIO()
        np.savez(buf, counts=big)  # uncompressed: about 1.4 MB
        assert len(buf.getvalue()) > spikes_router.INLINE_BYTES

        def broken(*a):
            raise AssertionError("parsed on the event loop")

        monkeypatch.setattr(spikes_router, "_npz_counts", broken)
        files = {"file": ("c.npz", buf.getvalue())}
        r = c.post(f"/v1/spikes/models/{mid}/evaluate", files=files)
        assert r.status_code == 200, r.text
        assert r.json()["n_spikes"] == big.sum()
        bad = {"file": ("c.npz", buf.getvalue()[:-100] + b"x" * 100)}  # its directory broken
        r = c.post(f"/v1/spikes/models/{mid}/evaluate", files=bad)
        assert r.status_code == 422 and ".npz" in r.text, r.text
