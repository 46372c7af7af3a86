"""The sandbox policy, in one home: what each phase of a replay may see and write, as allow-lists
drawn from the contest profile (docs/DESIGN.md, the replay's trust model). The sandbox
(replay.sandbox) mounts a `View` and nothing else; the record keeps each view's `describe`."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from provenance.contest.profiles import NAMES_FILE, Profile


@dataclass(frozen=True)
class View:
    """What one phase sees besides the system, as an allow-list: the `upstream` files it lists (each
    bound alone, read-only), of the submission all of its runtime copy ("all"), only archive.zip and
    inflated/ ("outputs") or nothing ("none"), `writable` subdirectories of the runtime copy, and
    (`out`) its own output directory. A file that no list names is in no phase."""
    name: str
    upstream: tuple[str, ...] = ()
    submission: str = "all"
    writable: tuple[str, ...] = ()
    out: bool = False
    write_cap: int | None = None  # bytes the phase may leave in what it writes

    def seen(self, upstream: Path) -> list[str]:
        """The listed files the upstream holds as regular files, under real directories: bwrap would
        bind a link's target, so a listed name that is a link (frame_utils.py -> videos/0.mkv) is
        in no phase."""
        return sorted(r for r in self.upstream if _plain_file(upstream, r))

    def describe(self, upstream: Path, digests: dict[str, str]) -> dict:
        """In symbolic paths. `digests` (path -> sha256 of every file of the stored upstream, as the
        store knows them: the export was re-hashed on its way out) gives what it saw and did not."""
        import hashlib
        import json
        seen = self.seen(upstream)
        listing = [[r, digests[r]] for r in seen]
        sub = {"all": ["submission/ (read-only)"], "outputs": ["submission/archive.zip (read-only)",
                                                                 "submission/inflated/ (read-only)"]}.get(self.submission, [])
        return {"sees": [f"upstream/{r}" for r in seen] + sub
                + ["/usr, /etc (loader files), python (read-only)", "/tmp (private tmpfs)"],
                "writes": [f"submission/{d}/" for d in self.writable] + (["output/"] if self.out else []),
                "hidden": [f"upstream/{r}" for r in sorted(set(digests) - set(seen))],
                "write_cap": self.write_cap,
                "sees_sha256": hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()}


def _plain_file(root: Path, rel: str) -> bool:
    p = root
    parts = rel.split("/")
    for i, part in enumerate(parts):
        p = p / part
        try:
            mode = os.lstat(p).st_mode
        except OSError:
            return False
        if not (stat.S_ISREG(mode) if i == len(parts) - 1 else stat.S_ISDIR(mode)):
            return False
    return True


def phase_views(profile: Profile, limits, inflate_writes: int) -> dict[str, View]:
    """What each phase sees and writes, from the profile's own lists: its names file and what a
    submission may import at inflate, its pinned evaluator files at evaluate. `limits` is the
    phase limits (replay.limits.Limits): evaluate may write its `evaluate_writes`."""
    pinned = tuple(r for r, _, _ in profile.evaluator) or (NAMES_FILE, "evaluate.py")
    return {"probe": View("probe", submission="none", write_cap=0),
            "inflate": View("inflate", upstream=(NAMES_FILE,) + profile.importable_at_inflate,
                            writable=("archive", "inflated"), write_cap=inflate_writes),
            "evaluate": View("evaluate", upstream=pinned, submission="outputs", out=True,
                             write_cap=limits.evaluate_writes)}
