"""Report writers, figures and model cards, apart from the numerics they present.

``motion`` (the ss-RNN's tuning figures and report), ``model_card``, ``stfilter`` (the filter bank's
report); ``plotting`` draws figures without touching matplotlib's global state.
"""
