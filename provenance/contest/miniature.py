"""The miniature contest: a tiny, deterministic stand-in for the official challenge.

Same evaluator contract, report format and score formula as the official contest; a short
generated clip and small seeded scorer networks instead of the real video and weights.
This module is light (no torch, av or numpy): verify needs only the profile.
"""

from provenance.contest.profiles import Profile

FRAMES, WIDTH, HEIGHT = 48, 128, 96
# miniature/block.bin: the random bytes the clip's scored detail and the weights derive from
BLOCK_SHA256 = "90f3fa94b3d5c0dcc602d1f43e76f5e5b38ddf3480a74176428e0ee23760984c"
PROFILE = Profile(
    name="comma-miniature-v1",
    uncompressed_size=56_812,  # bytes of the generated videos/0.mkv; a test pins it
    samples=FRAMES // 2,
    official_gpu="Tesla T4",
    frames=FRAMES, width=WIDTH, height=HEIGHT,
    # the upstream that build.py generates (a test rebuilds it and checks every pin)
    evaluator=(
        ("evaluate.py", 4_123, "d812b21be0a5422381fc472ecf108f5ff68e2562dd2b2624a9c299cba423c738"),
        ("scorers.py", 1_727, "814b62ca00c7eba13d3925a3d1d5ac0f9c6e9bc746fb21508d5a6ff1bd7aaad9"),
        ("public_test_video_names.txt", 6, "7ff99d08c8351dd8167ec09213b758da5bbb705dedabe361ba881217374029a8"),
        ("models/posenet.safetensors", 30_256, "76343ced867b4b8be9fa0d441bdb9af198938ed629d871f02aa7f6d92cace759"),
        ("models/segnet.safetensors", 2_428, "9afba614f778b06713b8eedd2146cbe4c0b2ab9a49447b7f1b07b1fbd0fedcac"),
        ("videos/0.mkv", 56_812, "5aad689c88071941c78dbaebfeefd4d5339bf45a8589c613c99da7ed08fb48b2"),
    ),
    official_device="cpu",
    upstream_extra=("evaluate.sh", "comma_lab_profile", "pyproject.toml"),
    importable_at_inflate=(),
    custody_allowance=2048,  # the bundled runtimes carry 411-724 bytes; the block is 12,288 (6x)
    custody_free=1024,
    preview_frames=(0, 25, 47),  # made to be replayed on any lab machine: an exact CPU replay is its top grade
)
