"""Figures of the tuning report: readable axes."""

from types import SimpleNamespace

import numpy as np

from models.motion.tuning import SPEEDS
from models.report import speed_tuning_figure


def test_speed_tuning_axis_is_labelled_at_the_measured_speeds_only(tmp_path, rng):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = []
    recorder = SimpleNamespace(subplots=plt.subplots, close=closed.append)
    n = 40
    curves = rng.uniform(0, 1, (n, len(SPEEDS)))
    pref = np.asarray(SPEEDS)[curves.argmax(1)]
    speed_tuning_figure(recorder, np.ones(n, bool), curves, pref, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").stat().st_size > 1000
    (fig,) = closed
    curve_ax, bar_ax = fig.axes
    fig.canvas.draw()
    labels = [t.get_text() for t in curve_ax.get_xticklabels() if t.get_visible()]
    assert labels == ["0.25", "0.5", "1", "2", "4", "8"]
    assert not any(t.get_text() for t in curve_ax.get_xticklabels(minor=True))
    assert [int(p.get_height()) for p in bar_ax.patches] == [int((pref == s).sum()) for s in SPEEDS]
    plt.close(fig)
