"""bench/live_truth.py reads the fields the service sends, and scores them as it says."""

from __future__ import annotations

import json
import threading

import pytest
from bench_module import load_bench
from engine_double import FakeEngine

from v1motion.service.live.analyse import Analyser
from v1motion.service.live.sources import SyntheticSource
from v1motion.service.metrics import Metrics
from v1motion.service.settings import SourceSpec

lt = load_bench("live_truth")


def test_it_reads_a_result_the_service_encodes_from_the_synthetic_source():
    # The fields it reads are those the service writes: a protocol rename breaks this test, not
    # only the tool (an older copy of it read `motion.global`, a name of protocol version 1 that
    # results now carry only as an alias).
    src = SyntheticSource(
        SourceSpec(name="s", kind="synthetic", width=96, height=64, fps=240), threading.Event()
    )
    src.open()
    a = Analyser(FakeEngine(), "synthetic", Metrics())
    rows = []
    for _ in range(3):
        frame = src.read()
        text = a.analyse(
            frame, t_capture=0.0, wall_ms=0.0, dropped=0, want_flow=True, truth=src.truth
        ).text
        rows.append((lt.row_from_message(text), dict(src.truth), text))
    src.close()
    row, truth, text = rows[-1]
    assert (row.kind, row.true_deg, row.true_speed) == (
        truth["kind"], truth["direction_deg"], truth["speed_px_per_frame"],
    )  # fmt: skip
    motion = json.loads(text)["motion"]
    assert row.deg == motion["global_direction_deg"]
    assert row.speed == motion["global_speed_px_per_frame"]
    assert row.flow_deg is not None and 0 <= row.flow_deg < 360 and row.flow_speed >= 0
    assert rows[0][0].flow_deg is None  # no flow on a stream's first frame
    assert lt.row_from_message('{"type": "status"}') is None
    assert lt.row_from_message('{"type": "result", "truth": null}') is None


def _row(kind, true_deg, deg, speed, flow_deg=None, latency=5.0):
    return lt.Row(
        kind, true_deg, 2.0, deg, speed, flow_deg, None if flow_deg is None else 2.0, latency, 30.0
    )


def test_errors_are_medians_of_wrapped_angles_and_relative_speeds():
    assert lt.angle_error(359.0, 1.0) == 2.0 and lt.angle_error(10.0, 190.0) == 180.0
    rows = [
        _row("pan", 0.0, 350.0, 3.0, flow_deg=1.0),  # 10 deg off, speed +50 %
        _row("pan", 0.0, 4.0, 2.0, flow_deg=359.0),  # 4 deg off, speed exact
        _row("pan", 0.0, 2.0, 1.0, flow_deg=0.0, latency=50.0),  # 2 deg off, speed -50 %
    ]
    de, se, fde, fse = lt._errors(rows)
    assert de == 4.0 and se == 0.5 and fde == 1.0 and fse == 0.0
    lines = lt.summarise(rows)
    assert "| pan 0.0° 2.0 px/frame | 3 | 4.0 | 50 % | 1.0 | 0 % |" in lines
    assert any(line.startswith("| **pan, all** | 3 |") for line in lines)
    assert lines[-1].startswith("fps (median) 30.0, latency p95") and "3 results" in lines[-1]
    assert not any("grating" in line for line in lines)


def test_without_flow_the_peer_columns_are_nan():
    de, se, fde, fse = lt._errors([_row("grating", 90.0, 95.0, 2.0)])
    assert de == 5.0 and se == 0.0
    assert fde != fde and fse != fse  # NaN


@pytest.mark.parametrize("args", [["--help"]])
def test_it_has_a_command_line(args, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["live_truth.py", *args])
    with pytest.raises(SystemExit) as exc:
        lt.main()
    assert exc.value.code == 0 and "--seconds" in capsys.readouterr().out
