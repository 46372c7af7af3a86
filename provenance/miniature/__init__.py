"""The miniature contest: a tiny, deterministic stand-in for the official challenge.

Same evaluator contract, report format and score formula as the official contest; a short
generated clip and small seeded scorer networks instead of the real video and weights.
This module is light (no torch, av or numpy): verify needs only the profile.
"""

from ..contest import Profile, register

FRAMES, WIDTH, HEIGHT = 48, 128, 96
PROFILE = register(Profile(
    name="comma-miniature-v1",
    uncompressed_size=8_984,  # bytes of the generated videos/0.mkv; a test pins it
    samples=FRAMES // 2,
    official_gpu="Tesla T4",
    frames=FRAMES, width=WIDTH, height=HEIGHT,
    official_device="cpu",
    preview_frames=(0, 25, 47),  # made to be replayed on any lab machine: an exact CPU replay is its top grade
))
