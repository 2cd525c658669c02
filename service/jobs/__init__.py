"""Video motion jobs: the job function, the sandboxed decoder, the SQLite store and the runners.

An uploaded video goes: router (streamed to ``<data_dir>/videos/<job id>/input.bin``) → store ("queued")
→ a runner (local worker processes, or Ray tasks) → :func:`v1motion.service.jobs.process.process_video` →
results in ``<job dir>/out/`` (written to ``out.tmp/`` and renamed when complete).
"""
