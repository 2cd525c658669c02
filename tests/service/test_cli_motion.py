"""``v1motion motion INPUT -o OUTDIR``."""

import json

import numpy as np
import pytest
import video_samples as vs

from v1motion.service.cli import main
from v1motion.service.jobs.layout import RESULT_FILES


@pytest.mark.slow
def test_motion_command_writes_the_results(tmp_path, capsys):
    src = tmp_path / "clip.avi"
    src.write_bytes(vs.avi(tmp_path, n=6, size=(128, 96)))
    out = tmp_path / "results" / "clip"
    assert main(["motion", str(src), "-o", str(out), "--engine", "random"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    printed = capsys.readouterr().out
    result = json.loads(printed[: printed.rindex("}") + 1])
    assert result["frames"] == 6 and "main_directions" in result
    assert "main directions:" in printed and "x real time" in printed
    assert "replaced" not in capsys.readouterr().err
    # run again into the same folder: it says it replaced the earlier results
    assert main(["motion", str(src), "-o", str(out), "--engine", "random"]) == 0
    assert f"note: the earlier results in {out} were replaced" in capsys.readouterr().err
    # a refused file leaves them, and says nothing of replacing
    before = (out / "motion.json").read_bytes()
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    assert main(["motion", str(bad), "-o", str(out), "--engine", "random"]) == 2
    assert "replaced" not in capsys.readouterr().err
    assert (out / "motion.json").read_bytes() == before


def test_motion_command_refuses_hostile_input_and_busy_folders(tmp_path, capsys, monkeypatch):
    from v1motion.service.jobs import engines

    def no_engine(*a, **kw):
        raise AssertionError("an engine was built for a file that is refused")

    monkeypatch.setattr(engines, "warm_engine", no_engine)
    playlist = tmp_path / "list.m3u8"
    playlist.write_bytes(vs.hls_playlist(tmp_path / "clip.avi"))
    assert main(["motion", str(playlist), "-o", str(tmp_path / "out"), "--engine", "random"]) == 2
    err = capsys.readouterr().err
    assert "HLS playlist" in err and "frame [" not in err  # no empty progress bar before it
    assert not (tmp_path / "out").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    src = tmp_path / "clip.avi"
    src.write_bytes(vs.avi(tmp_path, n=4))
    assert main(["motion", str(src), "-o", str(busy), "--engine", "random"]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert (busy / "thesis.tex").read_text() == "precious"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    assert main(["motion", str(src), "-o", str(a_file), "--engine", "random"]) == 2
    assert "notes.txt is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value", [("--max-frames", "0"), ("--max-seconds", "-1"), ("--max-side", "0")]
)
def test_a_cap_that_is_not_positive_is_refused_as_such(tmp_path, capsys, flag, value):
    """--max-frames 0 read 'no frame could be decoded: the file is truncated or damaged'."""
    src = tmp_path / "clip.avi"
    src.write_bytes(vs.avi(tmp_path, n=4))
    with pytest.raises(SystemExit) as stop:
        main(["motion", str(src), "-o", str(tmp_path / "out"), flag, value])
    assert stop.value.code == 2
    assert f"argument {flag}: must be more than 0, got {value}" in capsys.readouterr().err


def test_motion_command_says_why_it_cannot_write_the_results(tmp_path, capsys, monkeypatch):
    """A place where the results cannot go is an error message and status 2, not a traceback."""
    from v1motion.service.jobs import layout

    src = tmp_path / "clip.avi"
    src.write_bytes(vs.avi(tmp_path, n=4))
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "results"  # its parent is a file
    assert main(["motion", str(src), "-o", str(out), "--engine", "random"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the results folder" in err and "a-file" in err

    def full_disk(path, **arrays):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(
        np, "savez_compressed", full_disk
    )  # the disk fills as the results are saved
    out = tmp_path / "results"
    assert main(["motion", str(src), "-o", str(out), "--engine", "random"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists() and not layout.ResultsFolder(out).work.exists()  # nothing half-written


def test_h264_overlays_without_pyav_are_refused_as_such(tmp_path, capsys, monkeypatch):
    import importlib.util

    src = tmp_path / "in.avi"
    src.write_bytes(vs.avi(tmp_path, n=4))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "av" else real(n))
    out = tmp_path / "out"
    assert main(["motion", str(src), "-o", str(out), "--overlay-codec", "h264"]) == 2
    assert "need PyAV: pip install 'v1motion[h264]'" in capsys.readouterr().err
    assert not out.exists()
