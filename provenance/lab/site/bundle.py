"""The site's bundle: files written once into a fresh directory (hard-linked from the last bundle
where a file is unchanged, and a run's page carried when its inputs did not change), each
scanned by the hygiene rules as it is written; `_previous` reads what the last bundle published."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from provenance.core.errors import ProvError
from provenance.lab.site.hygiene import _scan_bytes
from provenance.store.durable import write_all


def _create(path: str, data: bytes) -> None:
    """A new file holding data: three system calls (open() adds an fstat, an isatty ioctl and a
    seek, each paid 20k times over by a site of 10k runs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        write_all(fd, memoryview(data))
    finally:
        os.close(fd)


class _Bundle:
    """The bundle being built, in its temporary directory. Each file is hashed and hygiene-scanned
    from the very bytes written (not read back), unless the last bundle (`published`, built under
    the same rules) published those bytes at that path; what arrives otherwise (copied) is hashed
    and scanned by the final pass over the directory. A forked worker writes through a `child()`
    whose record the parent `merge()`s."""

    def __init__(self, root: Path, published: dict[str, str]):
        self.root, self.published, self.sha, self.scanned, self.violations = root, published, {}, set(), []
        self.size: dict[str, int] = {}
        self._dirs: set[str] = set()

    def child(self) -> "_Bundle":
        b = _Bundle(self.root, self.published)
        b._dirs = self._dirs
        return b

    def record(self) -> tuple:
        """What this bundle wrote, for its parent's merge()."""
        return self.sha, self.size, self.scanned, self.violations

    def merge(self, sha: dict[str, str], size: dict[str, int], scanned: set[str], violations: list) -> None:
        self.sha.update(sha)
        self.size.update(size)
        self.scanned |= scanned
        self.violations += violations

    def _parent_dir(self, rel: str) -> str:
        path = os.path.join(self.root, rel)
        d = os.path.dirname(path)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)
        return path

    def write(self, rel: str, data: bytes, scan: bool = True) -> str:
        path = self._parent_dir(rel)
        try:
            _create(path, data)
        except FileExistsError:  # a hard link to the last bundle's file, maybe: never written through
            os.unlink(path)
            _create(path, data)
        return self._wrote(rel, data, scan)

    def write_once(self, rel: str, data: bytes) -> str:
        """write() a content-addressed file unless it is there (another worker's, or carried over):
        the bytes are the same, and it is scanned once, by whoever wrote it."""
        try:
            _create(self._parent_dir(rel), data)
        except FileExistsError:
            return hashlib.sha256(data).hexdigest()
        return self._wrote(rel, data, True)

    def _wrote(self, rel: str, data: bytes, scan: bool) -> str:
        self.sha[rel] = sha = hashlib.sha256(data).hexdigest()
        self.size[rel] = len(data)
        if scan:
            if self.published.get(rel) != sha:
                self.violations += _scan_bytes(rel, data)
            self.scanned.add(rel)
        return sha

    def keep(self, old_root: Path, rel: str, sha: str) -> bool:
        """Carry a published file over (a hard link) when its bytes are still the ones the last bundle
        listed: the caller skips its scan only because that bundle published (and scanned) those bytes."""
        try:
            old = os.path.join(old_root, rel)
            with open(old, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != sha:
                return False
            os.link(old, self._parent_dir(rel))
        except OSError:
            return False
        self.sha[rel], self.size[rel] = sha, len(data)
        return True


def _carry_page(out: Path, bundle: _Bundle, entry: dict, page_key: str, published: dict, evidence: list) -> bool:
    """Link the last bundle's page for this run (and its frames) when it was made from the same inputs."""
    page = entry["view"]["page"]
    if entry.get("page_key") != page_key or published.get(page) != entry.get("page_sha"):
        return False
    for e in entry.get("frame_evidence", []):
        if not (bundle.root / e["path"]).exists() and not bundle.keep(out, e["path"], e["sha256"]):
            return False
    if not bundle.keep(out, page, entry["page_sha"]):
        return False
    evidence.extend(e for e in entry.get("frame_evidence", []) if e not in evidence)
    return True


def _previous(out: Path, rules: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """The record files and all files (path -> sha256) of the bundle at `out`, if it was built under
    the same hygiene rules: a file published then, with the same bytes now, was scanned then."""
    try:
        from provenance.core import canonical
        doc = canonical.load_file(out / "public_bundle_manifest.json", "public_bundle_manifest.json")
        listed = set((out / "public_bundle_manifest.json").read_text(encoding="utf-8").splitlines())
    except (ProvError, OSError, UnicodeDecodeError):
        return {}, {}, set()
    if not isinstance(doc, dict) or doc.get("hygiene_rules_sha256") != rules or not isinstance(doc.get("files"), list):
        return {}, {}, set()
    files = {e["path"]: e["sha256"] for e in doc["files"]
             if isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str)}
    return {p: sha for p, sha in files.items() if p.startswith("evidence/records/")}, files, listed
