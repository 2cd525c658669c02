"""Pure numerics of v1motion: whitening, the ss-RNN, stimuli, tuning analysis, motion read-out,
the spike-train models, the language model and the recurrent filter bank.

Nothing in this package imports from ``service``.
"""
