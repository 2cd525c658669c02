"""The dashboard in a real Chromium (Debian's, driven by Playwright), its fake camera fed a y4m clip.

Chromium may be missing on a developer's machine: then these tests skip, unless ``CI`` is set, where
they fail instead (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from engine_double import FakeEngine, FlakyEngine
from service_helpers import PatternSource, default_engine, pattern_factory, random_engine, serving

from v1motion.service.app import create_app
from v1motion.service.settings import Settings

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
CLIP_DIRECTION_DEG = 90.0  # the clip's texture moves up the screen
CLIP_SPEED = 1  # px per clip frame
# The dashboard sends each new camera frame once, as soon as the previous result is back, so on a busy
# machine several clip frames pass between two analysed ones; a slow clip keeps that displacement within
# the engine's range (it reads 1-6 px/frame well): at 5 fps, 1 analysed frame/s still gives 5 px.
CLIP_FPS = 5
PREFIX = "/v1m"


ENABLE = "enable them with `apt-get install chromium` (Debian's; never `playwright install`)"


def _need_chromium():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail(f"chromium is not installed, and CI must run the browser tests: {ENABLE}")
        pytest.skip(f"browser tests skipped: chromium is not installed; {ENABLE}")


def periodic_texture(h: int, w: int, seed: int = 0, sigma: float = 3.0) -> np.ndarray:
    """Smooth random texture that tiles seamlessly (low-pass filtered in the Fourier domain)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    lowpass = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    img = np.fft.ifft2(np.fft.fft2(rng.standard_normal((h, w))) * lowpass).real
    img = (img - img.mean()) / (img.std() + 1e-9)
    return np.clip(128 + 50 * img, 0, 255).astype(np.uint8)


def write_y4m(path: Path, frames: np.ndarray, fps: int = 30) -> None:
    """Grey frames (T, H, W) uint8 as a 4:2:0 YUV4MPEG2 clip (chroma flat grey)."""
    t, h, w = frames.shape
    chroma = np.full((h // 2) * (w // 2), 128, np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + frame.tobytes() + chroma + chroma)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A texture moving up by 1 px/frame at 5 fps; 240 frames shift it by exactly its height, so it
    loops without a seam."""
    h, w = 240, 320
    tex = periodic_texture(h, w)
    n = h // CLIP_SPEED
    # content moving up: row r of frame t shows row r + speed*t of the texture
    frames = np.stack([np.roll(tex, -CLIP_SPEED * t, axis=0) for t in range(n)])
    path = tmp_path_factory.mktemp("clip") / "up.y4m"
    write_y4m(path, frames, fps=CLIP_FPS)
    return path


@pytest.fixture(scope="module")
def playwright():
    _need_chromium()
    try:
        from playwright import sync_api
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed, and CI must run the browser tests")
        pytest.skip("browser tests skipped: playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture
def browser(playwright, clip):
    b = playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            *ARGS,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}",
        ],
    )
    yield b
    b.close()


def behind_prefix(app, prefix: str):
    """What a reverse proxy that strips ``prefix`` plus ``uvicorn --root-path`` present to the app."""

    async def wrapped(scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(prefix):
            scope = dict(scope, root_path=prefix)
        await app(scope, receive, send)

    return wrapped


def watch(page) -> list[str]:
    """Errors thrown in the page, and anything the service's Content-Security-Policy refused."""
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return errors


def wait_for(page, expression: str, timeout: float = 30_000) -> None:
    """Poll a JavaScript expression until it is true. Not ``page.wait_for_function``: its poller
    evaluates the expression as a string inside the page, which the service's
    Content-Security-Policy refuses (no 'unsafe-eval'), as it should."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true after {timeout / 1000:.0f} s: {expression}"
        page.wait_for_timeout(100)


def open_dashboard(browser, url, init_script: str | None = None):
    """A page on ``url`` and the list its errors go to; ``init_script`` runs before the page's own."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = watch(page)
    if init_script:
        page.add_init_script(init_script)
    page.goto(url)
    return page, errors


def results(page) -> int:
    return int(page.get_attribute("#dominant", "data-results") or 0)


def wait_results(page, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while results(page) < n:
        assert time.monotonic() < deadline, f"only {results(page)} results after {timeout} s"
        page.wait_for_timeout(100)


def camera_on(page) -> None:
    """Click "Use my camera" and wait until the page says the camera is live."""
    page.click("#camera-btn")
    wait_for(page, "document.querySelector('#conn').textContent === 'live · my camera'")


def canvas_spread(page, selector) -> float:
    """Standard deviation of a canvas's pixel values: 0 for a blank canvas."""
    return page.evaluate(
        """sel => { const c = document.querySelector(sel);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let s = 0, s2 = 0, n = 0;
            for (let i = 0; i < d.length; i += 4 * 7) { s += d[i] + d[i+1]; s2 += d[i]*d[i] + d[i+1]*d[i+1]; n += 2; }
            const m = s / n; return Math.sqrt(s2 / n - m * m); }""",
        selector,
    )


def test_dashboard_streams_then_analyses_the_browser_camera_under_a_path_prefix(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(behind_prefix(app, PREFIX)) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}{PREFIX}/")
        # the synthetic stream plays first
        wait_results(page, 10)
        assert page.input_value("#source") == "synthetic"
        assert canvas_spread(page, "#map") > 5
        wait_for(page, "document.querySelectorAll('#unit-select option').length > 0")
        assert page.locator("#unit-select option").count() == random_engine().model.n_units
        # the optical-flow toggle shows DIS flow next to the model
        page.click("text=Optical flow")
        n = results(page)
        wait_results(page, n + 5)
        assert page.is_visible("#flow-card") and canvas_spread(page, "#flow") > 5
        # the browser camera: frames go up, results come back on the same socket; each JPEG is
        # announced with the camera's frame number, so the server can count the frames skipped
        sent = []
        page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
        page.click("#camera-btn")
        wait_for(page, "document.querySelector('#conn').textContent.includes('my camera')")
        assert "320x240" in page.text_content("#source-desc")  # the size its px/frame refer to
        picked = "document.querySelector('#source').selectedOptions[0].textContent"
        assert page.evaluate(picked) == "my camera"  # not the stream it left
        n0 = results(page)
        wait_results(page, n0 + 15)
        assert app.state.services.metrics.frames.labels("camera")._value.get() >= 15
        fps = float(page.text_content("#stat-fps"))
        assert fps > 1
        texts = [json.loads(m) for m in sent if isinstance(m, str)]
        seqs = [m["seq"] for m in texts if m.get("type") == "frame"]
        jpegs = [m for m in sent if isinstance(m, bytes)]
        assert len(seqs) >= 15 and len(seqs) >= len(jpegs) - 1
        assert all(isinstance(q, int) for q in seqs) and seqs == sorted(set(seqs))
        page.screenshot(
            path=str(Path(os.environ.get("V1MOTION_SCREENSHOTS", "/tmp")) / "dashboard-camera.png")
        )
        page.click("#camera-btn")  # stop: back to the stream, and the picker says so
        wait_for(page, "document.querySelector('#conn').textContent.includes('synthetic')")
        assert page.evaluate(picked) == "synthetic" and page.locator("#source option").count() == 1
        assert errors == []


@pytest.mark.parametrize("address", ["/motion", "/"])
def test_the_dashboard_opened_without_its_last_slash_behind_a_prefix_goes_live(browser, address):
    """https://host/motion through a proxy: "/motion" (the path kept) or "/" (stripped). Its style
    sheet and script were resolved against "/" and were 404s: a bare page, nothing live."""
    app = create_app(Settings(root_path="/motion"), engine_factory=random_engine)
    with serving(app, root_path="/motion") as srv:
        asked, failed = [], []
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = watch(page)
        page.on("request", lambda r: asked.append(r.url))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.goto(srv.url + address)
        wait_for(page, "document.querySelector('#conn').textContent === 'live · synthetic'")
        wait_results(page, 3)
        assert failed == [] and errors == []
        # everything after the page itself under the prefix: where a proxy sends it to the service
        assert len(asked) > 3
        assert all(u.startswith(f"{srv.url}/motion/") for u in asked[1:]), asked


REFUSED_SOCKETS = """
window.WebSocket = class extends EventTarget {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    setTimeout(() => { this.readyState = 3; if (this.onclose) this.onclose({ code: 1006 }); }, 20);
  }
  send() {}
  close() {}
};
"""


def test_a_live_connection_the_server_refuses_is_said_as_refused_not_lost(browser):
    """Behind a proxy that dropped the Host's port every websocket got 403, and the page said
    "reconnecting" for ever while the server answered everything else."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/", REFUSED_SOCKETS)
        wait_for(page, "document.querySelector('#banner').textContent.includes('refuses')", 15_000)
        said = page.text_content("#banner")
        assert "proxy_set_header Host $http_host" in said and srv.url in said
        assert page.get_attribute("#banner", "role") == "alert"
        assert errors == []


def test_flow_panel_says_when_optical_flow_finds_no_motion(browser):
    app = create_app(
        Settings(sources=["still=synthetic", "moving=synthetic"]),
        engine_factory=random_engine,
        source_factories={
            "still": pattern_factory(vx=0, vy_up=0, fps=20.0),  # the same frame again and again
            "moving": pattern_factory(vx=2, vy_up=0, fps=20.0),
        },
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/?source=still")
        wait_results(page, 3)
        page.click("text=Optical flow")
        wait_results(page, results(page) + 5)
        assert page.is_visible("#flow-empty")
        assert page.text_content("#flow-empty") == "no motion found by optical flow"
        wait_for(page, "document.querySelector('#flow').ariaLabel.endsWith('no motion found')")
        page.select_option("#source", "moving")
        wait_results(page, 5)
        wait_for(page, "document.querySelector('#flow-empty').hidden")
        assert canvas_spread(page, "#flow") > 5
        # said in words too, to compare with the model's map (its name did not change)
        wait_for(
            page, "document.querySelector('#flow').ariaLabel.includes('moving right (0°) at 2')"
        )
        assert errors == []


def test_on_a_slow_link_the_dashboard_asks_for_fewer_results_and_shows_fresh_ones(browser):
    """A phone at 400 kbit/s got every result 7.5-10 s old while the page said "live", 2 fps and a
    latency of 9-25 ms: what the server sent waited in the link's buffers."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        errors = watch(page)
        ages, sent = [], []

        def received(payload):
            if isinstance(payload, str) and '"type":"result"' in payload.replace(" ", ""):
                ages.append(time.time() * 1000 - json.loads(payload)["capture_ts"])

        def on_socket(ws):
            ws.on("framereceived", received)
            ws.on("framesent", lambda payload: sent.append(payload))

        page.on("websocket", on_socket)
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        conditions = {"offline": False, "latency": 400, "uploadThroughput": 50_000}
        cdp.send("Network.emulateNetworkConditions", {**conditions, "downloadThroughput": 50_000})
        page.goto(f"{srv.url}/")
        wait_for(page, "document.querySelector('#conn').textContent.includes('slow link')", 60_000)
        options = [json.loads(m) for m in sent if isinstance(m, str) and '"options"' in m]
        assert options and all(o["max_fps"] >= 1 for o in options)
        # the backlog drains, and what arrives then is fresh (the same clock: one machine)
        n = len(ages)
        deadline = time.monotonic() + 60
        while not (len(ages) > n + 3 and max(ages[-3:]) < 1500):
            assert time.monotonic() < deadline, f"results still {ages[-3:]} ms old"
            page.wait_for_timeout(200)
        assert max(ages) > 3000  # it was behind before it asked
        assert errors == []


SIMULATED_LINK = """() => {
  const v = window.v1motion, st = v.state;
  st.mode = "simulated";  // the page's own results no longer reach slowLink
  const sent = [];
  let t = 0;
  st.ws = { send: (x) => sent.push({ t, ...JSON.parse(x) }), close() {} };
  st.fps = 5;  // the page's rate as the link slows: it asks for 3/s
  st.link = { minSkew: Infinity, level: 0, rate: null, behindSince: null, behindAtStep: 0,
              caughtUpSince: null, probeFrom: null, restoreMs: 20000 };
  // results 100 ms apart, each `age` ms old: in time over [0, 0.1 s), then 2 s behind until 10 s
  // (the link too slow), in time until 31 s (it caught up), 2 s behind at 31 s and at 83 s
  const age = (t) => (t >= 100 && t < 10000) || t === 31000 || t === 83000 ? 2000 : 0;
  for (t = 0; t <= 185000; t += 100) {
    const m = { capture_ts: performance.timeOrigin + t - age(t), timing: { fps: 30 } };
    v.slowLink(m, t);
  }
  return sent;
}"""


def test_a_slow_link_steps_back_up_one_step_at_a_time_and_down_at_once_if_it_fails(browser):
    """Restored in one go to every result and picture after 20 s caught up, a 400 kbit/s link showed
    results 10 s old before the page stepped down again (behind 3 s before each step)."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_results(page, 3)
        sent = page.evaluate(SIMULATED_LINK)
    steps = [(m["t"] // 1000, m["max_fps"], m["preview"]) for m in sent]
    assert steps == [
        (3, 3, True),  # behind 3 s: 0.6 of the rate the page received
        (6, 3, False),  # still behind 3 s later: no picture
        (30, 3, True),  # caught up 20 s: the picture back
        (31, 3, False),  # behind at once: that step did not hold, back down without waiting
        (71, 3, True),  # caught up twice as long before the next try
        (76, 6, True),  # that held 5 s: twice the results
        (81, 12, True),
        (83, 6, True),  # behind: back to the last rate that held
        (163, 12, True),  # 80 s later
        (168, 24, True),
        (173, None, True),  # twice 24 would be over the stream's 30/s: every result
    ], steps
    assert errors == []


CLOCK_STEP = """(() => { const real = Date.now.bind(Date); window.__step = 0;
    Date.now = () => real() + window.__step; })()"""


def test_a_step_of_the_computers_clock_is_not_a_slow_link(browser):
    """The laptop's clock stepped forward (a time sync after waking): every result then read that
    much older than the youngest, and the page asked for fewer results and no picture, for good."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/", CLOCK_STEP)
        wait_results(page, 5)
        page.evaluate(PILL_LOG)
        page.evaluate("window.__step = 3600 * 1000")
        n = results(page)
        page.wait_for_timeout(8000)  # behind 1.5 s, then 3 s a step: two steps down before
        assert results(page) > n + 20
        pills = page.evaluate("window.__pills")
        assert not any("slow link" in p for p in pills), pills
        assert page.evaluate("v1motion.state.link.level") == 0
        assert errors == []


def test_no_picture_once_the_page_asked_for_none(browser):
    """Previews already on their way when the page asked for none (or decoding then) put an old
    frame back under the live arrows, which nothing replaced: a grating of a minute before."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_results(page, 3)
        assert page.evaluate("v1motion.state.image !== null")
        # as at the slow link's last step, before the server has read the request: previews come
        page.evaluate("() => { v1motion.state.link.level = 2; v1motion.state.image = null; }")
        n = results(page)
        wait_results(page, n + 10)
        assert page.evaluate("v1motion.state.image === null")
        assert errors == []


def test_a_mistyped_source_in_the_address_is_said_and_the_default_shown(browser):
    app = create_app(
        Settings(sources=["lobby=synthetic", "door=synthetic"]),
        engine_factory=random_engine,
        source_factories={"lobby": pattern_factory(), "door": pattern_factory()},
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/?source=loby")
        wait_results(page, 3)
        assert page.input_value("#source") == "lobby"
        banner = page.locator("#banner")
        banner.wait_for(state="visible")
        assert (
            'no source named "loby" (sources: lobby, door); showing lobby' in banner.text_content()
        )
        page.wait_for_timeout(2500)  # it stays: the stream's state reports do not clear it
        assert banner.is_visible()
        page.select_option("#source", "door")  # picking a source clears it
        banner.wait_for(state="hidden")
        wait_results(page, results(page) + 3)
        assert errors == []


def test_the_pill_says_when_the_server_analyses_under_half_the_sources_frames(browser, monkeypatch):
    """Four 640x480 streams on two cores: 8 of 30 frames a second analysed under a green
    "live" pill, nothing else said. An engine of 50 ms a step on a 60 fps source: the pill says how
    many frames are analysed, in the warning colour, and why in its title; back to "live" after."""
    from v1motion.service.live import pipeline as pl

    monkeypatch.setattr(pl, "BEHIND_AFTER_S", 0.3)
    engine = FakeEngine(delay=0.05)
    app = create_app(
        Settings(sources=["lobby=synthetic"]),
        engine_factory=lambda: engine,
        source_factories={"lobby": pattern_factory(fps=60.0)},
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "/ fps analysed$/.test(document.querySelector('#conn').textContent)", 15_000)
        text = page.text_content("#conn")
        assert text.startswith("live · lobby · ") and page.get_attribute("#conn", "class") == (
            "pill pill-warn"
        ), text
        analysed, source = (int(x) for x in text.split(" · ")[2].split(" fps")[0].split(" of "))
        assert 0 < 2 * analysed < source <= 70, text
        assert "more streams or cameras than its cores" in page.get_attribute("#conn", "title")
        engine.delay = 0.0  # the server keeps up again
        wait_for(page, "document.querySelector('#conn').textContent === 'live · lobby'", 15_000)
        assert page.get_attribute("#conn", "class") == "pill pill-live"
        assert errors == []


def test_most_active_units_hold_still_under_the_pointer_and_can_be_clicked(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "document.querySelectorAll('#top-units .chip').length >= 3")
        wait_for(page, "document.querySelectorAll('#unit-select option').length > 0")
        chip = page.locator("#top-units .chip").last  # the lowest rank moves the most
        chip.scroll_into_view_if_needed()
        unit = chip.get_attribute("data-unit")
        # a screen reader hears what the number is, not "#306 910"
        assert chip.get_attribute("aria-label").startswith(f"unit {unit}, ")
        box = chip.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        assert "frozen" in page.get_attribute("#top-units", "class")
        n = results(page)
        page.wait_for_timeout(2500)  # more than two reorder periods while results arrive
        assert results(page) >= n + 5
        under = page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y).closest('.chip').dataset.unit", [x, y]
        )
        assert under == unit
        page.mouse.click(x, y)
        assert page.input_value("#unit-select") == unit
        assert "selected" in chip.get_attribute("class")
        page.mouse.move(5, 5)
        assert "frozen" not in page.get_attribute("#top-units", "class")
        assert errors == []


def test_most_active_units_hold_still_while_a_keyboard_user_tabs_along_them(browser):
    """Tabbing from chip to chip, focus fell back to the page every few presses: the chips were
    released between leaving one and reaching the next, and reordered under the keyboard."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "document.querySelectorAll('#top-units .chip').length >= 6")
        page.mouse.move(5, 5)
        page.keyboard.press("Tab")  # keyboard focus from here on
        page.focus("#top-units .chip")
        order = page.evaluate(
            "[...document.querySelectorAll('#top-units .chip')].map(c => c.dataset.unit).join()"
        )
        for _ in range(5):
            page.wait_for_timeout(700)  # several reorder periods in all, while results arrive
            page.keyboard.press("Tab")
            on = page.evaluate("document.activeElement.classList.contains('chip')")
            assert on, "focus left the chips"
            assert "frozen" in page.get_attribute("#top-units", "class")
        now = page.evaluate(
            "[...document.querySelectorAll('#top-units .chip')].map(c => c.dataset.unit).join()"
        )
        assert now == order
        assert errors == []


@pytest.mark.parametrize(
    "width, height, mobile",
    [(390, 844, True), (820, 1180, False)],  # a phone; a tablet, upright
)
def test_one_column_shows_the_dominant_motion_then_the_map_first(browser, width, height, mobile):
    """One column (phones, and tablets up to 1000 px wide): what moves comes first. On a tablet the
    dominant motion was 2,500 px down, below the map, the legend and the unit browser."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page = browser.new_page(viewport={"width": width, "height": height}, is_mobile=mobile)
        page.goto(f"{srv.url}/")
        wait_results(page, 3)
        top = {
            sel: page.locator(sel).bounding_box()["y"]
            for sel in (".dominant-card", "#map", "#polar", "#speed-hist", "#top-units", ".units")
        }
        assert top[".dominant-card"] < top["#map"] < height  # both on the first screen
        assert all(top["#map"] < top[s] for s in ("#polar", "#speed-hist", "#top-units", ".units"))
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing wider


def test_unit_browser_marks_degenerate_units_and_opens_on_a_tuned_one(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "document.querySelectorAll('#unit-select option').length > 0")
        flags = page.evaluate(
            """() => {
                const flat = Array(16).fill(0);
                const one = flat.map((_, k) => (k === 3 ? 0.6 : 0));
                const lobe = flat.map((_, k) => [0.3, 1, 0.3][k - 4] || 0);
                const units = [
                    {id: 0, di: 1.0, responsive: true, direction_tuning: one},
                    {id: 1, di: 1.0, responsive: true, direction_tuning: lobe.map((v) => v / 1000)},
                    {id: 2, di: 0.9, responsive: true, direction_tuning: lobe},
                    {id: 3, di: 0.4, responsive: true, direction_tuning: lobe.map((v) => v + 0.5)},
                    {id: 4, di: 1.0, responsive: false, direction_tuning: lobe},
                ];
                v1motion.classifyUnits(units);
                return {flags: units.map((u) => [u.single, u.weak, u.degenerate]),
                        first: v1motion.initialUnit(units).id};
            }"""
        )
        assert flags["flags"] == [
            [True, False, False],  # a single direction of 16: sharply tuned, not degenerate
            [False, True, True],  # near-zero response
            [False, False, False],
            [False, False, False],
            [False, True, True],  # not responsive to gratings
        ]
        assert flags["first"] == 2  # the best-tuned unit with a lobe to show
        degs = page.evaluate("[67.5, 90, -22.5, 359.99].map(v1motion.fmtUnitDeg)")
        assert degs == ["67.5", "90", "337.5", "0"]  # 67.5 was shown as 68
        # the page's own list: filtering shows only degenerate units, each marked
        page.select_option("#unit-filter", "degenerate")
        labels = page.eval_on_selector_all("#unit-select option", "os => os.map(o => o.text)")
        assert all("⚠" in t for t in labels)
        page.select_option("#unit-filter", "all")
        page.select_option("#unit-sort", "id")
        ids = page.eval_on_selector_all("#unit-select option", "os => os.map(o => +o.value)")
        assert ids == sorted(ids) and len(ids) == random_engine().model.n_units
        assert errors == []


def test_arrow_length_does_not_saturate_at_ordinary_speeds(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, _ = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "window.v1motion !== undefined")
        lengths = page.evaluate("[0.25, 0.5, 1, 2, 4, 8, 16].map(v1motion.arrowFraction)")
        assert all(a < b for a, b in zip(lengths, lengths[1:], strict=False)), lengths
        assert lengths[-1] == 1 and lengths[-2] < 0.9 and lengths[0] > 0.1


def test_camera_needs_https_on_a_non_secure_remote_origin(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page = browser.new_page()
        # What a page loaded over plain http from another machine sees.
        page.add_init_script("Object.defineProperty(window, 'isSecureContext', {value: false})")
        page.goto(f"{srv.url}/")
        page.click("#camera-btn")
        banner = page.locator("#banner")
        banner.wait_for(state="visible")
        assert "HTTPS" in banner.text_content()


def test_websocket_urls_follow_the_page_address(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(behind_prefix(app, PREFIX)) as srv:
        page, _ = open_dashboard(browser, f"{srv.url}{PREFIX}/")
        wait_for(page, "window.v1motion !== undefined")
        assert page.evaluate("v1motion.wsUrl('v1/camera')") == f"{srv.ws_url}{PREFIX}/v1/camera"
        assert page.evaluate("v1motion.apiUrl('v1/streams')") == f"{srv.url}{PREFIX}/v1/streams"


def circular_mean_deg(values):
    a = np.deg2rad(values)
    return math.degrees(math.atan2(np.sin(a).mean(), np.cos(a).mean())) % 360


def _dominant_direction(browser, engine_factory):
    app = create_app(Settings(), engine_factory=engine_factory)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "document.querySelector('#source').options.length > 0")
        page.click("#camera-btn")
        wait_for(page, "document.querySelector('#conn').textContent.includes('my camera')")
        assert "320x240" in page.text_content("#source-desc")  # the size its px/frame refer to
        n0 = results(page)
        wait_results(page, n0 + 10, timeout=60)
        seen = []
        for _ in range(30):  # sample the rendered readout over about three seconds
            page.wait_for_timeout(100)
            d = page.get_attribute("#dominant", "data-direction-deg")
            c = float(page.get_attribute("#dominant", "data-confidence"))
            v = float(page.get_attribute("#dominant", "data-speed"))
            seen.append((float(d), c, v))
        assert errors == []
    return seen


@pytest.mark.slow
def test_reported_direction_matches_the_clip_with_an_engine_double(browser):
    """The plumbing (camera, JPEG, socket, readout) keeps the direction: an exact double reads 90."""
    seen = _dominant_direction(browser, FakeEngine)
    # The double compares a frame with the previous one only; the page sends each camera frame once,
    # so (nearly) every pair moved by a pixel or more.
    moving = [d for d, c, v in seen if v > 0.5]
    assert len(moving) >= len(seen) // 2, seen
    mean = circular_mean_deg(moving)
    assert abs((mean - CLIP_DIRECTION_DEG + 180) % 360 - 180) < 15, seen


@pytest.mark.slow
def test_reported_direction_matches_the_clip_with_the_trained_engine(browser):
    """The shipped engine, through the real dashboard and fake camera, reads the clip's direction."""
    seen = _dominant_direction(browser, default_engine)
    confident = [d for d, c, _ in seen if c > 0.05]
    assert len(confident) >= len(seen) // 2, seen
    mean = circular_mean_deg(confident)
    assert abs((mean - CLIP_DIRECTION_DEG + 180) % 360 - 180) < 30, (mean, seen)


def test_dashboard_asks_for_the_token_and_then_streams(browser):
    app = create_app(Settings(token="tok-123"), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        page.locator("#token-form").wait_for(state="visible")
        page.fill("#token-input", "tok-123")
        page.click("#token-form button")
        wait_results(page, 3)
        # a link carrying the token in its fragment works too, and the token leaves the address bar
        page2, _ = open_dashboard(browser, f"{srv.url}/#token=tok-123")
        wait_results(page2, 3)
        assert "tok-123" not in page2.url
        assert errors == []


def test_a_refused_token_is_said_as_refused_not_as_missing(browser):
    app = create_app(Settings(token="tok-123"), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/#token=wrong")
        page.locator("#token-form").wait_for(state="visible")
        assert "refused this access token" in page.text_content("#token-msg")
        assert page.text_content("#conn") == "token refused"
        assert page.input_value("#token-input") == ""  # the wrong one is not left in the field
        assert page.get_attribute("#token-msg", "role") == "alert"  # said at once
        page.fill("#token-input", "tok-123")
        page.press("#token-input", "Enter")
        wait_results(page, 3)
        # the keyboard's focus goes on to the controls, not back to the top with the form it was in
        assert page.evaluate("document.activeElement.id") == "source"
        assert errors == []


class Unplugged:
    """A source that cannot be opened."""

    def __init__(self, stop):
        pass

    def open(self):
        from v1motion.service.live.sources import SourceError

        raise SourceError("camera unplugged")

    def close(self):
        pass


def shown_readings(page) -> dict:
    return page.evaluate(
        """() => ({dir: document.querySelector('#dom-dir').textContent,
                   speed: document.querySelector('#dom-speed').textContent,
                   conf: document.querySelector('#dom-conf').textContent,
                   fps: document.querySelector('#stat-fps').textContent,
                   waiting: !document.querySelector('#waiting').hidden})"""
    )


def test_switching_to_a_source_that_fails_leaves_nothing_of_the_last_one_on_screen(browser):
    """Picked after a working source, a source that cannot be read showed the last source's map,
    dominant motion and panels under its own banner for as long as it failed."""
    app = create_app(
        Settings(sources=["synthetic", "dead=synthetic"], backoff_initial_s=0.2),
        engine_factory=default_engine,
        source_factories={"dead": Unplugged},
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_results(page, 15)
        wait_for(page, "document.querySelector('#dom-dir').textContent !== '–'")
        assert canvas_spread(page, "#map") > 5
        wait_for(page, "document.querySelectorAll('#top-units .chip').length > 0")
        page.evaluate(PILL_LOG)
        page.select_option("#source", "dead")
        page.locator("#banner").wait_for(state="visible")
        page.wait_for_timeout(1500)
        shown = shown_readings(page)
        assert shown == {"dir": "–", "speed": "–", "conf": "–", "fps": "–", "waiting": True}
        assert canvas_spread(page, "#map") == 0
        # no units of the last source, and never "live" for a source that gives no frame
        assert page.locator("#top-units .chip").count() == 0
        assert page.locator("#top-units-empty").is_visible()
        pills = page.evaluate("window.__pills")
        assert pills and not any(p.startswith("live") for p in pills), pills
        assert page.get_attribute("#dominant", "data-direction-deg") is None
        assert errors == []


PILL_LOG = """() => { window.__pills = [];
    new MutationObserver(() => window.__pills.push(document.querySelector('#conn').textContent))
        .observe(document.querySelector('#conn'), {childList: true}); }"""


def test_a_lost_server_is_said_and_the_dashboard_comes_back_with_it(browser):
    """The server stops under an open page (a restart): the page says so and shows no frozen
    readings that look live; the stream, and the browser's camera, come back once it is up."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        port = srv.port
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_results(page, 5)
        cam_page, cam_errors = open_dashboard(browser, f"{srv.url}/")
        cam_page.click("#camera-btn")
        wait_for(cam_page, "document.querySelector('#conn').textContent.includes('my camera')")
        wait_results(cam_page, 5)
        for p in (page, cam_page):  # every text the pill shows from now on
            p.evaluate(PILL_LOG)
    for p in (page, cam_page):
        wait_for(p, "document.querySelector('#banner').textContent.includes('Lost the connection')")
        assert shown_readings(p) == {
            "dir": "–", "speed": "–", "conf": "–", "fps": "–", "waiting": True
        }  # fmt: skip
    page.wait_for_timeout(2000)  # a few retries (0.25-0.5 s, then 0.5-1 s...) against no server
    # the retries between never say "connecting", which reads as progress while nothing answers
    for p, said in ((page, "reconnecting"), (cam_page, "camera reconnecting")):
        pills = p.evaluate("window.__pills")
        assert said in pills and set(pills) <= {said, "live · synthetic", "live · my camera"}, pills
    assert "reconnecting" in cam_page.text_content("#conn")
    assert cam_page.text_content("#camera-label") == "Stop camera"  # the camera stays on
    with serving(create_app(Settings(), engine_factory=random_engine), port=port):
        for p in (page, cam_page):
            n = results(p)
            wait_results(p, n + 5, timeout=30)
            assert p.locator("#banner").is_hidden()
        assert "my camera" in cam_page.text_content("#conn")
    assert errors == [] and cam_errors == []


def test_a_link_that_dies_without_closing_is_said_and_comes_back(browser):
    """Wi-Fi gone or a laptop's lid closed: no close reaches the page, which said "live" with frozen
    readings for as long as the link stayed dead (its status requests waited for ever too)."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_results(page, 5)
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        dead = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
        cdp.send("Network.emulateNetworkConditions", dead)
        lost = "document.querySelector('#banner').textContent.includes('Lost the connection')"
        wait_for(page, lost, 12_000)
        assert shown_readings(page) == {
            "dir": "–", "speed": "–", "conf": "–", "fps": "–", "waiting": True
        }  # fmt: skip
        assert "reconnecting" in page.text_content("#conn")
        cdp.send("Network.emulateNetworkConditions", {**dead, "offline": False})
        wait_results(page, results(page) + 5, timeout=30)
        assert page.locator("#banner").is_hidden()
        assert page.text_content("#conn").startswith("live")
    assert errors == []


COUNT_CAMERAS = """
window.__cameras = [];
const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (c) => {
  const m = await open(c);
  window.__cameras.push(m);
  return m;
};
"""


def test_a_double_click_on_the_camera_button_opens_one_camera_that_stop_turns_off(browser):
    """Two clicks while the browser opened the camera opened two; 'Stop camera' stopped one, and
    the other stayed on (the camera light with it)."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/", COUNT_CAMERAS)
        wait_results(page, 3)
        page.dblclick("#camera-btn")
        wait_for(page, "document.querySelector('#conn').textContent.includes('my camera')")
        wait_results(page, results(page) + 3)
        assert page.evaluate("window.__cameras.length") == 1
        page.click("#camera-btn")
        live = "window.__cameras.flatMap(m => m.getTracks()).filter(t => t.readyState === 'live')"
        wait_for(page, f"{live}.length === 0")
        assert page.text_content("#camera-label") == "Use my camera"
        assert errors == []


def test_a_camera_that_stops_is_said_and_its_numbers_do_not_stay_on_screen(browser):
    """Its track ended (unplugged, permission withdrawn): the pill kept saying "live · my camera"
    over the last fps and latency, with no banner, for as long as the page stayed open."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/", COUNT_CAMERAS)
        wait_results(page, 3)
        camera_on(page)
        wait_results(page, results(page) + 3)
        # what the browser does when the device goes: the track ends (stop() alone fires no event)
        page.evaluate(
            """() => { const t = window.__cameras[0].getVideoTracks()[0];
                t.stop(); t.dispatchEvent(new Event('ended')); }"""
        )
        page.locator("#banner").wait_for(state="visible")
        assert "camera stopped" in page.text_content("#banner")
        assert page.text_content("#camera-label") == "Use my camera"
        # back on the server's source, live again
        wait_for(page, "document.querySelector('#conn').textContent === 'live · synthetic'")
        page.select_option("#source", "synthetic")  # picking a source puts the notice away
        assert page.locator("#banner").is_hidden()
        assert errors == []


def test_a_muted_camera_is_said_and_its_frame_rate_falls_to_none(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/", COUNT_CAMERAS)
        camera_on(page)
        wait_results(page, 3)
        wait_for(page, "document.querySelector('#stat-fps').textContent !== '–'")
        # muted: no frames come (simulated here: the page stops presenting them, and the event)
        page.evaluate(
            """() => { window.v1motion.state.camera.ready = false;
                window.__cameras[0].getVideoTracks()[0].dispatchEvent(new Event('mute')); }"""
        )
        assert page.text_content("#conn") == "camera paused · no frames"
        wait_for(page, "document.querySelector('#stat-fps').textContent === '–'", 8_000)
        assert page.text_content("#stat-latency") == "–"
        assert errors == []


def test_a_hidden_page_sends_no_camera_frames_and_takes_up_again_when_shown(browser):
    """Throttled in the background, it sent a frame a second, 30 camera frames apart, and showed
    readings 50-100 degrees off at confidence 0.7."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        camera_on(page)
        wait_results(page, 3)
        page.evaluate(
            """() => { Object.defineProperty(document, 'hidden', {value: true, configurable: true});
                document.dispatchEvent(new Event('visibilitychange')); }"""
        )
        assert page.text_content("#conn") == "camera paused · page hidden"
        page.wait_for_timeout(500)  # a result in flight may still come back
        before = results(page)
        page.wait_for_timeout(1500)
        assert results(page) == before  # nothing sent, nothing analysed
        page.evaluate(
            """() => { Object.defineProperty(document, 'hidden', {value: false, configurable: true});
                document.dispatchEvent(new Event('visibilitychange')); }"""
        )
        assert page.text_content("#conn") == "live · my camera"
        wait_results(page, before + 3)
        assert errors == []


def test_pause_stops_the_camera_frames_and_resume_takes_up_again(browser):
    """Paused, the page held the readings still but went on sending 30 camera frames a second,
    analysed for nobody."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        camera_on(page)
        wait_results(page, 3)
        page.click("#pause-btn")
        assert page.text_content("#conn") == "paused · my camera sends nothing"
        page.wait_for_timeout(500)  # a result in flight may still come back
        before = page.evaluate("window.v1motion.state.results")
        page.wait_for_timeout(1500)
        assert page.evaluate("window.v1motion.state.results") == before  # nothing sent
        page.click("#pause-btn")
        assert page.text_content("#conn") == "live · my camera"
        wait_results(page, before + 3)
        assert errors == []


def test_the_camera_button_keeps_the_keyboard_focus(browser):
    """Disabled while the browser opened the camera, it dropped the focus to the page: a second
    Enter did nothing, and Tab started again from the top."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_results(page, 2)
        page.focus("#camera-btn")
        page.keyboard.press("Enter")
        wait_for(page, "document.querySelector('#conn').textContent === 'live · my camera'")
        assert page.evaluate("document.activeElement.id") == "camera-btn"
        page.keyboard.press("Enter")
        wait_for(page, "document.querySelector('#camera-label').textContent === 'Use my camera'")
        assert errors == []


def test_a_wide_camera_is_analysed_whole_not_cropped_to_4_3(playwright, tmp_path):
    """Asked for 640x480, a 16:9 camera was cropped to its centre 4:3: a quarter of the picture
    was never seen."""
    wide = tmp_path / "wide.y4m"
    write_y4m(wide, np.stack([periodic_texture(720, 1280, seed=t) for t in range(3)]), fps=5)
    b = playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            *ARGS,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={wide}",
        ],
    )
    app = create_app(Settings(), engine_factory=random_engine)
    try:
        with serving(app) as srv:
            page, errors = open_dashboard(b, f"{srv.url}/")
            camera_on(page)
            got = page.evaluate(
                "(() => { const v = document.querySelector('#cam-video'); "
                "return [v.videoWidth, v.videoHeight]; })()"
            )
            assert got[0] * 9 == got[1] * 16, got
            assert "scaled to 320x180" in page.text_content("#source-desc")
            assert errors == []
    finally:
        b.close()


COUNT_STREAM_SOCKETS = """
window.__streamSockets = [];
const Native = window.WebSocket;
window.WebSocket = function (url, protocols) {
  if (String(url).includes('/v1/streams/')) window.__streamSockets.push(String(url));
  return new Native(url, protocols);
};
window.WebSocket.prototype = Native.prototype;
Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
"""


def test_picking_a_source_while_the_camera_runs_opens_that_source_once(browser):
    """It opened the stream left for the camera, then closed it and opened the one picked."""
    app = create_app(
        Settings(sources=["synthetic", "other=synthetic"]), engine_factory=random_engine
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/", COUNT_STREAM_SOCKETS)
        wait_results(page, 2)
        camera_on(page)
        before = page.evaluate("window.__streamSockets.length")
        page.select_option("#source", "other")
        wait_for(page, "document.querySelector('#conn').textContent === 'live · other'")
        opened = page.evaluate("window.__streamSockets")[before:]
        assert len(opened) == 1 and "/v1/streams/other" in opened[0], opened
        assert errors == []


def test_directions_read_in_whole_degrees_and_camera_frames_keep_their_aspect(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        got = page.evaluate("[359.6, 0.4, -0.4, 360, 725.2, 180.5].map(window.v1motion.fmtDeg)")
        assert got == [0, 0, 0, 0, 5, 181]
        # the camera's frames keep its aspect ratio (a 16:9 camera was squeezed into 320x240)
        sizes = page.evaluate(
            "[[640, 480], [1280, 720], [480, 640], [1920, 200], [0, 0]]"
            ".map(([w, h]) => window.v1motion.cameraSize(w, h))"
        )
        assert [(s["width"], s["height"]) for s in sizes] == [
            (320, 240), (320, 180), (240, 320), (320, 64), (320, 240)
        ]  # fmt: skip
        assert errors == []


def test_dashboard_shows_a_source_that_is_reconnecting(browser):
    app = create_app(
        Settings(backoff_initial_s=0.2),
        engine_factory=random_engine,
        source_factories={"synthetic": Unplugged},
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "document.querySelector('#conn').textContent.startsWith('reconnecting')")
        assert "camera unplugged" in page.get_attribute("#conn", "title")
        banner = page.locator("#banner")  # the reason, where it is seen without hovering
        banner.wait_for(state="visible")
        assert "cannot be read (camera unplugged); the server keeps trying" in banner.text_content()
        assert errors == []


class GoesDown(PatternSource):
    """Runs for 60 frames, then its host is gone: every reconnection fails."""

    opened = 0

    def open(self):
        GoesDown.opened += 1
        if GoesDown.opened > 1:
            from v1motion.service.live.sources import SourceError

            raise SourceError("host unreachable")

    def read(self):
        return None if self.t >= 60 else super().read()


def test_a_source_that_goes_down_leaves_no_frozen_readings(browser):
    """A network source went down under an open page: the banner said so, but the last map and
    "177°, 2.6 px/frame, confidence 1.00" stayed on screen for as long as it was down."""
    GoesDown.opened = 0
    app = create_app(
        Settings(backoff_initial_s=0.5, backoff_max_s=0.5),
        engine_factory=default_engine,
        source_factories={"synthetic": lambda stop: GoesDown(None, stop, fps=30)},
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "document.querySelector('#dom-dir').textContent !== '–'")
        assert canvas_spread(page, "#map") > 5
        # first its frames stopped (said in those words), then its host cannot be reached
        wait_for(page, "document.querySelector('#banner').textContent.includes('host unreachable')")
        assert "cannot be read (host unreachable)" in page.locator("#banner").text_content()
        shown = shown_readings(page)
        assert shown == {"dir": "–", "speed": "–", "conf": "–", "fps": "–", "waiting": True}
        assert canvas_spread(page, "#map") == 0
        assert page.locator("#top-units .chip").count() == 0
        assert errors == []


class Hangs(PatternSource):
    """Sends 40 frames, then hangs for 4 s without failing (a network camera that freezes), then
    sends again: shorter than the server's stall timeout, so only the page can tell."""

    def read(self):
        if self.t == 40:
            self.stop.wait(4.0)
        return super().read()


def test_readings_of_a_source_that_hangs_are_greyed_and_said_old_until_frames_come_back(browser):
    """A source that stopped sending left the last map, "confidence 1.00" and a green "live" on
    screen until the server's 5 s stall timeout (the page dropped only its fps)."""
    app = create_app(
        Settings(stall_timeout_s=30),
        engine_factory=random_engine,
        source_factories={"synthetic": lambda stop: Hangs(None, stop, fps=30)},
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "document.querySelector('#conn').textContent === 'live · synthetic'")
        wait_for(page, "document.body.classList.contains('stale')", timeout=10_000)
        assert page.text_content("#conn") == "no new frames · synthetic"
        assert "pill-warn" in page.get_attribute("#conn", "class")
        assert page.locator("#stale-note").is_visible()
        assert page.text_content("#stale-note").startswith("no new frames for ")
        assert page.text_content("#dom-age").startswith("last reading, ")
        assert page.text_content("#dom-dir") != "–"  # the last reading stays, said to be old
        grey = page.evaluate("getComputedStyle(document.querySelector('#map')).filter")
        assert grey.startswith("grayscale(1)")
        wait_for(page, "!document.body.classList.contains('stale')", timeout=10_000)
        assert page.text_content("#conn") == "live · synthetic"
        assert not page.locator("#stale-note").is_visible()
        assert not page.locator("#dom-age").is_visible()
        assert errors == []


def test_dashboard_says_when_a_stream_stops_on_engine_errors(browser):
    """The engine fails on every frame from the 20th: the stream goes on through the first failures,
    then its worker stops; the page names the error and stops showing a frame rate."""
    app = create_app(Settings(), engine_factory=lambda: FlakyEngine(fail=range(20, 10**9)))
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(
            page, "document.querySelector('#conn').textContent.startsWith('error')", timeout=20_000
        )
        assert "RuntimeError: kernel fault" in page.inner_text("#banner")
        assert "stopped" in page.inner_text("#banner")
        wait_for(page, "document.querySelector('#stat-fps').textContent === '–'", timeout=10_000)
        # the last readings before the failure are not left on screen as if live
        assert shown_readings(page)["dir"] == "–" and shown_readings(page)["waiting"]
        assert errors == []


def test_distribution_panels_summarise_the_map_by_confidence(browser):
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "window.v1motion !== undefined")
        got = page.evaluate(
            """() => v1motion.cellHistograms({
                speed_px_per_frame: [[0.1, 0.6, 1.5, 3.0], [40, 2.0, 5.0, 1.0]],
                direction_deg: [[359, 100, 90, 180], [0, 270, 12, 45]],
                confidence: [[0.5, 1.0, 0.3, 0.15], [1.0, 0.5, 0.75, 0]],
            })"""
        )
        # octave bins centred on 0.25 ... 32 px/frame; the end bins take the rest. A cell counts by its
        # confidence from 0.4 up, half of it at 0.3, nothing below 0.2 (as towards the dominant motion)
        assert got["speed"] == pytest.approx([0.5, 1.0, 0, 0.15 + 0.5, 0.75, 0, 0, 1.0])
        direction = [0.0] * 16
        for k, c in ((0, 0.5), (4, 1.0), (4, 0.15), (0, 1.0), (12, 0.5), (1, 0.75)):
            direction[k] += c
        assert got["direction"] == pytest.approx(direction)
        assert page.evaluate("[0.1, 0.2, 0.3, 0.4, 0.9].map(v1motion.movingWeight)") == (
            pytest.approx([0, 0, 0.15, 0.4, 0.9])
        )
        assert page.evaluate("[0.25, 1, 32].map(v1motion.speedBinPosition)") == [0, 2, 7]
        # one faint cell is no distribution to draw (it filled a whole petal on a still view)
        shows = "([c]) => v1motion.panelsShow(v1motion.cellHistograms({speed_px_per_frame: [[1, 2]], direction_deg: [[0, 90]], confidence: [c]}))"  # noqa: E501
        assert page.evaluate(shows, [[0.3, 0]]) is False
        assert page.evaluate(shows, [[0.5, 0.6]]) is True
        assert errors == []


def test_the_maps_arrows_stay_visible_on_a_picture_as_light_as_their_colour(browser):
    """Arrows were drawn in their cell's own light colour with no outline: 1.3:1 over a light
    stripe, and told apart only by colour where colour-blind eyes see neighbouring directions
    alike. A dark halo under each arrow keeps its shape visible on any picture."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "window.v1motion !== undefined")
        darkest = """(conf) => {
            const img = document.createElement('canvas'); img.width = 64; img.height = 48;
            const g = img.getContext('2d'); g.fillStyle = '#fff'; g.fillRect(0, 0, 64, 48);
            const c = document.createElement('canvas'); document.body.appendChild(c);
            const grid = {rows: 3, cols: 4, cell_px: 16,
                direction_deg: Array(3).fill(Array(4).fill(45)),
                speed_px_per_frame: Array(3).fill(Array(4).fill(4)),
                confidence: Array(3).fill(Array(4).fill(conf))};
            v1motion.drawMap(c, img, 64, 48, grid);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let lo = 255;
            for (let i = 0; i < d.length; i += 4) lo = Math.min(lo, Math.max(d[i], d[i + 1], d[i + 2]));
            c.remove();
            return lo; }"""
        assert page.evaluate(darkest, 1.0) < 60  # the halo, dark on a white picture
        assert page.evaluate(darkest, 0.0) > 150  # no arrow, no halo: the picture alone
        assert errors == []


CONTRAST_ON_CARD = """(draw) => {
    const lin = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    const lum = (r, g, b) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
    const card = [0x13, 0x1a, 0x22], lc = lum(...card);
    const out = [];
    for (let deg = 0; deg < 360; deg += draw === 'arrow' ? 15 : 22.5) {
        const c = document.createElement('canvas');
        let x, y;  // a point inside the drawn shape: the arrow's shaft, the petal's middle
        if (draw === 'arrow') {
            c.width = c.height = 120;
            v1motion.drawDominantArrow(c, deg, 1.0);
            x = y = 60;
        } else {
            c.width = c.height = 280;
            const v = Array(16).fill(0); v[Math.round(deg / 22.5)] = 1;
            v1motion.drawPolar(c, v, null);
            const a = deg * Math.PI / 180, r = 0.6 * (140 - 26);
            x = Math.round(140 + r * Math.cos(a)); y = Math.round(140 - r * Math.sin(a));
        }
        const d = c.getContext('2d').getImageData(x, y, 1, 1).data, a = d[3] / 255;
        const l = lum(...[0, 1, 2].map((j) => d[j] * a + card[j] * (1 - a)));
        out.push((Math.max(l, lc) + 0.05) / (Math.min(l, lc) + 0.05));
    }
    return out; }"""


def test_the_dominant_arrow_and_the_roses_petals_stand_out_from_the_card_in_every_direction(
    browser,
):
    """Blue directions were 2.9:1 (the dominant arrow) and 1.9:1 (the rose's petals) on the card,
    under the 3:1 that WCAG asks of graphics that carry the reading."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "window.v1motion !== undefined")
        for draw in ("arrow", "petal"):
            ratios = page.evaluate(CONTRAST_ON_CARD, draw)
            assert min(ratios) >= 3.0, (draw, [round(r, 2) for r in ratios])
        assert errors == []


FIELD_EDGES = """() => {
    const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
    const lin = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
    const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
    const fill = (el) => {  // the first opaque background from el outwards
        for (; el; el = el.parentElement) {
            const c = rgb(getComputedStyle(el).backgroundColor);
            if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
        }
        return [255, 255, 255];
    };
    const out = {};
    for (const id of ['source', 'unit-filter', 'unit-sort', 'unit-select', 'token-input']) {
        const el = document.getElementById(id), edge = rgb(getComputedStyle(el).borderTopColor);
        out[id] = Math.min(ratio(edge, fill(el)), ratio(edge, fill(el.parentElement)));
    }
    return out; }"""


def test_every_form_fields_edge_stands_out_from_its_fill_and_what_is_around_it(browser):
    """The source picker's, the unit selectors' and the token field's edges were the cards' edge
    colour, 1.3:1 against the page: their edge is what tells them as fields (WCAG 1.4.11, 3:1)."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "window.v1motion !== undefined")
        ratios = page.evaluate(FIELD_EDGES)
        assert min(ratios.values()) >= 3.0, {k: round(v, 2) for k, v in ratios.items()}
        assert errors == []


def test_the_map_draws_a_cell_from_where_it_counts_as_moving(browser):
    """A model cell below MOVING_FROM[0] (0.2) draws nothing on the map, as it counts nowhere in the
    panels and the dominant motion; a cell of the flow map (no confidence) draws from 0.05 px/frame."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_for(page, "window.v1motion !== undefined")
        spread = """([conf, withConf]) => {
            const c = document.createElement('canvas'); c.id = 'probe';
            document.body.appendChild(c);
            const grid = {rows: 3, cols: 4, cell_px: 16,
                direction_deg: Array(3).fill(Array(4).fill(90)),
                speed_px_per_frame: Array(3).fill(Array(4).fill(2))};
            if (withConf) grid.confidence = Array(3).fill(Array(4).fill(conf));
            v1motion.drawMap(c, null, 64, 48, grid);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let lo = 255, hi = 0;
            for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i + 1]); hi = Math.max(hi, d[i + 1]); }
            c.remove();
            return hi - lo; }"""
        assert page.evaluate(spread, [0.15, True]) == 0  # nothing drawn on the background
        assert page.evaluate(spread, [0.3, True]) > 20  # half-way: a tint and a fainter arrow
        assert page.evaluate(spread, [0.9, True]) > page.evaluate(spread, [0.3, True])
        assert page.evaluate(spread, [0.0, False]) > 20  # flow: 2 px/frame is drawn
        assert errors == []


def test_speed_distribution_peaks_at_the_speed_the_map_shows(browser):
    """A pattern moving right by 2 px/frame, read by the exact double: every moving cell's speed, and
    the panel's tallest bar, is 2 px/frame; a still pattern empties both panels."""
    app = create_app(
        Settings(sources=["moving=synthetic", "still=synthetic"]),
        engine_factory=FakeEngine,
        source_factories={
            "moving": pattern_factory(vx=2, vy_up=0, fps=20.0),
            "still": pattern_factory(vx=0, vy_up=0, fps=20.0),
        },
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/?source=moving")
        wait_results(page, 5)
        hist = page.evaluate("v1motion.cellHistograms(v1motion.state.last.motion)")
        assert max(range(8), key=hist["speed"].__getitem__) == 3  # the bin centred on 2 px/frame
        assert max(range(16), key=hist["direction"].__getitem__) == 0  # right
        assert page.is_hidden("#speed-hist-empty") and canvas_spread(page, "#speed-hist") > 5
        below = page.locator("#top-units").bounding_box()["y"]
        page.select_option("#source", "still")
        wait_for(page, "!document.querySelector('#speed-hist-empty').hidden", timeout=15000)
        assert page.is_visible("#polar-empty")
        # the notes lie over the empty charts: nothing below them moves (the unit chips stay clickable)
        assert page.locator("#top-units").bounding_box()["y"] == below
        assert errors == []


def test_api_docs_work_offline_and_try_it_out_takes_the_token(browser):
    """/docs from the service's own files (every other host unreachable, as in a closed network):
    every operation of the schema listed; "Try it out" is refused until "Authorize" is given the
    token, then answered. /redoc renders from its own files too."""
    token = "docs-token-1"
    settings = Settings(token=token, sources=["synthetic"])
    app = create_app(
        settings, engine_factory=random_engine, source_factories={"synthetic": pattern_factory()}
    )
    with serving(app) as srv:
        schema = app.openapi()
        n_ops = sum(len(item) for item in schema["paths"].values())
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors, elsewhere = watch(page), []

        def local_only(route):
            if route.request.url.startswith((srv.url, "data:", "blob:")):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", local_only)
        page.goto(f"{srv.url}/docs")
        page.wait_for_selector(".opblock")
        assert page.locator(".opblock").count() == n_ops

        def try_streams() -> int:
            """Execute GET /v1/streams from its panel: the status the server answered Swagger's
            request with, once the panel shows it (not the previous execution's)."""
            block = page.locator(".opblock-get", has=page.locator("[data-path='/v1/streams']"))
            block.locator(".opblock-summary").click()
            if block.locator("button.try-out__btn").inner_text().strip() == "Try it out":
                block.locator("button.try-out__btn").click()
            with page.expect_response(lambda r: r.url.endswith("/v1/streams")) as answer:
                block.locator("button.execute").click()
            status = answer.value.status
            shown = block.locator(".live-responses-table .response .response-col_status").first
            wait_for(page, f"[...document.querySelectorAll('.live-responses-table "
                     f".response .response-col_status')].some(e => e.textContent.trim() "
                     f"=== '{status}')")  # fmt: skip
            assert shown.inner_text().strip() == str(status)
            block.locator(".opblock-summary").click()
            return status

        assert try_streams() == 401
        page.click("button.authorize")
        page.fill(".auth-container input", token)
        page.click(".auth-btn-wrapper button.authorize")
        page.click("button.btn-done")
        assert try_streams() == 200
        assert errors == [] and elsewhere == []

        page.goto(f"{srv.url}/redoc")
        page.wait_for_selector("[data-section-id]")
        assert page.locator("h2", has_text="List Streams").count() == 1
        # nothing elsewhere, not even ReDoc's logo (refused by the page's policy: a console error)
        assert elsewhere == [] and errors == []


def test_a_video_jobs_overlay_plays_in_the_browser(browser, tmp_path):
    """overlay.mp4 was MPEG-4 Part 2, which Chromium refuses (MEDIA_ERR_SRC_NOT_SUPPORTED): a user
    who opened the job's overlay link saw nothing. Now it plays from the service, and seeks."""
    import httpx
    import video_samples as vs

    app = create_app(
        Settings(data_dir=tmp_path / "data", video_engine="random"), engine_factory=random_engine
    )
    with serving(app) as srv:
        video = vs.avi(tmp_path, n=30, size=(160, 120))
        job = httpx.post(
            f"{srv.url}/v1/videos", files={"file": ("clip.avi", video, "video/x-msvideo")}
        ).json()
        deadline = time.monotonic() + 120
        while (done := httpx.get(f"{srv.url}/v1/videos/{job['id']}").json())["status"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.2)
        assert done["status"] == "succeeded", done["error"]
        page, errors = open_dashboard(browser, f"{srv.url}/")
        played = page.evaluate(
            """async (src) => {
                const v = document.createElement("video");
                v.muted = true;
                v.src = src;
                document.body.append(v);
                const event = (name) => new Promise((ok, no) => {
                    v.addEventListener(name, ok, {once: true});
                    v.addEventListener("error", () => no(new Error(`error ${v.error.code}`)));
                });
                await event("loadeddata");
                v.currentTime = v.duration * 0.8;
                await event("seeked");
                return {width: v.videoWidth, height: v.videoHeight, duration: v.duration};
            }""",
            done["links"]["overlay.mp4"],
        )
        assert played["width"] == 160 and played["height"] == 120
        assert played["duration"] == pytest.approx(30 / 10, abs=0.2)  # 30 frames at 10 fps
        assert errors == []


# ---- for keyboard and screen-reader users --------------------------------------------------------


@contextlib.contextmanager
def live_dashboard(browser, results_first: int = 5):
    """The dashboard on a random engine's synthetic stream, once ``results_first`` results are in;
    the page and its errors (none by the end)."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_results(page, results_first)
        yield page
        assert errors == []


RENDERS = """() => new Promise((done) => {
  let n = 0;
  const seen = new MutationObserver(() => { n += 1; });
  seen.observe(document.querySelector('#dominant'), {attributeFilter: ['data-results']});
  setTimeout(() => { seen.disconnect(); done(n); }, 3000);
})"""


def test_pause_holds_the_readings_still_and_resume_shows_the_newest(browser):
    """Thirty readings a second with no way to stop them (WCAG 2.2.2): a screen-reader user's
    number changed under the cursor while it was read."""
    with live_dashboard(browser) as page:
        page.focus("#pause-btn")
        page.keyboard.press("Space")
        # the name says what a press does; no pressed state beside it ("Resume, pressed")
        assert page.get_attribute("#pause-btn", "aria-pressed") is None
        assert page.text_content("#pause-label").strip() == "Resume"
        assert page.text_content("#conn") == "paused · synthetic"  # not "live" while held
        held = (results(page), shown_readings(page))
        assert page.evaluate(RENDERS) == 0  # 3 s of a live stream: nothing on screen changes
        assert (results(page), shown_readings(page)) == held
        assert page.text_content("#conn") == "paused · synthetic"  # results go on arriving
        page.keyboard.press("Space")
        assert page.text_content("#pause-label").strip() == "Pause"
        assert page.text_content("#conn") == "live · synthetic"
        wait_for(page, f"Number(document.querySelector('#dominant').dataset.results) > {held[0]}")
        assert results(page) > held[0] + 30  # the results that arrived meanwhile were counted


def test_a_stream_state_read_after_the_first_result_does_not_say_starting_again(browser):
    """The pill, which a screen reader announces, said "connecting, starting, live, starting, live"
    in 0.7 s when the answer to the page's state poll, sent before the first result, came after it."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page = browser.new_page()
        errors = watch(page)
        starting = {"name": "synthetic", "kind": "synthetic", "state": "starting", "error": None}
        page.route("**/v1/streams/synthetic", lambda route: route.fulfill(json=starting))
        page.goto(f"{srv.url}/")
        wait_results(page, 5)
        said = page.evaluate(
            """() => new Promise((done) => {
                const seen = [], pill = document.querySelector('#conn');
                const o = new MutationObserver(() => seen.push(pill.textContent));
                o.observe(pill, {childList: true, characterData: true, subtree: true});
                setTimeout(() => { o.disconnect(); done(seen); }, 4500); })"""
        )
        assert not any(s.startswith("starting") for s in said), said
        assert page.text_content("#conn") == "live · synthetic"
        assert errors == []


def test_under_reduced_motion_the_readings_change_at_most_twice_a_second(browser):
    with live_dashboard(browser) as page:
        normal = page.evaluate(RENDERS)
        page.emulate_media(reduced_motion="reduce")
        reduced = page.evaluate(RENDERS)
        assert 3 <= reduced <= 8, reduced  # at most 2 a second over 3 s, and still live
        assert normal > reduced, (normal, reduced)


REORDERS = """(ms) => new Promise((done) => {
  const times = [], box = document.querySelector('#top-units');
  const seen = new MutationObserver(() => times.push(performance.now()));
  seen.observe(box, {childList: true});
  setTimeout(() => { seen.disconnect(); done(times); }, ms); })"""


def test_under_reduced_motion_the_units_chips_reorder_at_most_every_five_seconds(browser):
    """The most active units' chips jumped places about once a second with reduced motion on too
    (accessibility probe): chips that move are motion."""
    with live_dashboard(browser) as page:
        wait_for(page, "document.querySelectorAll('#top-units .chip').length >= 3")
        normal = page.evaluate(REORDERS, 4000)
        assert len({round(t / 1000) for t in normal}) >= 2, normal  # a random engine's units
        page.emulate_media(reduced_motion="reduce")
        page.evaluate(REORDERS, 1200)  # a reorder already due may still come
        reduced = page.evaluate(REORDERS, 6000)
        moments = sorted({round(t) for t in reduced})
        gaps = [b - a for a, b in itertools.pairwise(moments) if b - a > 50]
        assert all(g >= 4900 for g in gaps), moments


def test_charts_numbers_and_chips_have_names_a_screen_reader_reads(browser):
    import re

    with live_dashboard(browser) as page:
        wait_for(page, "document.querySelectorAll('#top-units .chip').length >= 3")
        page.wait_for_timeout(1200)  # the charts' words change at most once a second
        for name in (
            r"^Model motion map: (moving \S+ \(\d+°\) at [\d.]+ px\/frame|no clear motion)",
            r"^Direction distribution(: no clear motion| of the map's cells: most move \S+ \(\d+°\))",
            r"^Speed distribution",
            r"^colour wheel",
            r"^arrow length scale",
            r"^Direction tuning of unit \d+: prefers \S+ \(\d+(\.\d)?°\)$",  # 67.5° stays 67.5
            r"^Speed tuning of unit \d+: prefers [\d.]+ px\/frame$",
        ):
            assert page.get_by_role("img", name=re.compile(name)).count() == 1, name
        assert page.get_attribute("#dominant-arrow", "aria-hidden") == "true"  # the text says it
        card = page.text_content(".dominant-text")
        assert "Direction" in card and "Speed" in card  # read before their numbers
        assert page.get_by_role("heading", level=1).count() == 1
        assert page.get_by_role("combobox", name="show units").count() == 1
        assert page.get_by_role("combobox", name="sort by").count() == 1
        assert page.get_by_role("group", name=re.compile(r"^(\d+(\.\d+)?|–) fps$")).count() == 1
        # a chip's name stays put while its number changes with every result
        names = "[...document.querySelectorAll('#top-units .chip')].map(c => c.getAttribute('aria-label'))"
        chip = page.evaluate(names)
        assert all(
            re.match(r"^unit \d+(, prefers \S+ \(\d+(\.\d)?°\) at [\d.]+ px/frame)?$", n)
            for n in chip
        )
        # each chip shows its unit's preferred direction by an arrow too, not by colour alone
        glyphs = page.evaluate(
            "[...document.querySelectorAll('#top-units .chip')].map(c => [c.getAttribute('aria-label'),"
            " c.querySelector('svg.glyph path')?.getAttribute('transform') ?? null])"
        )
        for label, turn in glyphs:
            deg = re.search(r"\((\d+(\.\d)?)°\)", label)
            if deg:
                got = float(re.fullmatch(r"rotate\((-?[\d.]+)\)", turn).group(1))
                assert (got + float(deg.group(1)) + 180) % 360 - 180 == pytest.approx(0, abs=0.6)
        assert any(turn for _, turn in glyphs)
        page.hover("#top-units")  # held still: the same chips
        before = page.evaluate(names)
        page.wait_for_timeout(800)
        assert page.evaluate(names) == before
        pressed = page.evaluate(
            "[...document.querySelectorAll('#top-units .chip')]"
            ".filter(c => c.getAttribute('aria-pressed') === 'true').map(c => c.dataset.unit)"
        )
        assert pressed in ([], [page.input_value("#unit-select")])


class Turns(PatternSource):
    """Moves right for 120 frames (4 s), then up."""

    def read(self):
        if self.t == 120:
            self.vx, self.vy_up = 0, 2
        return super().read()


def test_a_screen_reader_is_told_when_the_dominant_motion_turns_not_thirty_times_a_second(browser):
    """The readings are in no live region and image names that change are not spoken: a blind
    user never heard the synthetic source turn. A change that holds 1 s is said, at most every 3 s."""
    app = create_app(
        Settings(),
        engine_factory=FakeEngine,
        source_factories={"synthetic": lambda stop: Turns(None, stop, fps=30)},
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        assert page.get_attribute("#say", "aria-live") == "polite"
        said = page.evaluate(
            """() => new Promise((done) => {
                const seen = [], say = document.querySelector('#say');
                const o = new MutationObserver(() => seen.push([performance.now(), say.textContent]));
                o.observe(say, {childList: true, characterData: true, subtree: true});
                setTimeout(() => { o.disconnect(); done(seen); }, 8000); })"""
        )
        texts = [t for _, t in said]
        assert any(t.startswith("Moving right at 2 px/frame") for t in texts), texts
        assert texts[-1].startswith("Moving up at 2 px/frame"), texts
        assert len(texts) <= 3, texts  # not with every result
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(said)]
        assert all(g >= 2900 for g in gaps), gaps
        assert errors == []


def test_an_error_banner_is_an_alert_and_the_token_field_gets_focus_and_a_name(browser):
    app = create_app(Settings(token="tok-123"), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        page.locator("#token-form").wait_for(state="visible")
        assert page.evaluate("document.activeElement.id") == "token-input"
        assert page.get_by_label("Access token").count() == 1
        assert page.get_attribute("#token-input", "aria-describedby") == "token-msg"
        # inside a landmark, as all of the page's content (axe's "region")
        assert page.get_by_role("region", name="notices").locator("#token-form").count() == 1
        page.fill("#token-input", "wrong")
        page.keyboard.press("Enter")
        wait_for(page, "document.querySelector('#token-msg').textContent.includes('refused')")
        assert page.evaluate("document.activeElement.id") == "token-input"  # not back to the page
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/?source=nosuch")
        page.locator("#banner").wait_for(state="visible")
        assert page.get_attribute("#banner", "role") in ("status", "alert")
        assert errors == []


def test_on_a_phone_the_tab_stops_run_down_the_page(browser):
    """One column: the tab order went down to the unit browser at the bottom, then back up to the
    most active units (WCAG 2.4.3)."""
    app = create_app(Settings(), engine_factory=random_engine)
    with serving(app) as srv:
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        page.goto(f"{srv.url}/")
        wait_results(page, 3)
        wait_for(page, "document.querySelectorAll('#top-units .chip').length >= 2")
        page.hover("#top-units")  # the chips hold still
        page.focus("#unit-filter")  # the first stop below the top bar
        ys = []
        for i in range(6):  # the unit browser's five controls, then the first chip
            if i:
                page.keyboard.press("Tab")
            ys.append(page.evaluate("document.activeElement.getBoundingClientRect().top + scrollY"))
        assert page.evaluate("document.activeElement.classList.contains('chip')")
        assert all(b > a - 4 for a, b in itertools.pairwise(ys)), ys  # down the page (a row: 4 px)


def test_escape_closes_a_numbers_explanation_until_focus_leaves_it(browser):
    with live_dashboard(browser, 2) as page:
        page.focus(".stat:has(#stat-drops)")
        assert page.is_visible("#tip-drops")
        page.keyboard.press("Escape")
        assert not page.is_visible("#tip-drops")
        page.focus("#pause-btn")
        page.focus(".stat:has(#stat-drops)")
        assert page.is_visible("#tip-drops")


def test_stepping_through_the_sources_with_the_keyboard_opens_only_the_one_it_stops_on(browser):
    """A closed picker changes with every arrow key: each source on the way was opened, and the
    readings wiped each time."""
    app = create_app(
        Settings(sources=["synthetic", "b=synthetic", "c=synthetic"]), engine_factory=random_engine
    )
    with serving(app) as srv:
        page, errors = open_dashboard(browser, f"{srv.url}/")
        wait_results(page, 3)
        opened = []
        page.on("websocket", lambda ws: opened.append(ws.url.rsplit("/", 1)[-1].split("?", 1)[0]))
        page.focus("#source")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(1500)
        assert opened == ["c"], opened
        wait_results(page, 3)
        page.select_option("#source", "synthetic")  # the pointer: at once
        page.wait_for_timeout(300)
        assert opened == ["c", "synthetic"], opened
        assert errors == []
