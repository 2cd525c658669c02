"""v1motion.service.jobs.sniff and the sandboxed decoder (v1motion.service.jobs.decode) on good and hostile files."""

import os
import signal

import cv2
import numpy as np
import pytest
import video_samples as vs

from v1motion.service.jobs.decode import DecodeError, SandboxedDecoder, VideoRejected, probe
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.sniff import UnsupportedContainer, sniff_container


@pytest.fixture
def good_avi(tmp_path):
    path = tmp_path / "input.bin"
    path.write_bytes(vs.avi(tmp_path, n=12))
    return path


# ------------------------------------------------------------------------------------ sniffing


def test_sniff_accepts_the_listed_containers(tmp_path):
    assert sniff_container(vs.avi(tmp_path)[:64]) == "avi"
    assert sniff_container(vs.mp4(tmp_path)[:64]) == "mp4"
    assert sniff_container(vs.write_video(tmp_path / "a.mkv", "mp4v")[:64]) == "matroska"


@pytest.mark.parametrize(
    "head, says",
    [
        (b"", "empty"),
        (b"#EXTM3U\n#EXTINF:10,\n/etc/passwd\n", "HLS playlist"),
        (b"\xef\xbb\xbf#EXTM3U\n", "HLS playlist"),
        (b"ffconcat version 1.0\nfile a.mp4\n", "ffconcat script"),
        (b"\x89PNG\r\n\x1a\n0000000000", "PNG image"),
        (b"\xff\xd8\xff\xe0000000000000", "JPEG image"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "unrecognised"),
        (b"\x00\x00\x00\x18ftypavif0000", "HEIF/AVIF image"),
        (bytes(range(64)), "unrecognised"),
    ],
)
def test_sniff_refuses_and_names_the_rest(head, says):
    with pytest.raises(UnsupportedContainer, match=says):
        sniff_container(head)


# ------------------------------------------------------------------------------------ decoding


def test_decodes_every_frame_in_order(good_avi):
    expected = vs.moving_square_frames(12)
    with SandboxedDecoder(good_avi, Limits()) as dec:
        assert (dec.info.width, dec.info.height, dec.info.codec) == (96, 64, "mjpg")
        assert dec.info.fps == pytest.approx(10.0)
        frames = list(dec.frames())
    assert len(frames) == 12 and not dec.stopped_at_cap
    # MJPG is lossy: compare loosely, but tightly enough to tell frames apart
    errors = [
        np.abs(f.astype(int) - e.astype(int)).mean() for f, e in zip(frames, expected, strict=True)
    ]
    assert max(errors) < 8
    assert np.abs(frames[0].astype(int) - expected[5].astype(int)).mean() > 10


@pytest.mark.parametrize("module", ["json", "dis"])
def test_files_where_the_service_runs_are_not_imported_by_the_decoder(
    good_avi, tmp_path, monkeypatch, module
):
    # a user's script named like a standard module, in the folder the service was started from:
    # the decoder (``python -m``) put that folder first on its path and ran it, failing every job
    here = tmp_path / "where-the-service-runs"
    here.mkdir()
    (here / f"{module}.py").write_text("raise SystemExit('a file of the user was imported')\n")
    monkeypatch.chdir(here)
    with SandboxedDecoder(good_avi, Limits()) as dec:
        assert len(list(dec.frames())) == 12


def test_large_frames_are_shrunk_to_max_side(good_avi):
    with SandboxedDecoder(good_avi, Limits(max_side=48, min_side=16)) as dec:
        frame = next(iter(dec.frames()))
    assert frame.shape == (32, 48, 3) and dec.info.scale == pytest.approx(0.5)


@pytest.mark.parametrize("turn", [-90, 90, 180])
def test_a_phone_clip_with_a_rotation_flag_is_decoded_upright(tmp_path, turn):
    """Phones store portrait clips as landscape frames with a rotation flag (a display matrix),
    which every player applies: the motion of a clip read on its side would be turned too."""
    av = pytest.importorskip("av")
    upright = vs.moving_square_frames(6, size=(64, 96))  # 64 wide, 96 high, as players show it
    k = {-90: 1, 90: -1, 180: 2}[turn]  # the stored frames, turned back by the flag
    path = tmp_path / "input.bin"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a rotation flag (PyAV 18 can)")
        stream.height, stream.width = np.rot90(upright[0], k).shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "0"}
        stream.set_display_rotation(turn)
        for f in upright:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(f, k)), "bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with SandboxedDecoder(path, Limits(min_side=16)) as dec:
        assert (dec.info.width, dec.info.height) == (64, 96)
        frames = list(dec.frames())
    assert len(frames) == 6 and frames[0].shape == (96, 64, 3)
    errors = [
        np.abs(f.astype(int) - e.astype(int)).mean() for f, e in zip(frames, upright, strict=True)
    ]
    assert max(errors) < 8


def test_declared_frame_count_is_not_trusted(tmp_path):
    path = tmp_path / "input.bin"
    path.write_bytes(vs.lying_frame_count_avi(tmp_path, n=12))
    with SandboxedDecoder(path, Limits()) as dec:
        assert dec.info.declared_frames == 10_000_000
        assert dec.info.max_frames == 6000  # 600 s at 10 fps: the duration cap, not the header
        assert sum(1 for _ in dec.frames()) == 12


@pytest.mark.parametrize("limits", [Limits(max_frames=5), Limits(max_seconds=0.5)])
def test_frame_and_duration_caps_stop_decoding(good_avi, limits):
    with SandboxedDecoder(good_avi, limits) as dec:
        assert sum(1 for _ in dec.frames()) == 5
        assert dec.stopped_at_cap


@pytest.mark.parametrize(
    "make, reason",
    [
        (vs.huge_dimensions_avi, "8000x6000 exceeds the limit of 3840x2160"),
        (vs.zero_fps_avi, "frame rate .* outside the accepted range"),
        (vs.no_video_stream_avi, "no video stream"),
        (
            lambda t: vs.write_video(t / "raw.avi", None),
            "uncompressed .* convert it losslessly to FFV1",
        ),
        (lambda t: vs.mp4(t)[:1200], "could not be opened"),
        (lambda t: os.urandom(5000), "could not be opened"),
        (lambda t: vs.write_video(t / "s.avi", "MJPG", size=(48, 32)), "too small"),
        (
            lambda t: vs.write_video(t / "n.avi", "MJPG", n=3, size=(1300, 64)),
            "1300x64 is too narrow: shrunk to 640x32",
        ),
    ],
    ids=[
        "huge-dimensions",
        "zero-fps",
        "no-video-stream",
        "codec",
        "truncated-mp4",
        "random",
        "tiny",
        "narrow-once-shrunk",
    ],
)
def test_probe_refuses_with_a_reason(tmp_path, make, reason):
    path = tmp_path / "input.bin"
    path.write_bytes(make(tmp_path))
    with pytest.raises(VideoRejected, match=reason):
        probe(path, Limits())


def test_an_iphone_prores_clip_is_refused_naming_the_codec_and_how_to_convert_it(tmp_path):
    """An iPhone Pro records ProRes on request: its refusal named only the FourCC 'apch'."""
    av = pytest.importorskip("av")
    path = tmp_path / "input.bin"
    with av.open(str(path), "w", format="mov") as out:
        stream = out.add_stream("prores_ks", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv422p10le"
        stream.codec_tag, stream.options = "apch", {"profile": "3"}
        for f in vs.moving_square_frames(3):
            frame = av.VideoFrame.from_ndarray(f, "bgr24").reformat(format="yuv422p10le")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(VideoRejected, match=r"'apch' \(Apple ProRes\) is not accepted; convert"):
        probe(path, Limits())


def test_a_refused_file_leaves_no_decoder_process_or_pipe_behind(tmp_path):
    path = tmp_path / "input.bin"
    path.write_bytes(vs.write_video(tmp_path / "s.avi", "MJPG", size=(48, 32)))
    dec = SandboxedDecoder(path, Limits(), probe_only=True)
    with pytest.raises(VideoRejected, match="too small"):
        dec.__enter__()  # what ``with`` does: __exit__ never runs when __enter__ raises
    assert dec._proc.returncode is not None  # reaped, not a zombie until garbage collection
    assert dec._proc.stdout.closed


def test_decoders_leave_sigterm_to_the_service(good_avi):
    """systemd signals the whole process group; the decoder outlives it until its parent stops it."""
    with SandboxedDecoder(good_avi, Limits()) as dec:
        os.kill(dec.pid, signal.SIGTERM)
        assert len(list(dec.frames())) == 12


def test_playlist_and_concat_cannot_reach_other_files(tmp_path, good_avi):
    """Even past the sniffer, the FFmpeg backend is held to plain files and listed demuxers."""
    secret = tmp_path / "elsewhere.avi"
    secret.write_bytes(good_avi.read_bytes())
    playlist = tmp_path / "playlist.m3u8"  # the extension FFmpeg wants before it follows one
    playlist.write_bytes(vs.hls_playlist(secret))
    concat = tmp_path / "list.ffconcat"
    concat.write_bytes(vs.ffconcat_script(secret.name))
    # Control: OpenCV left to its defaults follows the playlist to the other file.
    cap = cv2.VideoCapture(str(playlist), cv2.CAP_FFMPEG)
    assert cap.isOpened() and cap.read()[0]
    cap.release()
    for path in (playlist, concat):
        with pytest.raises(VideoRejected, match="could not be opened"):
            probe(path, Limits())


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT])
def test_a_decoder_crash_fails_cleanly(tmp_path, sig):
    path = tmp_path / "input.bin"
    path.write_bytes(vs.avi(tmp_path, n=400, size=(320, 240)))
    with SandboxedDecoder(path, Limits()) as dec:
        frames = dec.frames()
        next(frames)
        os.kill(dec.pid, sig)
        with pytest.raises(DecodeError, match=rf"crashed \({sig.name}\)"):
            for _ in frames:
                pass
    assert dec._proc.poll() is not None


def test_memory_cap_is_enforced(good_avi):
    with pytest.raises(DecodeError, match="ran out of memory"):
        probe(good_avi, Limits(memory_mb=64))


@pytest.mark.slow
def test_deadline_kills_a_stalled_decoder(tmp_path):
    path = tmp_path / "input.bin"
    path.write_bytes(vs.avi(tmp_path, n=60, size=(320, 240)))  # far more than the 1 MB pipe holds
    dec = SandboxedDecoder(path, Limits(deadline_s=3.0))
    with pytest.raises(DecodeError, match="took longer than 3 s"):
        with dec:
            frames = dec.frames()
            next(frames)
            os.kill(dec.pid, signal.SIGSTOP)  # a hung decoder
            for _ in frames:
                pass
    assert dec._proc.poll() is not None


@pytest.mark.parametrize(
    ("width", "height", "refused"),
    [(3840, 2160, False), (2160, 3840, False), (3841, 2000, True), (2000, 3841, True),
     (2200, 2200, True)],
)  # fmt: skip
def test_the_size_limit_holds_either_way_round(width, height, refused):
    """A portrait 4K video (2160x3840) was refused as beyond 3840x2160: it is the same work."""
    from v1motion.service.jobs.decode import check_probe

    if refused:
        with pytest.raises(VideoRejected, match="exceeds the limit of 3840x2160"):
            check_probe(width, height, 30.0, "avc1", Limits())
    else:
        check_probe(width, height, 30.0, "avc1", Limits())


def test_each_frame_carries_its_own_time_so_a_variable_frame_rate_is_kept(tmp_path):
    """A phone records at a variable rate: its frames were timed as index / mean fps (frame 45 of a
    video at 1.5 s labelled 3.0 s)."""
    path = tmp_path / "input.bin"
    path.write_bytes(vs.variable_rate_mp4(tmp_path, n=12, slow_from=6))
    with SandboxedDecoder(path, Limits()) as dec:
        assert sum(1 for _ in dec.frames()) == 12
    want = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1]
    np.testing.assert_allclose(dec.frame_times, want, atol=1e-3)
    steady = tmp_path / "steady.bin"
    steady.write_bytes(vs.avi(tmp_path, n=5))  # 10 fps
    with SandboxedDecoder(steady, Limits()) as dec:
        assert sum(1 for _ in dec.frames()) == 5
    np.testing.assert_allclose(dec.frame_times, [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)


def _shared_video(name: str):
    from v1motion.models.datasets import shared_data_dir

    path = shared_data_dir() / "videos" / name
    if not path.exists():
        pytest.skip(f"no shared video {name}")
    return path


def test_a_video_with_b_frames_is_timed_in_display_order():
    """With B-frames OpenCV reports the time of the packet it last decoded, in decode order (box.mp4:
    0, 101, 67, 134, 34 ms...): taken as the frames' times, a constant 30 fps file was called
    variable, its ``time_s`` stepping 0.6 ms and 66 ms in turn."""
    with SandboxedDecoder(_shared_video("box.mp4"), Limits(max_frames=60)) as dec:
        assert sum(1 for _ in dec.frames()) == 60
    steps = np.diff(dec.frame_times)
    np.testing.assert_allclose(steps, 1 / dec.info.fps, rtol=0.05)


def test_the_seconds_cap_holds_by_the_frames_own_times():
    """An AVI with dropped frames declares 15 fps and holds 68 frames over 29.5 s: capped at 5 s by
    frames / fps (75 frames) it ran all 29.5 s."""
    with SandboxedDecoder(_shared_video("tree.avi"), Limits(max_seconds=5.0)) as dec:
        n = sum(1 for _ in dec.frames())
    assert dec.stopped_at_cap
    assert 5.0 - 0.8 < dec.frame_times[-1] <= 5.0  # its frames are 0.33-0.73 s apart
    assert n == len(dec.frame_times) < 68


@pytest.mark.parametrize(
    "fourcc, suffix, fps",
    [("FFV1", "mkv", 30.0), ("MJPG", "avi", 0.5), ("MJPG", "avi", 1000.0)],
)  # lossless archives of lab recordings; a timelapse; a high-speed camera
def test_lab_videos_are_accepted(tmp_path, fourcc, suffix, fps):
    path = tmp_path / f"clip.{suffix}"
    vs.write_video(path, fourcc, n=6, fps=fps)
    with SandboxedDecoder(path, Limits()) as dec:
        assert sum(1 for _ in dec.frames()) == 6
    assert dec.info.codec == fourcc.lower() and dec.info.fps == pytest.approx(fps, rel=1e-3)


def test_the_decoder_gets_no_token_nor_secret_from_the_servers_environment(monkeypatch):
    """The decoder parses hostile files; its environment held the server's V1MOTION_TOKEN."""
    from v1motion.service.jobs.decode import _child_env

    monkeypatch.setenv("V1MOTION_TOKEN", "s3cret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "k")
    monkeypatch.setenv("MY_API_KEY", "k")
    env = _child_env()
    assert not {"V1MOTION_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_API_KEY"} & set(env)
    assert "s3cret" not in env.values()
    assert env["PATH"] == os.environ["PATH"] and env["OMP_NUM_THREADS"] == "1"
