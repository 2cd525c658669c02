"""The motion engine: whitening, the ss-RNN (kernels, learning), stimuli and natural movies, tuning
analysis, the motion read-outs (linear and MT-like), the per-frame engine and its accuracy benchmark.

The service depends on :mod:`v1motion.models.motion.contract` (``Engine``, ``make_engine``) only.
"""
