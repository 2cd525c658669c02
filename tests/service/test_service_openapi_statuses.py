"""Statuses and bodies the API really answers are in its OpenAPI schema (schemathesis fuzzes the
container against that schema in CI, and an undocumented status or body fails it)."""

from __future__ import annotations

import re

from fastapi import HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel
from service_helpers import json_request_bodies, random_engine

from v1motion.service.app import create_app
from v1motion.service.settings import Settings


class Note(BaseModel):
    text: str


def make_app():
    """The app plus a DELETE beside GET /v1/streams/{name} and a POST-only route, as real routers do."""
    app = create_app(Settings(), engine_factory=random_engine)

    def delete_stream(name: str) -> None:
        return None

    def post_note(note: Note) -> dict:
        if not note.text:
            raise HTTPException(422, detail="the note is empty")
        return {"n": len(note.text)}

    app.router.add_api_route("/v1/streams/{name}", delete_stream, methods=["DELETE"])
    app.router.add_api_route("/v1/notes", post_note, methods=["POST"])
    for _ in range(2):  # before the static files at /, like the routers' routes
        app.router.routes.insert(0, app.router.routes.pop())
    return app


def test_unknown_stream_404_is_documented():
    with TestClient(make_app()) as client:
        res = client.get("/v1/streams/nope")
        assert res.status_code == 404
        assert "nope" in res.json()["detail"]
        spec = client.get("/openapi.json").json()
    assert "404" in spec["paths"]["/v1/streams/{name}"]["get"]["responses"]
    assert "503" in spec["paths"]["/v1/units"]["get"]["responses"]


def test_every_operation_documents_the_refusals_of_the_guard_and_the_body_checks():
    """403 (Host or Origin refused) on every operation, 413 and 415 on every one that takes a body,
    as they answer them: the language, spike-evaluation and sample operations answered 415 and 413
    without listing them."""
    with TestClient(make_app()) as client:
        spec = client.get("/openapi.json").json()
        res = client.post(
            "/v1/language/score", content=b"x", headers={"content-type": "text/plain"}
        )
        assert res.status_code == 415
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "delete")
    ]
    assert len(operations) > 10
    for path, method, op in operations:
        assert "403" in op["responses"], (path, method)
        if "requestBody" in op:
            assert {"413", "415"} <= set(op["responses"]), (path, method)
    score = spec["paths"]["/v1/language/score"]["post"]["responses"]
    assert "Content-Type" in score["415"]["description"]
    assert "413" not in spec["paths"]["/v1/streams"]["get"]["responses"]


def test_the_schema_names_every_spike_model_kind():
    """A client reading the schema (or /docs) learns which kinds it may ask for, not only from a 422."""
    from v1motion.models.spikes.registry import MODEL_KINDS
    from v1motion.service.routers.spikes import FIT_FORM_FIELDS

    with TestClient(make_app()) as client:
        spec = client.get("/openapi.json").json()
    bodies = spec["paths"]["/v1/spikes/models"]["post"]["requestBody"]["content"]
    for media in ("application/json", "multipart/form-data"):
        description = bodies[media]["schema"]["properties"]["kind"]["description"]
        assert all(kind in description for kind in MODEL_KINDS), media
    # the form fields the schema lists are the ones the upload takes; others are refused
    form = bodies["multipart/form-data"]["schema"]
    assert set(form["properties"]) == set(FIT_FORM_FIELDS)
    assert form["additionalProperties"] is False


def test_405_allow_lists_every_method_of_the_path():
    with TestClient(make_app()) as client:
        res = client.put("/v1/streams/synthetic")
        assert res.status_code == 405
        assert res.headers["allow"] == "DELETE, GET, HEAD"
        assert "PUT" in res.json()["detail"]
        assert client.post("/v1/streams").headers["allow"] == "GET, HEAD"
        # a POST-only route: GET fell through to the static files' 404
        res = client.get("/v1/notes")
        assert res.status_code == 405 and res.headers["allow"] == "POST"
        # the dashboard's static files keep their own answers
        assert client.post("/index.html").headers["allow"] == "GET, HEAD"
        assert client.get("/no-such-file.js").status_code == 404


def test_unparseable_body_is_a_documented_422():
    with TestClient(make_app()) as client:
        res = client.post(
            "/v1/notes", content=b"\xff{not json", headers={"content-type": "application/json"}
        )
        assert res.status_code == 422, res.text
        assert res.json()["detail"][0]["loc"] == ["body"]
        assert client.post("/v1/notes", json={"text": "abc"}).json() == {"n": 3}


def test_a_sentence_in_a_422_detail_matches_the_schema():
    with TestClient(make_app()) as client:
        res = client.post("/v1/notes", json={"text": ""})
        assert res.status_code == 422 and res.json()["detail"] == "the note is empty"
        spec = client.get("/openapi.json").json()
    detail = spec["components"]["schemas"]["HTTPValidationError"]["properties"]["detail"]
    assert {"type": "string"} in detail["anyOf"]


def test_every_get_route_answers_head_as_its_get():
    """RFC 9110 §9.3.2: a HEAD has GET's status and headers; here for every GET path of the schema
    that needs no id, and for a missing id (404, not 405); HEAD stays out of the schema."""
    with TestClient(make_app()) as client:
        spec = client.get("/openapi.json").json()
        plain = [p for p, item in spec["paths"].items() if "get" in item and "{" not in p]
        assert {"/healthz", "/readyz", "/v1/streams", "/v1/videos"} <= set(plain)
        for path in plain:
            got, head = client.get(path), client.head(path)
            # a router under /v1 outside create_app's `api` tuple answers GET but not HEAD
            assert head.status_code == got.status_code, f"{path}: is its router in the api tuple?"
            assert head.headers["content-type"] == got.headers["content-type"], path
        assert client.head("/v1/streams/nope").status_code == 404
        assert client.head("/v1/videos/no-such-job").status_code == 404
        assert client.head("/v1/notes").headers["allow"] == "POST"
        assert not any("head" in item for item in spec["paths"].values())


def test_head_asks_for_the_token_as_get_does():
    app = create_app(Settings(token="s3cret"), engine_factory=random_engine)
    with TestClient(app) as client:
        assert client.head("/v1/streams").status_code == 401
        ok = client.head("/v1/streams", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.head("/healthz").status_code == 200  # the probes stay public


def test_every_json_body_has_an_example_that_runs_as_it_is():
    """What /docs fills in for "Try it out" works: each JSON request body of the schema carries an
    example, and sent as it is (a spike fit first, then its evaluation and samples on the id it
    returns) it is answered 2xx."""
    with TestClient(create_app(Settings(), engine_factory=random_engine)) as client:
        examples = {}
        for op, schema in json_request_bodies(client.get("/openapi.json").json()).items():
            assert schema.get("examples"), (
                f"{op}: its JSON body has no example; give its model one (json_schema_extra "
                '{"examples": [...]}, as routers/language.py does): /docs fills it in and this test sends it'
            )
            examples[op.split(" ", 1)[1]] = schema["examples"][0]
        # a new JSON route is listed here, and answered 2xx when its example is sent below
        assert set(examples) == {
            "/v1/spikes/models",
            "/v1/spikes/models/{model_id}/evaluate",
            "/v1/spikes/models/{model_id}/sample",
            "/v1/language/score",
            "/v1/language/next",
        }
        fit = client.post("/v1/spikes/models", json=examples.pop("/v1/spikes/models"))
        assert fit.status_code == 201, fit.text
        # a model worth having: it was one the service called worse than constant rates
        assert fit.json()["held_out_bits_per_spike"] > 0.3 and fit.json()["warnings"] == []
        for path, example in examples.items():
            res = client.post(path.replace("{model_id}", fit.json()["id"]), json=example)
            assert res.status_code == 200, (path, res.text)


def test_the_schema_links_a_fitted_spike_model_to_what_takes_its_id():
    """Each OpenAPI link resolves to an operation of the schema whose path takes the parameter it
    fills, from a field the response has."""
    with TestClient(make_app()) as client:
        spec = client.get("/openapi.json").json()
    links = spec["paths"]["/v1/spikes/models"]["post"]["responses"]["201"]["links"]
    assert {"GetModel", "EvaluateModel", "SampleModel", "DeleteModel"} == set(links)
    answer = spec["components"]["schemas"]["SpikeModelPublic"]["properties"]
    for link in links.values():
        node = spec
        for part in link["operationRef"].removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        params = {p["name"] for p in node["parameters"] if p["in"] == "path"}
        assert set(link["parameters"]) == params == {"model_id"}
        assert link["parameters"]["model_id"] == "$response.body#/id" and "id" in answer


def test_the_schema_says_the_units_the_token_and_the_sockets_it_cannot_list():
    with TestClient(make_app()) as client:
        text = client.get("/openapi.json").json()["info"]["description"]
    for needed in ("degrees", "px/frame", "Bearer", "WS /v1/streams/{name}", "WS /v1/camera"):
        assert needed in text, needed


def test_the_schema_serves_clients_generated_from_it():
    """From the API-client probe: operationIds were FastAPI's (get_video_result_v1_videos__job_id_
    __name__get), refusals had a description but no body schema, the upload's Location was
    undeclared. Now each operation is named by its route, and every refusal's body is described."""
    schema = create_app(Settings(), engine_factory=random_engine).openapi()
    operations = [
        op
        for item in schema["paths"].values()
        for method, op in item.items()
        if method in ("get", "head", "post", "put", "patch", "delete")
    ]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z][a-z_]*", i) for i in ids), ids
    assert {"create_video_job", "get_video_result", "fit_spike_model", "score_text"} <= set(ids)
    for op in operations:
        for code, response in op["responses"].items():
            if int(code) >= 400:
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("HTTPValidationError" if code == "422" else "/Error"), (
                    op,
                    code,
                )
    assert schema["components"]["schemas"]["Error"]["required"] == ["detail"]
    upload = schema["paths"]["/v1/videos"]["post"]["responses"]["202"]
    assert "Location" in upload["headers"] and "content" in upload  # its body model is kept


COUNTS = {"count", "frames", "frames_done", "dropped", "subscribers", "attempts", "seed", "loc"}


def _numeric(prop: dict) -> bool:
    if prop.get("type") in ("number", "integer"):
        return True
    if prop.get("type") == "array":
        return _numeric(prop.get("items", {}))
    return any(_numeric(p) for p in prop.get("anyOf", []) + prop.get("oneOf", []))


def test_every_number_in_the_schema_says_its_unit():
    """From the units probe: job times were Unix seconds and a stream's size [width, height] with
    neither written anywhere (the live socket's times are ms). A number's unit is in its name or
    its description, unless it counts things."""
    schema = create_app(Settings(), engine_factory=random_engine).openapi()
    unit_in_name = re.compile(r"_(deg|px|px_per_frame|s|seconds|ms|bytes)$")
    silent = [
        f"{model}.{name}"
        for model, body in schema["components"]["schemas"].items()
        for name, prop in body.get("properties", {}).items()
        if _numeric(prop)
        and not prop.get("description")
        and not unit_in_name.search(name)
        and name not in COUNTS
        and not name.startswith("n_")
    ]
    assert silent == [], silent


# From the generated-client probe (openapi-python-client): what a client built from the schema
# gets wrong where the schema is vague.


def test_a_result_download_is_binary_first_and_its_ranges_are_documented():
    """The generator reads a response as its first content type: with JSON first, the client parsed
    motion.npz, overlay.mp4 and summary.png as JSON and crashed. A Range request's 206 was not in
    the schema, so a strict generated client raised on it."""
    from v1motion.service.routers.videos import MEDIA_TYPES

    schema = create_app(Settings(), engine_factory=random_engine).openapi()
    answers = schema["paths"]["/v1/videos/{job_id}/{name}"]["get"]["responses"]
    content = answers["200"]["content"]
    first = next(iter(content))
    assert first != "application/json" and content[first]["schema"]["format"] == "binary"
    assert set(MEDIA_TYPES.values()) <= set(content)
    partial = answers["206"]
    assert "Content-Range" in partial["headers"]
    assert all(m["schema"]["format"] == "binary" for m in partial["content"].values())
    assert next(iter(partial["content"])) == first


def test_the_idempotent_replay_has_the_job_as_its_body():
    """A retry with the same Idempotency-Key answers 200 with the job: a generated client gave
    None, and the integrator lost the job's id, without a body schema on that 200."""
    schema = create_app(Settings(), engine_factory=random_engine).openapi()
    replay = schema["paths"]["/v1/videos"]["post"]["responses"]["200"]
    assert replay["content"]["application/json"]["schema"]["$ref"].endswith("/JobPublic")
    assert "Location" in replay["headers"]


def test_every_429_and_503_declares_retry_after():
    """The spike, language and upload refusals send Retry-After, and so do the shutdown's, the
    connection limit's and a data folder's 503 on every operation; the schema had it on one
    operation. The fit's 503 has two reasons: merging two dicts kept only one of them."""
    schema = create_app(Settings(), engine_factory=random_engine).openapi()
    busy = 0
    for path, item in schema["paths"].items():
        for method, op in item.items():
            assert "503" in op["responses"], (path, method)
            for code in ("429", "503"):
                if code in op["responses"]:
                    busy += 1
                    assert "Retry-After" in op["responses"][code]["headers"], (path, method, code)
    assert busy > 20
    spikes = schema["paths"]["/v1/spikes/models"]["post"]["responses"]
    assert "429" in spikes and "worker" in spikes["503"]["description"]
    assert "uploads arriving at once" in spikes["503"]["description"]


def test_the_refusal_of_an_unknown_query_parameter_is_documented_where_it_is_given():
    """GET /v1/streams, /v1/units and /v1/spikes/models take no parameter and answered ?x=1 with a
    422 their schema did not list. The probes outside /v1 ignore a query (an orchestrator's or a
    scraper's) and do not list it."""
    with TestClient(create_app(Settings(), engine_factory=random_engine)) as client:
        spec = client.get("/openapi.json").json()
        for path in ("/v1/streams", "/v1/spikes/models", "/v1/videos"):
            res = client.get(path, params={"x": "1"})
            assert res.status_code == 422 and "'x'" in res.json()["detail"], path
        for path in ("/healthz", "/metrics"):
            assert client.get(path, params={"x": "1"}).status_code == 200, path
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if path.startswith("/v1/"):
                assert "parameter" in op["responses"]["422"]["description"], (path, method)
            else:
                assert "422" not in op["responses"], (path, method)


def test_closed_sets_of_values_are_enums_holding_every_value_the_service_sends():
    """Generated clients typed a stream's state and kind, a spike model's kind and a fit's
    stop_reason as any string: their values were listed in descriptions only."""
    import inspect

    from v1motion.models.spikes import base, glm, lds, plds
    from v1motion.models.spikes.registry import MODEL_KINDS
    from v1motion.service.live import pipeline
    from v1motion.service.settings import SOURCE_KINDS

    schema = create_app(Settings(), engine_factory=random_engine).openapi()
    models = schema["components"]["schemas"]
    stream = models["StreamPublic"]["properties"]
    set_states = re.findall(r'self\.state(?:, [\w.]+)* = "(\w+)"', inspect.getsource(pipeline))
    assert set(set_states) == set(stream["state"]["enum"]), set_states
    assert stream["kind"]["enum"] == list(SOURCE_KINDS)
    assert models["SpikeModelPublic"]["properties"]["kind"]["enum"] == list(MODEL_KINDS)
    bodies = schema["paths"]["/v1/spikes/models"]["post"]["requestBody"]["content"]
    for media in ("application/json", "multipart/form-data"):
        assert bodies[media]["schema"]["properties"]["kind"]["enum"] == list(MODEL_KINDS)
    stop = models["FitPublic"]["properties"]["stop_reason"]["enum"]
    # what the L-BFGS fits, the closed-form GLM and the EM fits (lds, plds) set
    produced = set(re.findall(r'return "(\w+)"', inspect.getsource(base._stop_reason)))
    produced |= set(re.findall(r'"stop_reason": "(\w+)"', inspect.getsource(glm)))
    for module in (lds, plds):
        found = re.findall(r'stop_reason_ = "(\w+)" if \w+ else "(\w+)"', inspect.getsource(module))
        assert found, module
        produced |= {reason for pair in found for reason in pair}
    assert len(produced) == 6 and produced == set(stop), produced


def test_metrics_declare_the_prometheus_text_format():
    with TestClient(make_app()) as client:
        spec = client.get("/openapi.json").json()
        res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def test_a_jobs_result_is_typed_in_the_schema_and_old_or_newer_results_still_serve():
    """JobPublic.result was a bare object: a generated client could not read the ``warnings`` and
    ``main_directions`` the README tells a batch to check."""
    from v1motion.service.jobs.schemas import JobPublic
    from v1motion.service.jobs.store import JobRecord

    spec = make_app().openapi()
    schemas = spec["components"]["schemas"]
    result = schemas["JobResult"]["properties"]
    assert {"warnings", "main_directions", "frames", "fps", "overlay_codec"} <= result.keys()
    peak = schemas["MainDirection"]["properties"]
    assert set(peak) == {"direction_deg", "share", "median_speed_px_per_frame"}
    field = schemas["JobPublic"]["properties"]["result"]
    assert {"$ref": "#/components/schemas/JobResult"} in field["anyOf"]
    # a job an older server ran (fewer fields) and one a newer server ran (more) both serve
    rec = JobRecord(
        id="j", status="succeeded", filename="a.mp4", content_type="video/mp4", size_bytes=9,
        created_at=1.0, started_at=2.0, finished_at=3.0, attempts=1, frames_done=2,
        frames_total=2, error=None, result={"frames": 2, "from_the_future": {"x": 1}},
    )  # fmt: skip
    public = JobPublic.from_record(rec, "/v1/videos").model_dump(mode="json")
    assert public["result"]["frames"] == 2 and public["result"]["warnings"] is None
    assert public["result"]["from_the_future"] == {"x": 1}
