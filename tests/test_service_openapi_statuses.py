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
