"""Statuses the API really answers are in its OpenAPI schema (schemathesis fuzzes the container
against that schema in CI, and an undocumented status fails it)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from service_helpers import random_engine

from service.app import create_app
from service.settings import Settings


def test_unknown_stream_404_is_documented():
    app = create_app(Settings(), engine_factory=random_engine)
    with TestClient(app) as client:
        res = client.get("/v1/streams/nope")
        assert res.status_code == 404
        assert "nope" in res.json()["detail"]
        spec = client.get("/openapi.json").json()
    assert "404" in spec["paths"]["/v1/streams/{name}"]["get"]["responses"]
    assert "503" in spec["paths"]["/v1/units"]["get"]["responses"]


def test_405_allow_lists_every_method_of_the_path():
    app = create_app(Settings(), engine_factory=random_engine)

    def delete_stream(name: str) -> None:
        return None

    app.router.add_api_route("/v1/streams/{name}", delete_stream, methods=["DELETE"])
    app.router.routes.insert(0, app.router.routes.pop())  # before the static files, like the others
    app.openapi_schema = None
    with TestClient(app) as client:
        res = client.put("/v1/streams/synthetic")
        assert res.status_code == 405
        assert res.headers["allow"] == "DELETE, GET"
        assert client.post("/v1/streams").headers["allow"] == "GET"
        # a path of the dashboard's static files keeps their own answer
        assert client.post("/index.html").headers["allow"] == "GET, HEAD"
