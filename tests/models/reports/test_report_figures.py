"""Figures of the tuning report: readable axes."""

import numpy as np
import pytest

from v1motion.models.motion.tuning import SPEEDS
from v1motion.models.reports import motion as reports_motion
from v1motion.models.reports.motion import speed_tuning_figure


def test_speed_tuning_axis_is_labelled_at_the_measured_speeds_only(tmp_path, rng, monkeypatch):
    import matplotlib

    backend = matplotlib.get_backend()
    drawn = []
    real = reports_motion.new_figure
    monkeypatch.setattr(
        reports_motion, "new_figure", lambda **kw: drawn.append(real(**kw)) or drawn[-1]
    )
    n = 40
    curves = rng.uniform(0, 1, (n, len(SPEEDS)))
    pref = np.asarray(SPEEDS)[curves.argmax(1)]
    speed_tuning_figure(np.ones(n, bool), curves, pref, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").stat().st_size > 1000
    (fig,) = drawn
    curve_ax, bar_ax = fig.axes
    fig.canvas.draw()
    labels = [t.get_text() for t in curve_ax.get_xticklabels() if t.get_visible()]
    assert labels == ["0.25", "0.5", "1", "2", "4", "8"]
    assert not any(t.get_text() for t in curve_ax.get_xticklabels(minor=True))
    assert [int(p.get_height()) for p in bar_ax.patches] == [int((pref == s).sum()) for s in SPEEDS]
    assert matplotlib.get_backend() == backend  # the writer left the global backend alone


@pytest.mark.slow
def test_the_tuning_figures_are_written_from_a_small_model(tmp_path):
    """Every figure of ``v1motion analyze`` is drawn and saved (a small random model, not the
    shipped one: this checks the drawing, not the science)."""
    import matplotlib

    from v1motion.models.motion.ssrnn import SSRNN
    from v1motion.models.motion.tuning_report import measure_tuning
    from v1motion.models.reports.motion import write_figures

    backend = matplotlib.get_backend()
    model = SSRNN(n_atoms=4, n_clones=2, patch=8).init_random(seed=0, r_scale=0.5, b=-1.0)
    control = SSRNN(n_atoms=4, n_clones=2, patch=8).init_random(seed=1, r_scale=0.5, b=-1.0)
    art = {"model": measure_tuning(model), "control": measure_tuning(control)}
    names = write_figures(model, art, tmp_path)
    assert len(names) >= 4
    for name in names:
        assert (tmp_path / name).stat().st_size > 1000, name
    assert matplotlib.get_backend() == backend
