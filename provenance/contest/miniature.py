"""The miniature contest: a tiny, deterministic stand-in for the official challenge.

Same evaluator contract, report format and score formula as the official contest; a short
generated clip and small seeded scorer networks instead of the real video and weights.
This module is light (no torch, av or numpy): verify needs only the profile.
"""

from provenance.contest.rules import Profile

FRAMES, WIDTH, HEIGHT = 48, 128, 96
PROFILE = Profile(
    name="comma-miniature-v1",
    uncompressed_size=8_984,  # bytes of the generated videos/0.mkv; a test pins it
    samples=FRAMES // 2,
    official_gpu="Tesla T4",
    frames=FRAMES, width=WIDTH, height=HEIGHT,
    # the upstream that build.py generates (a test rebuilds it and checks every pin)
    evaluator=(
        ("evaluate.py", 4_123, "d812b21be0a5422381fc472ecf108f5ff68e2562dd2b2624a9c299cba423c738"),
        ("scorers.py", 1_546, "ba7c5e5e288c2e96b53038c9353ac7eb7193eb21e55da1e5cb4cadc9b2aa5ce4"),
        ("public_test_video_names.txt", 6, "7ff99d08c8351dd8167ec09213b758da5bbb705dedabe361ba881217374029a8"),
        ("models/posenet.safetensors", 30_256, "99a56284fae517605bac31db1e33832767eb8ebe3d359bba4ca910f24703b2da"),
        ("models/segnet.safetensors", 2_428, "7be858cfe0a7a50ee7800c509188b28f9284ea8d95855d724c4871481cf95202"),
        ("videos/0.mkv", 8_984, "48bcdefc11c45b94394e9e06f31e35da60c166fa00898ca9be6f17d78b9bba4b"),
    ),
    official_device="cpu",
    upstream_extra=("evaluate.sh", "comma_lab_profile"),
    importable_at_inflate=(),
    custody_allowance=2048,  # the bundled runtimes carry 411-724 bytes; the clip is 8,984
    custody_free=1024,
    preview_frames=(0, 25, 47),  # made to be replayed on any lab machine: an exact CPU replay is its top grade
)
