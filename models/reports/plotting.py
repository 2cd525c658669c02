"""Figures without pyplot: every report writer draws on its own :class:`matplotlib.figure.Figure`.

No figure writer switches matplotlib's global backend or keeps figures in pyplot's registry: a
``Figure`` built here renders with the Agg canvas when it is saved, whatever the caller's backend.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def new_figure(**kw) -> Figure:
    """A figure that belongs to no GUI and to no pyplot state (``figsize``, ``dpi``, ...)."""
    return Figure(**kw)
