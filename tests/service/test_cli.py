"""The ``v1motion`` command line as a user meets it: help, the printed address, a busy port."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from service_helpers import ServerThread, random_engine, serve_command

from v1motion.service.app import create_app
from v1motion.service.cli import build_parser
from v1motion.service.commands.serve import announce_when_answering
from v1motion.service.jobs.lock import StoreLock, StoreLocked
from v1motion.service.settings import Settings


def _parsers(parser: argparse.ArgumentParser, name: str = "v1motion"):
    """Every parser of the command tree, with its command line."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_top_level_help_speaks_to_users_with_an_example():
    text = build_parser().format_help()
    assert "``" not in text and "entry point" not in text  # no developer docstring
    assert "examples:" in text and "v1motion serve" in text


def test_every_option_has_help_and_says_its_default():
    for name, parser in _parsers(build_parser()):
        required_groups = {
            a for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions
        }
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.dest}: no help"
            flag = action.nargs == 0  # store_true and friends
            if action.option_strings and not (action.required or flag or action in required_groups):
                shown = formatter._get_help_string(action)
                assert "default" in shown, f"{name} {action.option_strings[0]}: no default shown"
        if name != "v1motion":
            assert parser.description and parser.epilog, f"{name}: no description or example"


def test_a_negative_seed_is_refused_naming_the_option_in_every_command(capsys):
    seeded = [
        (name, parser)
        for name, parser in _parsers(build_parser())
        if any("--seed" in a.option_strings for a in parser._actions)
    ]
    assert len(seeded) >= 6  # train, fit-readout, stfit, lm train, spikes fit and sample
    for name, parser in seeded:
        with pytest.raises(SystemExit) as stop:
            parser.parse_known_args(["--seed", "-1"])
        assert stop.value.code == 2, name
        assert "argument --seed: must be 0 or more, got -1" in capsys.readouterr().err, name


def test_engine_option_is_explained():
    serve = dict(_parsers(build_parser()))["v1motion serve"]
    engine = next(a for a in serve._actions if a.dest == "engine")
    assert "trained" in engine.help and "random" in engine.help


def _refusal_of_serve(port: int, data_dir) -> str:
    """``v1motion serve`` on ``port`` with ``data_dir``: it must refuse with status 1, in one line
    on stderr and no traceback, without announcing a dashboard. Returns that line."""
    out = subprocess.run(
        serve_command(port),
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"V1MOTION_DATA_DIR": str(data_dir)},
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "dashboard on" not in out.stdout
    return lines[0]


def test_busy_port_is_one_line_that_names_the_fix_and_no_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _refusal_of_serve(port, tmp_path)  # a data folder no running service holds
    assert f"port {port}" in line and "already in use" in line
    assert "--port" in line and "V1MOTION_PORT" in line


def test_a_data_folder_in_use_is_one_line_that_names_the_holder_and_the_fix(tmp_path):
    """A second service on the data folder of a running one: one line naming the holder and what
    to change, before it listens (it was uvicorn's failed startup: some sixty lines of traceback,
    exit status 3, after the port had been bound)."""
    held = StoreLock(tmp_path)
    held.acquire()
    try:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        line = _refusal_of_serve(port, tmp_path)
    finally:
        held.release()
    assert f"pid {os.getpid()}" in line and "in use by another v1motion service" in line
    assert "V1MOTION_DATA_DIR" in line and "--port" in line


def test_serve_holds_the_data_folder_from_its_check_until_the_server_stops(tmp_path, monkeypatch):
    """``v1motion serve`` keeps the job store's lock it checked and hands it to the app: a probe
    released again before the app locked let two services started in the same instant both pass,
    and the second died in start-up with uvicorn's traceback after all."""
    from v1motion.service import server
    from v1motion.service.commands import serve

    seen = {}

    def run_server(self, sockets):  # in place of uvicorn: is the folder still taken by serve?
        try:
            StoreLock(tmp_path).acquire()
            seen["free"] = True
        except StoreLocked:
            seen["free"] = False

    monkeypatch.setattr(server.Server, "run", run_server)
    monkeypatch.setattr(serve, "announce_when_answering", lambda *a: None)
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)  # not this process's SIGTERM
    monkeypatch.setenv("V1MOTION_DATA_DIR", str(tmp_path))
    args = build_parser().parse_args(["serve", "--engine", "random", "--port", "0"])
    assert serve.run(args) == 0
    assert seen == {"free": False}
    after = StoreLock(tmp_path)
    after.acquire()  # released when the server stopped
    after.release()


def test_idle_connections_outlive_the_clients_pool_expiry(tmp_path, monkeypatch):
    """uvicorn's 5 s keep-alive equals httpx's pool expiry: a POST on a connection idle for 4.8 s
    met the server closing it and failed with no answer."""
    from v1motion.service import server
    from v1motion.service.commands import serve

    seen = []
    monkeypatch.setattr(server.Server, "run", lambda self, sockets: seen.append(self.config))
    monkeypatch.setattr(serve, "announce_when_answering", lambda *a: None)
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    monkeypatch.setenv("V1MOTION_DATA_DIR", str(tmp_path))
    for env, expected in ((None, 30.0), ("2.5", 2.5)):
        if env:
            monkeypatch.setenv("V1MOTION_KEEP_ALIVE_S", env)
        args = build_parser().parse_args(["serve", "--engine", "random", "--port", "0"])
        assert serve.run(args) == 0
        assert seen[-1].timeout_keep_alive == expected


def test_address_is_printed_only_once_the_server_answers(capsys):
    srv = ServerThread(create_app(Settings(), engine_factory=random_engine))
    stop = threading.Event()
    announcer = threading.Thread(
        target=announce_when_answering,
        args=("127.0.0.1", srv.port, stop, time.monotonic(), 0.05),
        daemon=True,
    )
    announcer.start()
    try:
        time.sleep(0.6)  # the socket listens, but nothing answers HTTP yet
        assert capsys.readouterr().out == ""
        with srv:
            announcer.join(30)
            assert not announcer.is_alive()
    finally:
        stop.set()
    out = capsys.readouterr().out
    url_at = out.index(f"dashboard on http://127.0.0.1:{srv.port}/")
    assert url_at < out.index("motion engine ready")


def test_the_command_makes_openmp_threads_wait_passively_unless_told_otherwise():
    from import_env import env_after_import

    assert env_after_import("v1motion.service.cli", "OMP_WAIT_POLICY") == "PASSIVE"
    assert env_after_import("v1motion.service.cli", "OMP_WAIT_POLICY", preset="ACTIVE") == "ACTIVE"


def test_help_answers_without_loading_the_numerics():
    """``v1motion --help`` and every subcommand's help build the whole parser; none of them loads Numba,
    OpenCV or the engine (that took 0.6 s of every help before the training settings moved out of the
    training module)."""
    import sys

    code = (
        "import sys; from v1motion.service.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('numba', 'cv2', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_value_a_command_cannot_use_is_one_line_and_verbose_shows_where(capsys):
    from v1motion.service.cli import main

    assert main(["lm", "score", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: text contains no words to score") and "Traceback" not in err
    with pytest.raises(ValueError, match="no words"):  # -v: the traceback, for a bug report
        main(["-v", "lm", "score", ""])


def test_analyze_without_trained_weights_says_so_in_one_line(tmp_path, capsys):
    from v1motion.service.cli import main

    missing = tmp_path / "none.npz"
    assert main(["analyze", "--weights", str(missing), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {missing} not found: run `v1motion train` first")
    assert not (tmp_path / "rep").exists()


def test_update_weights_rewrites_the_tuning_and_keeps_every_trained_array(tmp_path):
    import numpy as np

    from v1motion.models.motion.tuning import N_DIRECTIONS, SPEEDS, TuningSummary
    from v1motion.service.commands.analyze import write_tuning

    path = tmp_path / "w.npz"
    rng = np.random.default_rng(0)
    trained = {"W": rng.standard_normal((5, 3)), "R": rng.standard_normal((3, 3))}
    np.savez_compressed(path, **trained, tuning=np.array('{"old": true}'))
    n = 3
    summary = TuningSummary(
        di=np.array([0.1, 0.9, 1.0]), pref_dir=np.zeros(n), responsive=np.ones(n, bool),
        ds=np.ones(n, bool), pref_speed=np.ones(n), di_natural=np.zeros(n),
        pref_dir_natural=np.zeros(n), responsive_natural=np.ones(n, bool), orientation=np.zeros(n),
        speed_curves=np.ones((n, len(SPEEDS))), direction_curves=np.ones((N_DIRECTIONS, n)),
        metrics={},
    )  # fmt: skip
    write_tuning(path, summary)
    with np.load(path) as f:
        assert sorted(f.files) == ["R", "W", "tuning"]
        for k, v in trained.items():
            np.testing.assert_array_equal(f[k], v)
        assert json.loads(str(f["tuning"]))["di"] == [0.1, 0.9, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temporary file left


def test_a_numba_cache_this_user_cannot_write_is_used_through_a_copy(tmp_path, monkeypatch, capsys):
    """In the container as another user, or on a read-only root, Numba would not load the image's
    cache ("no locator available") and the service died at start with a 34-line traceback."""
    from v1motion.service import cli

    cache = tmp_path / "numba"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "kernels.nbi").write_bytes(b"index")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(cache) else real(p, m))
    at_exit = []
    monkeypatch.setattr(cli.atexit, "register", lambda f, *a, **k: at_exit.append((f, a, k)))
    cli.usable_numba_cache()
    copy = os.environ["NUMBA_CACHE_DIR"]
    assert copy != str(cache) and (Path(copy) / "models" / "kernels.nbi").read_bytes() == b"index"
    assert "is not writable by this user; using a copy" in capsys.readouterr().err
    for f, a, k in at_exit:  # what the process's exit runs: one copy per start was left in /tmp
        f(*a, **k)
    assert not Path(copy).exists() and cache.is_dir()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    monkeypatch.setattr(os, "access", real)
    cli.usable_numba_cache()  # writable: left as it is
    assert os.environ["NUMBA_CACHE_DIR"] == str(cache)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times from /proc")
def test_cache_copies_of_processes_that_are_gone_are_swept_at_the_next_start(tmp_path, monkeypatch):
    """A process killed with SIGKILL never ran its exit handler: each such start left its copy in
    /tmp, and a container restarted in place keeps its /tmp with PID 1 reused."""
    from v1motion.service import cli

    cache = tmp_path / "numba"
    cache.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(cli.tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(cache) else real(p, m))
    monkeypatch.setattr(cli.atexit, "register", lambda *a, **k: None)
    me, mine = os.getpid(), cli._start_mark(os.getpid())
    gone = [
        "v1motion-numba-999999999-12345-abcd1234",
        f"v1motion-numba-{me}-{int(mine) - 1}-reused1",
    ]
    kept = [f"v1motion-numba-{me}-{mine}-running", "v1motion-numba-olderstyle", "other-thing"]
    for name in gone + kept:
        (tmp / name).mkdir()
        (tmp / name / "kernels.nbi").write_bytes(b"index")
    cli.usable_numba_cache()
    left = {p.name for p in tmp.iterdir()}
    new = Path(os.environ["NUMBA_CACHE_DIR"])
    assert new.parent == tmp and new.name.startswith(f"v1motion-numba-{me}-{mine}-")
    assert left == set(kept) | {new.name}


def test_a_data_folder_this_user_cannot_write_is_named_with_the_user(tmp_path, monkeypatch):
    """A host folder mounted into the container for another user: say whose it must be."""
    import errno

    from v1motion.service.commands import serve

    def refused(self):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(StoreLock, "acquire", refused)
    lock, why = serve._lock_data_dir(tmp_path, 8000)
    assert lock is None
    assert why == (
        f"cannot use the data folder {tmp_path}: Permission denied; it must be writable by this "
        f"user (uid {os.getuid()})"
    )


@pytest.mark.parametrize(
    "argv, said",
    [
        (["train", "--steps-w", "0"], "argument --steps-w: must be 1 or more, got 0"),
        (["train", "--patch", "0"], "argument --patch: must be 1 or more, got 0"),
        (["train", "--n-atoms", "-2"], "argument --n-atoms: must be 1 or more, got -2"),
        (["fit-readout", "--sequences", "0"], "argument --sequences: must be 1 or more, got 0"),
        (["fit-readout", "--hidden", "0"], "argument --hidden: must be 1 or more, got 0"),
        (["fit-readout", "--tau", "-1"], "argument --tau: must be above 0, got -1"),
        (["fit-readout", "--pool-px", "32", "0"], "argument --pool-px: must be 1 or more, got 0"),
        (["stfit", "--frames", "0"], "argument --frames: must be 1 or more, got 0"),
    ],
)
def test_counts_and_sizes_of_zero_are_refused_before_any_work(capsys, argv, said):
    """Each ran for seconds to minutes and ended in a traceback (IndexError, ZeroDivisionError,
    AttributeError), some leaving an empty output folder."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("out", ["DIR", "DIR/readout", "DIR/no-such-folder/readout.npz"])
def test_fit_readout_refuses_an_out_it_would_write_elsewhere_or_fail_on_at_the_end(
    tmp_path, capsys, out
):
    from v1motion.service.cli import main

    out = out.replace("DIR", str(tmp_path))
    assert main(["fit-readout", "--out", out, "--sequences", "2"]) == 2
    assert f"--out {out} must be a .npz file in an existing folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("written", ["--report", "--card"])
def test_lm_eval_writes_no_test_report_of_the_validation_split(tmp_path, capsys, written):
    """Its table and card put the validation perplexity under "test ppl"."""
    from v1motion.service.cli import main

    target = tmp_path / ("report" if written == "--report" else "card.md")
    argv = ["lm", "eval", "--model", str(tmp_path / "m.npz"), "--split", "valid", written]
    assert main([*argv, str(target)]) == 2
    assert "the report and the card give test perplexity" in capsys.readouterr().err
    assert not target.exists()


def test_the_ptb_table_is_json_that_strict_parsers_read():
    import json

    text = (
        Path(__file__).resolve().parents[2] / "docs" / "language" / "ptb_table.json"
    ).read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))


@pytest.mark.parametrize(
    "argv, said",
    [
        (["stfit", "--out", "FILE"], "FILE is a file: give a folder for the results"),
        (["stfit", "--video", "DIR/none.mp4"], "--video DIR/none.mp4: no such file"),
        (["stfit", "--video-size", "0x80"], "--video-size must be at least 1x1"),
        (["stfit", "--nt", "8", "--frames", "8"], "--frames (8) must be more than the filters' 8"),
        (["analyze", "--out", "FILE"], "FILE is a file: give a folder for the results"),
        (["analyze", "--out", "DIR/r", "--model-card", "FILE/x.md"], "FILE is a file, so"),
        (["spikes", "fit", "--counts", "DIR/c.npz", "--out", "DIR"], "DIR is a folder"),
    ],
)
def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path, capsys, argv, said):
    """Found after the fit (minutes of it, tens of minutes for some spike models): the work lost."""
    from v1motion.service.cli import main

    (tmp_path / "file").write_text("")
    fill = {"FILE": str(tmp_path / "file"), "DIR": str(tmp_path)}
    for k, v in fill.items():
        argv = [a.replace(k, v) for a in argv]
        said = said.replace(k, v)
    assert main(argv) == 2
    assert said in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_readouts_recorded_command_writes_where_the_readout_was_written(tmp_path, monkeypatch):
    """Without --out (or --axis-out), the command in a read-out's card, pasted, overwrote the
    shipped read-out (or calibration)."""
    from v1motion.models.motion import engine, mt_fit
    from v1motion.service.cli import main

    shipped = mt_fit.fit_command(mt_fit.SHIPPED_READOUT, 2500, 4, 64, 16, 0, (32, 96), 2.0)
    assert shipped.startswith("v1motion fit-readout --sequences 2500")  # the shipped card's
    mine = mt_fit.fit_command(tmp_path / "ro.npz", 20, 4, 64, 1, 0, (32, 96), 2.0)
    assert f"--out {(tmp_path / 'ro.npz').as_posix()} " in mine
    monkeypatch.setattr(engine.MotionEngine, "load_default", staticmethod(lambda: None))
    monkeypatch.setattr(mt_fit, "fit_axis_calibration", lambda e, progress: {"offsets_deg": [1.0]})
    axis = tmp_path / "axis.json"
    assert main(["fit-readout", "--axis-calibration", "--axis-out", str(axis)]) == 0
    said = json.loads(axis.read_text())["command"]
    assert said == f"v1motion fit-readout --axis-calibration --axis-out {axis.as_posix()}"
