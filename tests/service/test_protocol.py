"""v1motion.service.protocol.dumps: the compact JSON of every websocket message and motion.json frame."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from v1motion.models.motion.engine import MotionFrame
from v1motion.service import protocol

ROOT = Path(__file__).resolve().parents[2]


def _frame(rng, rows=30, cols=40, **kw) -> MotionFrame:
    """A motion frame of 640x480's grid with values of every kind the engine can give: wide
    ranges, exact halves (rounding ties), -0.0, tiny values that round to 0, NaN and infinities."""
    direction = rng.uniform(-20, 20, (rows, cols)).astype(np.float32)
    speed = (rng.gamma(1.0, 3.0, (rows, cols)) * rng.choice([1, 10, 1e-4], (rows, cols))).astype(
        np.float32
    )
    conf = rng.random((rows, cols)).astype(np.float32)
    speed.flat[:6] = [np.nan, np.inf, -np.inf, -0.0, 0.125, 0.005]
    conf.flat[:4] = [-1e-9, 0.5, 0.015, np.nan]
    hist = rng.random(16).astype(np.float32) * rng.choice([1.0, 1e-5], 16)
    fields = dict(
        direction=direction, speed=speed, confidence=conf, cell=16, direction_hist=hist,
        speed_hist=np.r_[np.float32(np.nan), rng.random(6).astype(np.float32)],
        top_units=[(3, 0.25), (7, float("nan")), (9, 1e-7)], global_direction=-1e-9,
        global_speed=float(rng.gamma(1.0, 2.0)), global_confidence=0.5, active_per_patch=2.31,
    )  # fmt: skip
    return MotionFrame(**(fields | kw))


@pytest.mark.parametrize("seed", range(5))
def test_dumps_writes_the_text_json_writes_for_a_frames_motion(seed):
    rng = np.random.default_rng(seed)
    msg = {"v": protocol.SCHEMA_VERSION, "type": "result", "seq": seed, "capture_ts": 1234.567}
    msg |= {"timing": {"engine_ms": 3.25, "fps": 29.97}, "motion": _frame(rng).to_dict()}
    text = protocol.dumps(msg)
    assert text == json.dumps(msg, separators=(",", ":"), allow_nan=False)
    assert json.loads(text) == msg


def test_dumps_writes_numpy_numbers_and_arrays_as_json_numbers():
    obj = {"a": np.float64(1.5), "b": np.int64(3), "c": np.array([[0.25, 2.0]]), 4: "k"}
    assert json.loads(protocol.dumps(obj)) == {"a": 1.5, "b": 3, "c": [[0.25, 2.0]], "4": "k"}


def test_dumps_writes_small_numbers_and_other_characters_as_the_same_values():
    # where the text may differ from json.dumps: exponents below 1e-4 (1e-5, not 1e-05), UTF-8
    obj = {"x": [1e-5, 1.5e-7, 0.0001, 1e16, -0.0], "detail": "cannot read vidéo.avi: 90°"}
    assert json.loads(protocol.dumps(obj)) == obj


def test_the_dashboard_counts_moving_cells_as_the_engine_does():
    """The distribution panels and the map count cells as the dominant motion does: the dashboard's
    MOVING_FROM is the engine's."""
    import re

    from v1motion.models.motion.engine import MOVING_FROM
    from v1motion.service.settings import Settings

    script = (Settings().web_dir / "app.js").read_text()
    found = re.search(r"const MOVING_FROM = \[([0-9.]+), ([0-9.]+)\];", script)
    assert found is not None
    assert (float(found[1]), float(found[2])) == MOVING_FROM


def _named_in(doc: str, key: str) -> bool:
    """``key`` written as a name in ``doc``: in backticks (alone or dotted) or as a JSON key."""
    return bool(re.search(rf'(`(\w+\.)*{key}`|"{key}"|`\{{[^`]*\b{key}\b)', doc))


def test_every_field_a_viewer_receives_is_named_in_the_protocol_docs():
    """Nothing held docs/protocol.md to what the sockets send: a contributor adding a field had
    no test to remind them to document it. Every key of a real result (with flow and truth), its
    ``motion``, ``timing``, ``flow`` and ``truth``, and of a ``status`` is named there."""
    from fastapi.testclient import TestClient
    from service_helpers import random_engine

    from v1motion.service.app import create_app
    from v1motion.service.settings import Settings

    doc = (ROOT / "docs" / "protocol.md").read_text()
    seen: dict[str, set] = {}
    with (
        TestClient(create_app(Settings(), engine_factory=random_engine)) as c,
        c.websocket_connect("/v1/streams/synthetic?flow=1") as ws,
    ):
        while not {"result", "status", "flow"} <= seen.keys():
            msg = ws.receive()
            if not msg.get("text"):
                continue
            m = json.loads(msg["text"])
            seen.setdefault(m["type"], set()).update(m)
            for part in ("motion", "timing", "flow", "truth"):
                if m["type"] == "result" and isinstance(m.get(part), dict):
                    seen.setdefault(part, set()).update(m[part])
    unnamed = sorted(
        f"{where}.{key}" for where, keys in seen.items() for key in keys if not _named_in(doc, key)
    )
    assert unnamed == []
