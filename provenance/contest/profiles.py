"""Contest profiles: what a score is judged under (the clip, the sample count, the pinned evaluator),
the score formula, and the git-LFS pointers the pinned files may arrive as.

Light on purpose: `prov verify` imports this and nothing else of the contest, so it defines plain
classes (no dataclasses), compiles no regex at import and reads no file.
"""

from __future__ import annotations

import math
import os

from provenance.core.frozen import Frozen

STAND_IN_SUFFIX = "+stand-ins"  # never a registered profile: verify refuses any score under it
LFS_FILES = ("models/", "videos/")  # where the pinned git-LFS files live: the only ones a stand-in may replace
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
NAMES_FILE = "public_test_video_names.txt"  # the clip's names, beside evaluate.py: what every phase may read


class Profile(Frozen):
    """A contest profile; immutable (`replace` makes a changed copy)."""

    __slots__ = ("name", "uncompressed_size", "samples", "official_gpu", "frames", "width", "height", "evaluator",
                 "upstream_extra", "importable_at_inflate", "custody_allowance", "custody_free", "custody_tools",
                 "official_device", "preview_frames", "stand_ins")

    def __init__(self, name: str, uncompressed_size: int, samples: int, official_gpu: str, frames: int, width: int,
                 height: int,
                 # the evaluator's identity: (path in the checkout, bytes, sha256) of every file that decides a score
                 evaluator: tuple[tuple[str, int, str], ...] = (),
                 # stored beside the pinned files from an upstream folder without git (the declared dependencies
                 # build the evaluator's own Python: `prov upstream env`)
                 upstream_extra: tuple[str, ...] = ("evaluate.sh", "submissions/__init__.py", "pyproject.toml",
                                                    "uv.lock"),
                 # the upstream's files a submission may import while it inflates (21 of the 35 real inflates
                 # import frame_utils, as `python -m submissions.<name>.inflate` from the upstream root); all an
                 # inflate sees of the upstream besides the names file
                 importable_at_inflate: tuple[str, ...] = ("submissions/__init__.py", "frame_utils.py"),
                 # custody: the runtime's information (CUSTODY_COMPRESSOR over its canonical listing and bytes) a
                 # score-bearing replay may carry, calibrated on the 35 real runtimes (largest 33,440 bytes);
                 # what the custody-adjusted rate leaves free; and the reviewed tools (sha256) exempt as binaries
                 custody_allowance: int = 64 << 10, custody_free: int = 8 << 10, custody_tools: tuple[str, ...] = (),
                 # the environment whose exact, sandboxed replay is the top grade: "cuda" (on official_gpu) for the
                 # real contest; "cpu" (Linux x86_64) for a profile meant to be replayed on any lab machine
                 official_device: str = "cuda",
                 preview_frames: tuple[int, ...] = (0, 600, 1199),  # frames a replay keeps as PNG illustrations
                 # pinned LFS files replaced by labelled stand-ins (a STAND-INS.json in the upstream): the profile
                 # is then named NAME+stand-ins, its pins fail on them and nothing replayed against them bears a score
                 stand_ins: tuple[str, ...] = ()) -> None:
        self._init(locals())

    def __repr__(self) -> str:
        return f"Profile({self.name!r})"

    def as_stand_ins(self, files: tuple[str, ...], frames: int, uncompressed_size: int) -> "Profile":
        """This profile as an upstream of stand-ins is judged: by another name, the stand-in clip's
        frames, samples and size (so a run's own checks hold) and those files named."""
        return self.replace(name=self.name + STAND_IN_SUFFIX, frames=frames, samples=frames // 2,
                            uncompressed_size=uncompressed_size, preview_frames=(0, frames // 2, frames - 1),
                            stand_ins=files)

    def named_stand_ins(self, name: str) -> "Profile":
        """NAME+stand-ins as a record names it: this profile with its LFS files marked as stand-ins."""
        return self.replace(name=name, stand_ins=tuple(rel for rel, _, _ in self.evaluator if rel.startswith(LFS_FILES)))

    @property
    def official_environment(self) -> str:
        return f"CUDA on a {self.official_gpu}" if self.official_device == "cuda" else "CPU on Linux x86_64"

    @staticmethod
    def score(posenet: float, segnet: float, rate: float) -> float:
        # exactly evaluate.py's expression and order, in IEEE doubles
        return 100 * segnet + math.sqrt(posenet * 10) + 25 * rate


OFFICIAL = Profile("comma-official-v1", 37_545_489, 600, "Tesla T4", 1200, 1164, 874, evaluator=(
    # upstream commit 11ad728f563d8970929e8947a1cf6124ee6303e4 (CONTEST.md)
    ("evaluate.py", 6_005, "7da71a84ce24286bc6b583470f9bbd25c998971da301320d0d4e9d6fd40baa4b"),
    ("frame_utils.py", 9_345, "d689aca7d263997cb2fb980d6098d503f955e56e8642cd0a04cc437f0ffdab90"),
    ("modules.py", 8_322, "065961ba97023e393e27818760b0dc8efaa8dd53c5d4cc70a2db8ee1b3cf49aa"),
    ("public_test_video_names.txt", 6, "7ff99d08c8351dd8167ec09213b758da5bbb705dedabe361ba881217374029a8"),
    ("models/posenet.safetensors", 55_835_560, "0f3a0874c5c387f990d7b88bd1d7e1f6de35d98b45f2a289989db2c77b9b6576"),
    ("models/segnet.safetensors", 38_502_892, "68956e328d4c5d875389a1a444870e6bac1c052c9986123827af95c07c6991b6"),
    ("videos/0.mkv", 37_545_489, "2611f5f3e186f3529777749f97bd4cce3a208d6b3559e137bd45d256980d2fa9"),
))

_HEX = frozenset(b"0123456789abcdef")
_KEY = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789.-")


def lfs_pointer(data: bytes) -> tuple[str, int] | None:
    """(sha256, size) a git-LFS pointer names; None for anything else. Strict, as the spec writes one:
    LF-terminated `key value` lines, `version` first, each key once, nothing else (a pointer header
    followed by other bytes, a zip for instance, is not a pointer)."""
    if len(data) > 1024 or not data.startswith(LFS_POINTER + b"\n") or not data.endswith(b"\n"):
        return None
    fields = {}
    for line in data[:-1].split(b"\n"):
        key, sep, value = line.partition(b" ")
        if not sep or key in fields or not key or not set(key) <= _KEY or not value.isascii():
            return None
        fields[key] = value
    oid, size = fields.get(b"oid", b""), fields.get(b"size", b"")
    digest = oid[len(b"sha256:"):] if oid.startswith(b"sha256:") else b""
    if len(digest) != 64 or not set(digest) <= _HEX or not size.isdigit() or not size.isascii() \
            or set(fields) - {b"version", b"oid", b"size"} - {k for k in fields if k.startswith(b"ext-")}:
        return None
    return digest.decode(), int(size)


def is_lfs_pointer_file(path: str | os.PathLike) -> bool:
    """A file small enough to be a git-LFS pointer that starts as one: the file was never fetched."""
    if not os.path.isfile(path) or os.path.getsize(path) > 1024:
        return False
    with open(path, "rb") as f:
        return f.read(len(LFS_POINTER)) == LFS_POINTER
