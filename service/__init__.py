"""The v1motion service: FastAPI app, sources, per-stream pipelines, jobs and the CLI.

Thin by design: every number it reports is computed in ``models``.
"""
