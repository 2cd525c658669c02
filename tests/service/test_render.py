"""v1motion.service.render: overlay colours and arrows follow the direction convention (pi/2 = up on screen)."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from v1motion.service.render import colour_wheel, direction_colours, draw_overlay, summary_figure


def test_colour_wheel_matches_direction_colours():
    wheel = colour_wheel(41)
    c = 20
    np.testing.assert_array_equal(wheel[c, 40], direction_colours(np.array(0.0)))  # right
    np.testing.assert_array_equal(wheel[0, c], direction_colours(np.array(np.pi / 2)))  # up
    assert tuple(direction_colours(np.array(0.0))) == (0, 0, 255)  # red in BGR
    assert np.all(wheel[0, 0] == 0)  # outside the disc


@pytest.mark.parametrize(
    "direction, moved", [(np.pi / 2, (-1, 0)), (0.0, (0, 1)), (np.pi, (0, -1))]
)
def test_arrow_points_the_way_of_motion(direction, moved):
    frame = np.zeros((64, 64, 3), np.uint8)
    d = np.full((1, 1), direction, np.float32)
    out = draw_overlay(frame, d, np.full((1, 1), 10.0), np.ones((1, 1)), cell=32, opacity=0.0)
    white = np.argwhere(out[:32, :32].min(axis=-1) > 200)
    centre = white.mean(axis=0) - 16
    assert np.sign(np.round(centre / 3)).astype(int).tolist() == list(moved)


def test_arrows_stay_visible_on_a_light_picture():
    """White 1-px arrows vanished on light cells (87 % of a real overlay's arrows under 3:1
    contrast): a dark halo under each keeps its shape on any picture."""
    frame = np.full((32, 64, 3), 255, np.uint8)
    conf = np.array([[0.0, 1.0]])
    out = draw_overlay(frame, np.zeros((1, 2)), np.full((1, 2), 4.0), conf, cell=32, opacity=0.0)
    assert np.all(out[:, :32] == 255)  # still cell: no arrow, no halo
    dark = np.argwhere(out[:, 32:].max(axis=-1) < 60)
    assert len(dark) > 20  # the halo, along a rightward arrow through the cell's centre
    assert 10 < dark[:, 1].mean() < 22 and abs(dark[:, 0].mean() - 16) < 3


def test_the_legend_wheel_shows_the_directions_by_arrows_too():
    """The wheel told directions by colour alone (90 and 135 degrees look alike to a protanope)."""
    from v1motion.service.render import _legend

    wheel, mask = _legend(60)
    white = np.argwhere(wheel.min(axis=-1) > 230)
    c = 29.5
    right, up = white[white[:, 1] > c + 8], white[white[:, 0] < c - 8]
    left, down = white[white[:, 1] < c - 8], white[white[:, 0] > c + 8]
    for arm, axis in ((right, 0), (left, 0), (up, 1), (down, 1)):
        assert len(arm) > 5 and abs(arm[:, axis].mean() - c) < 2  # one arrow on each axis
    assert mask[30, 30] and not mask[0, 0]


def test_overlay_tints_by_confidence_and_keeps_the_input():
    frame = np.full((32, 64, 3), 100, np.uint8)
    conf = np.array([[0.0, 1.0]])
    out = draw_overlay(frame, np.zeros((1, 2)), np.zeros((1, 2)), conf, cell=32, opacity=0.5)
    assert np.all(out[:, :32] == 100)  # still cell: untouched
    assert out[16, 40, 2] > 150 and out[16, 40, 0] < 60  # moving cell: tinted red
    assert np.all(frame == 100)


def test_overlay_draws_the_cells_the_dashboard_draws():
    """Cells below MOVING_FROM[0] (the dashboard draws nothing there, and they count nowhere) stay
    untouched; from there a cell is tinted, and from halfway up the dashboard's arrow fade it gets an
    arrow."""
    from v1motion.models.motion.engine import MOVING_FROM

    lo, hi = MOVING_FROM
    conf = np.array([[lo - 0.05, lo + 0.02, (lo + hi) / 2 + 0.02, 1.0]])
    frame = np.full((32, 128, 3), 100, np.uint8)
    out = draw_overlay(frame, np.zeros((1, 4)), np.full((1, 4), 4.0), conf, cell=32).astype(int)
    tinted = [bool(np.any(out[:, 32 * j : 32 * j + 32] != 100)) for j in range(4)]
    assert tinted == [False, True, True, True]
    white = [bool(np.any(out[:, 32 * j : 32 * j + 32].min(axis=-1) > 200)) for j in range(4)]
    assert white == [False, False, True, True]


def test_summary_figure_is_a_png(tmp_path):
    path = tmp_path / "s.png"
    bins = np.arange(8) * np.pi / 4
    summary_figure(path, bins, np.ones(8) / 8, np.linspace(0, 2, 30), 30.0, "t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    main = [
        {"direction_deg": 90.0, "share": 0.6, "median_speed_px_per_frame": 2.0},
        {"direction_deg": None, "share": 0.4, "median_speed_px_per_frame": 1.0},
    ]
    summary_figure(path, bins, np.ones(8) / 8, np.zeros(3), 30.0, main_directions=main)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_arrow_shafts_match_a_cell_by_cell_loop(rng):
    from v1motion.service.render import arrow_segments

    d = rng.uniform(0, 2 * np.pi, (5, 7))
    s = rng.uniform(0, 24, (5, 7))
    c = rng.uniform(0, 1, (5, 7))
    segs = arrow_segments(d, s, c, cell=16)
    shafts = []
    for i in range(5):
        for j in range(7):
            frac = math.log2(1 + s[i, j] / 0.25) / math.log2(1 + 16 / 0.25)
            length = 0.95 * 16 * min(frac, 1.0)
            if c[i, j] < 0.3 or length < 1.0:
                continue
            cx, cy = (j + 0.5) * 16, (i + 0.5) * 16  # centred on the cell, as on the dashboard
            dx, dy = length * np.cos(d[i, j]) / 2, -length * np.sin(d[i, j]) / 2
            shafts.append([[cx - dx, cy - dy], [cx + dx, cy + dy]])
    assert len(segs) == 3 * len(shafts)
    np.testing.assert_allclose(segs[: len(shafts)], np.round(shafts), atol=1)


def test_arrows_stay_inside_their_cells(rng):
    """Centred on their cells as on the dashboard: even a full-length arrow (0.95 cell) reaches no
    neighbouring cell."""
    from v1motion.service.render import arrow_segments

    d = rng.uniform(0, 2 * np.pi, (6, 9))
    s = rng.uniform(0, 40, (6, 9))
    segs = arrow_segments(d, s, np.ones((6, 9)), cell=16).astype(float)
    kept = np.argwhere(0.95 * 16 * np.minimum(np.log2(1 + s / 0.25) / np.log2(65), 1) >= 1)
    shafts = segs[: len(kept)]
    for (i, j), shaft in zip(kept, shafts, strict=True):
        centre = np.array([(j + 0.5) * 16, (i + 0.5) * 16])
        np.testing.assert_allclose(shaft.mean(axis=0), centre, atol=1)
    for seg in segs.reshape(3, len(kept), 2, 2).transpose(1, 0, 2, 3):
        lo, hi = seg.min(axis=(0, 1)), seg.max(axis=(0, 1))
        cell = np.floor(seg[0].mean(axis=0) / 16)
        assert np.all(lo >= cell * 16 - 1) and np.all(hi <= (cell + 1) * 16 + 1)


def test_overlay_has_a_speed_legend_with_the_maps_arrow_lengths():
    from v1motion.service.render import SCALE_SPEEDS, _speed_legend, arrow_fraction

    legend = _speed_legend(16)
    lh, lw = legend.shape[:2]
    frame = np.full((480, 640, 3), 100, np.uint8)
    out = draw_overlay(frame, np.zeros((30, 40)), np.zeros((30, 40)), np.zeros((30, 40)), 16)
    np.testing.assert_array_equal(out[480 - 4 - lh : 476, 640 - 4 - lw : 636], legend)
    # each slot's arrow is as long as the map's arrow at that speed
    slot = 22
    for k, v in enumerate(SCALE_SPEEDS):
        box = legend[3 : 3 + 16, 3 + k * slot : 3 + (k + 1) * slot].min(axis=-1)
        cols = np.flatnonzero((box > 200).any(axis=0))
        assert abs((cols[-1] - cols[0] + 1) - 0.95 * 16 * arrow_fraction(v)) <= 2.5
    # no room on a small frame (a third of its width or more): no legend
    small = draw_overlay(
        frame[:120, :160], np.zeros((7, 10)), np.zeros((7, 10)), np.zeros((7, 10)), 16
    )
    np.testing.assert_array_equal(small[90:], 100)


@pytest.mark.parametrize("shape, cell", [((48, 80), 16), ((50, 70), 16), ((32, 32), 8)])
def test_blend_cells_matches_a_per_pixel_float_blend(rng, shape, cell):
    from v1motion.service.render import blend_cells

    h, w = shape
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    gh, gw = h // cell, w // cell
    colours = rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8)
    alpha = rng.uniform(-0.2, 1.2, (gh, gw))  # clipped to [0, 1]
    out = blend_cells(frame, colours, alpha, cell)
    a = np.kron(np.clip(alpha, 0, 1), np.ones((cell, cell)))[..., None]
    expect = frame.astype(float)
    expect[: gh * cell, : gw * cell] = (1 - a) * expect[: gh * cell, : gw * cell] + a * np.kron(
        colours, np.ones((cell, cell, 1))
    )
    assert np.abs(out.astype(int) - np.rint(expect)).max() <= 1
    np.testing.assert_array_equal(out[gh * cell :], frame[gh * cell :])  # beyond the grid: as is


def test_blend_cells_touches_only_coloured_cells(rng):
    from v1motion.service.render import blend_cells

    frame = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    alpha = np.zeros((4, 6))
    assert np.array_equal(blend_cells(frame, np.zeros((4, 6, 3), np.uint8), alpha, 16), frame)
    alpha[2, 3] = 1.0
    out = blend_cells(frame, np.full((4, 6, 3), 7, np.uint8), alpha, 16)
    assert np.all(out[32:48, 48:64] == 7)
    changed = np.argwhere((out != frame).any(axis=-1))
    assert np.all(changed.min(axis=0) >= [32, 48]) and np.all(changed.max(axis=0) <= [47, 63])


def test_each_main_direction_is_drawn_and_listed_with_its_own_dashes(tmp_path, monkeypatch):
    """summary.png drew every main direction as the same black line, so its legend's lines were
    identical and two spokes were told apart by their angle alone."""
    from v1motion.models.reports import plotting

    figures = []
    made = plotting.new_figure
    monkeypatch.setattr(
        plotting, "new_figure", lambda **kw: figures.append(made(**kw)) or figures[-1]
    )
    main = [
        {"direction_deg": d, "share": s, "median_speed_px_per_frame": 1.0}
        for d, s in ((0.0, 0.4), (90.0, 0.3), (180.0, 0.2), (None, 0.1))
    ]
    bins = np.arange(8) * np.pi / 4
    summary_figure(tmp_path / "s.png", bins, np.ones(8) / 8, np.ones(5), 30.0, main_directions=main)
    polar = figures[0].axes[0]
    legend = polar.get_legend()
    styles = [h.get_linestyle() for h in legend.legend_handles]
    assert len(styles) == 3 and len(set(styles)) == 3, styles
    assert [t.get_text()[:4] for t in legend.get_texts()] == ["0°: ", "90°:", "180°"]
    assert [line.get_linestyle() for line in polar.get_lines()] == styles


def test_matplotlib_is_imported_by_the_preload_not_by_the_module():
    """The server imports this module at start; the summary figure's matplotlib (about a third of a
    second) is imported by ``preload_plotting``, which video workers call when they start."""
    import subprocess
    import sys

    code = (
        "import sys; import v1motion.service.render as r; a = 'matplotlib' in sys.modules; "
        "r.preload_plotting(); print(a, 'matplotlib.projections.polar' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_arrow_fraction_is_log_scaled_to_a_full_cell_at_16_px_per_frame():
    from v1motion.service.render import arrow_fraction

    f = arrow_fraction(np.array([-1.0, 0.0, 0.25, 1.0, 4.0, 16.0, 40.0, np.nan]))
    np.testing.assert_allclose(f[:2], 0.0)
    np.testing.assert_allclose(f[2], 1 / math.log2(65))  # log2(1 + 1) / log2(1 + 64)
    np.testing.assert_allclose(f[5:7], 1.0)
    assert f[7] == 0.0  # no speed, no arrow
    assert 0 < f[2] < f[3] < f[4] < f[5]
    # Each doubling of speed adds about the same length (a linear scale capped at a cell, as before,
    # drew 8 and 16 px/frame alike).
    steps = np.diff(arrow_fraction(np.array([1.0, 2.0, 4.0, 8.0, 16.0])))
    assert steps.min() > 0.6 * steps.max()


def test_overlay_and_dashboard_draw_arrows_on_one_scale():
    from v1motion.service.render import ARROW_V0, ARROW_VMAX

    js = (Path(__file__).parents[2] / "web" / "app.js").read_text()
    v0 = re.search(r"^const V0 = ([0-9.]+);", js, re.M)
    vmax = re.search(r"^const VMAX = ([0-9.]+);", js, re.M)
    assert v0 and vmax, "web/app.js no longer defines V0 and VMAX"
    assert float(v0.group(1)) == ARROW_V0
    assert float(vmax.group(1)) == ARROW_VMAX
    assert "Math.log2(1 + v / V0) / Math.log2(1 + VMAX / V0)" in js
    # the two legends show the same speeds, and arrows centred on their cells with the same head
    from v1motion.service.render import SCALE_SPEEDS

    speeds = re.search(r"^const SCALE_SPEEDS = \[([0-9., ]+)\];", js, re.M)
    assert speeds, "web/app.js no longer defines SCALE_SPEEDS"
    assert tuple(float(v) for v in speeds.group(1).split(",")) == SCALE_SPEEDS
    assert "const tx = x + dx / 2, ty = y + dy / 2;" in js  # centred (arrow_segments' half shaft)
    assert "const h = Math.min(head, len * 0.6);" in js and "cell * 0.32" in js
