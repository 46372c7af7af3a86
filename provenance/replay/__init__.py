"""Replay: intake (safe unzip), the sandbox (phase views, limits), the run and compare."""
