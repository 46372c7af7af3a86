"""The upstream is evidence: the evaluator a replay runs comes from the store, never a live checkout.

`add` stores the blobs of a checkout's commit (HEAD unless named; a modified tracked file is
refused, untracked files are never looked at), each git-LFS pointer resolved to its content and
checked against the pointer's oid and size, or kept as "pointer only" where the content was never
fetched. A folder without git gives the files its profile lists. Never stored: `.git`,
`__pycache__`, `*.pyc`, `*.pth` (bytecode runs instead of its source; a .pth runs at start-up).
Every phase then sees a fresh, read-only export of that tree (re-hashed on the way out), and of it
only the files its view lists.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from provenance.contest import profiles, rules
from provenance.core.digest import Digest, hash_file
from provenance.core.errors import ProvError, VerificationFailed

PROFILE_MARKER = "comma_lab_profile"  # the miniature names its profile; a real checkout has none
NAMES_FILE = profiles.NAMES_FILE
STAND_INS_FILE = "STAND-INS.json"  # labels stand-ins for the LFS files (scripts/official_standins.py)


@dataclass
class StoredUpstream:
    digest: Digest
    commit: str | None
    files: list[str]
    excluded: list[str] = field(default_factory=list)  # tracked, never stored (bytecode, .pth, .git)
    lfs: dict[str, str] = field(default_factory=dict)  # path -> "resolved" | "pointer only"

    def as_json(self) -> dict:
        return {"sha256": self.digest.sha256, "blake3": self.digest.blake3, "commit": self.commit,
                "files": self.files, "excluded": self.excluded, "lfs": self.lfs}


def never_stored(rel: str) -> bool:
    parts = rel.split("/")
    return (any(p in (".git", "__pycache__") for p in parts) or rel.endswith((".pyc", ".pyo", ".pth"))
            or parts[-1] == "")


def detect_profile(upstream: Path, digests: dict[str, str] | None = None) -> rules.Profile:
    """`digests`: path -> sha256 of the upstream's files where the store already has them (an export)."""
    from provenance import contest
    marker = upstream / PROFILE_MARKER
    profile = contest.get_profile(marker.read_text().strip()) if marker.is_file() else rules.OFFICIAL
    return with_stand_ins(profile, upstream, digests)


def with_stand_ins(profile: rules.Profile, upstream: Path, digests: dict[str, str] | None = None) -> rules.Profile:
    """The profile as an upstream of labelled stand-ins (STAND_INS_FILE) is judged: its clip's frames,
    samples and size, and those files named as stand-ins. Only listed files that are present, hold the
    listed bytes and differ from their pins count, the clip among them: a real file is never a stand-in.
    The files are hashed unless `digests` gives their sha256."""
    label = upstream / STAND_INS_FILE
    if label.is_symlink() or not label.is_file():
        return profile
    try:
        doc = json.loads(label.read_text())
        frames, listed = int(doc["frames"]), dict(doc["files"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ProvError(f"upstream: {STAND_INS_FILE} is not a stand-in label ({type(e).__name__})") from None
    pins = {rel: sha for rel, _, sha in profile.evaluator if rel.startswith(profiles.LFS_FILES)}
    stand = []
    for rel, sha in sorted(listed.items()):
        p = upstream / rel
        if rel in pins and not p.is_symlink() and p.is_file():
            seen = digests[rel] if digests and rel in digests else hash_file(p).sha256
            if seen == sha and seen != pins[rel]:
                stand.append(rel)
    clip = next((rel for rel in pins if rel.startswith("videos/")), None)
    if clip not in stand or frames < 2:
        return profile
    size = sum(f.lstat().st_size for f in (upstream / "videos").rglob("*") if f.is_file() and not f.is_symlink())
    return profile.as_stand_ins(tuple(stand), frames, size)


def read_files(store, digest: Digest, names: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of these regular files of a stored upstream, re-hashed as they leave the store; the
    rest of the tree (the weights, the clip) is never read."""
    return {path: store.read_bytes(child) for kind, path, _, child in store.walk_tree(digest.blake3)
            if path in names and kind in ("file", "exec")}


def file_digests(store, digest: Digest) -> dict[str, str]:
    """path -> sha256 of every entry of a stored upstream that is not a directory, from the store's index."""
    return {path: store.info(child).sha256 for kind, path, _, child in store.walk_tree(digest.blake3)
            if kind != "tree"}


# The checkout is untrusted: its .git/config may name programs (core.fsmonitor, filters, hooks). Only
# commands that read the object database run, never one that scans the worktree; and no config of
# the host's own applies.
GIT_SAFE = ["-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", "--no-optional-locks"]
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_NO_LAZY_FETCH": "1",
           "GIT_TERMINAL_PROMPT": "0", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}


def _git(checkout: Path, *args: str, input: bytes | None = None) -> bytes:
    r = subprocess.run(["git", *GIT_SAFE, "-C", str(checkout), *args], capture_output=True, input=input,
                       env=GIT_ENV)
    if r.returncode != 0:
        raise ProvError(f"{checkout}: git {args[0]} failed: {r.stderr.decode(errors='replace').strip()[:200]}")
    return r.stdout


def _safe_rel(checkout: Path, rel: str) -> str:
    """A tree path as git writes it, never one that leaves the stage (a hand-made tree may hold '..')."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise ProvError(f"{checkout}: the commit's tree holds the path {rel!r}, which no checkout could write")
    return rel


def _blob_id(path: Path, algo: str) -> str | None:
    """The git blob id of a worktree file (no git code runs: the checkout's config is not ours)."""
    import hashlib
    h = hashlib.new(algo)
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            data = os.fsencode(os.readlink(path))
            h.update(b"blob %d\0" % len(data) + data)
        else:
            with open(path, "rb") as f:  # streamed: the clip and the weights are tens of megabytes
                h.update(b"blob %d\0" % os.fstat(f.fileno()).st_size)
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _modified(checkout: Path, entries, lfs_dir: Path) -> list[str]:
    """Tracked files whose worktree bytes are not the commit's: the blob's, or for an LFS pointer the
    pointer or the content it names."""
    bad = []
    for mode, kind, oid, rel in entries:
        if kind != "blob":
            continue
        algo = "sha1" if len(oid) == 40 else "sha256"
        if _blob_id(checkout / rel, algo) == oid:
            continue
        pointer = profiles.lfs_pointer(_git(checkout, "cat-file", "blob", oid)) if len(oid) else None
        if pointer is not None and (checkout / rel).is_file() and not (checkout / rel).is_symlink():
            d = hash_file(checkout / rel)
            if (d.sha256, d.size) == pointer:
                continue
        bad.append(rel)
    return bad


def _stage_git(checkout: Path, commit: str | None, stage: Path) -> StoredUpstream:
    rev = _git(checkout, "rev-parse", "--verify", f"{commit or 'HEAD'}^{{commit}}").decode().strip()
    common = Path(_git(checkout, "rev-parse", "--git-common-dir").decode().strip())
    lfs_dir = (common if common.is_absolute() else checkout / common) / "lfs" / "objects"
    entries = []
    for line in _git(checkout, "ls-tree", "-r", "-z", "--full-tree", rev).split(b"\0"):
        if not line:
            continue
        meta, path = line.split(b"\t", 1)
        mode, kind, oid = meta.decode().split()
        entries.append((mode, kind, oid, _safe_rel(checkout, path.decode("utf-8", "surrogateescape"))))
    paths = [p for _, _, _, p in entries]
    if len(set(paths)) != len(paths):
        raise ProvError(f"{checkout}: the commit's tree names a path twice")
    if commit is None:
        dirty = _modified(checkout, entries, lfs_dir)
        if dirty:
            raise ProvError(f"{checkout}: tracked files differ from HEAD ({', '.join(dirty[:5])}"
                            f"{', ...' if len(dirty) > 5 else ''}): commit them, or name --commit")
    out = StoredUpstream(Digest("", "", 0), rev, [])
    out.excluded += sorted(p for _, k, _, p in entries if k == "commit")  # submodules: never stored
    blobs = [(m, o, p) for m, k, o, p in entries if k == "blob"]
    wanted = [(m, o, p) for m, o, p in blobs if not never_stored(p)]
    out.excluded = sorted(out.excluded + [p for _, _, p in blobs if never_stored(p)])
    batch = _git(checkout, "cat-file", "--batch", input="".join(f"{o}\n" for _, o, _ in wanted).encode())
    pos = 0
    for mode, oid, rel in wanted:
        header_end = batch.index(b"\n", pos)
        header = batch[pos:header_end].split()
        if len(header) != 3:  # "<oid> missing": a partial clone, or a damaged object database
            raise ProvError(f"{checkout}: {rel}: the object {oid} is missing from the repository")
        size = int(header[2])
        data = batch[header_end + 1:header_end + 1 + size]
        pos = header_end + 2 + size
        target = stage / rel
        for anc in list(target.parents)[::-1]:  # made here, never through a link staged before
            if len(anc.parts) > len(stage.parts):
                if os.path.lexists(anc) and (os.path.islink(anc) or not anc.is_dir()):
                    raise ProvError(f"{checkout}: the commit's tree puts {rel!r} under a link or a file")
                anc.mkdir(exist_ok=True)
        if mode == "120000":
            os.symlink(data, target)
            out.files.append(rel)
            continue
        pointer = profiles.lfs_pointer(data)
        if pointer is not None:
            sha, want = pointer
            obj = lfs_dir / sha[:2] / sha[2:4] / sha
            if obj.is_file():
                shutil.copyfile(obj, target, follow_symlinks=False)
                d = hash_file(target)  # the copy is what is stored: check the copy
                if d.sha256 != sha or d.size != want:
                    raise VerificationFailed(f"{checkout}: {rel}: the git-LFS object for oid {sha[:12]}... holds "
                                             f"{d.size:,} bytes with sha256 {d.sha256[:12]}..., not what the "
                                             "pointer names")
                out.lfs[rel] = "resolved"
            else:
                target.write_bytes(data)
                out.lfs[rel] = "pointer only"
        else:
            target.write_bytes(data)
        os.chmod(target, 0o755 if mode == "100755" else 0o644)
        out.files.append(rel)
    return out


def _stage_folder(checkout: Path, profile: rules.Profile, stage: Path) -> StoredUpstream:
    out = StoredUpstream(Digest("", "", 0), None, [])
    for rel in sorted({r for r, _, _ in profile.evaluator} | set(profile.upstream_extra) | {STAND_INS_FILE}):
        src = checkout / rel
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise ProvError(f"{src}: not a regular file (an upstream without git stores only its profile's files)")
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, stage / rel)
        os.chmod(stage / rel, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
        out.files.append(rel)
        if profiles.is_lfs_pointer_file(stage / rel):
            out.lfs[rel] = "pointer only"
    return out


def add(store, checkout: str | Path, commit: str | None = None, scratch_base: str | None = None) -> StoredUpstream:
    """Store an upstream checkout's evaluator (see the module's docstring) as a tree of kind upstream."""
    checkout = Path(checkout)
    if not checkout.is_dir():
        raise ProvError(f"{checkout}: not a directory")
    stage = Path(tempfile.mkdtemp(prefix="prov-upstream-", dir=scratch_base))
    try:
        if (checkout / ".git").exists():
            out = _stage_git(checkout, commit, stage)
        else:
            if commit is not None:
                raise ProvError(f"{checkout}: --commit needs a git checkout")
            out = _stage_folder(checkout, detect_profile(checkout), stage)
        if not (stage / "evaluate.py").is_file():
            raise ProvError(f"{checkout}: not an upstream checkout (no evaluate.py)")
        out.digest = store.add_as(stage, "tree", "upstream")
        out.files.sort()
        return out
    finally:
        from provenance.core.files import remove_tree
        remove_tree(stage)


def obtain(store, spec: str | Path, scratch_base: str | None = None) -> tuple[Digest, StoredUpstream | None]:
    """A folder is added first; anything else names a stored upstream tree (digest, prefix or ref)."""
    if os.path.isdir(spec):
        up = add(store, spec, scratch_base=scratch_base)
        return up.digest, up
    try:
        info = store.resolve(str(spec))
    except ProvError:
        raise ProvError(f"--upstream {spec}: neither a folder nor a stored upstream (digest or ref)") from None
    if info.kind != "tree":
        raise ProvError(f"--upstream {spec}: names a {info.kind}, not an upstream tree")
    return Digest(info.sha256, info.blake3, info.size), None


def lfs_pointers(profile: rules.Profile, upstream: Path) -> list[str]:
    """The pinned files that are git-LFS pointers, not the files: no phase can run on them."""
    return [rel for rel, _, _ in profile.evaluator if profiles.is_lfs_pointer_file(upstream / rel)]


def export_read_only(store, digest: Digest, dest: Path) -> None:
    """A fresh copy of the stored upstream (re-hashed on the way out), then no write bit anywhere."""
    store.export(digest.blake3, dest)
    for top, dirs, files in os.walk(dest):
        for n in files:
            p = os.path.join(top, n)
            if not os.path.islink(p):
                os.chmod(p, os.lstat(p).st_mode & 0o555)
    for top, dirs, files in os.walk(dest, topdown=False):
        os.chmod(top, 0o555)
