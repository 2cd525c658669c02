"""The live frame path.

A server-side stream: ``sources`` (a named capture thread) -> ``slot`` (the latest frame, never a
backlog) -> ``pipeline`` (the engine's worker thread) -> ``analyse`` (engine step, timing, flow, one
encoded result) -> ``hub`` (a latest-wins mailbox per viewer). A browser camera: ``camera`` (size
negotiation and checks before decoding) -> the same ``analyse``. ``engine`` holds the shared engine.
"""
