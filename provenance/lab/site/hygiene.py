"""The site's last gate: every published file scanned by the public-text hygiene rules, pixels alone
in images, and `check_site` for a bundle already on disk (the same scan, and every file against
the bundle's manifest)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from provenance.core import canonical, sanitize
from provenance.core.errors import VerificationFailed


class HygieneError(VerificationFailed):
    """The bundle would publish something the hygiene rules forbid (exit 1)."""


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _listing(root: Path) -> list[str]:
    """Every file under root as a relative POSIX path, sorted (os.walk: 20k files, no pathlib per entry)."""
    out = []
    base = len(str(root)) + 1
    for dirpath, _dirs, names in os.walk(root):
        out.extend(os.path.join(dirpath, n)[base:] for n in names)
    return sorted(out)


def _pixels_only(data: bytes) -> bool:
    """A PNG of nothing but its header, pixel data and end (IHDR, IDAT, IEND): no text chunk to leak."""
    import struct
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    pos = 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind not in (b"IHDR", b"IDAT", b"IEND"):
            return False
        pos += 12 + length
        if kind == b"IEND":
            return pos == len(data)
    return False


def _hashes_only(rel: str, data: bytes) -> bool:
    """A hash tile of the published log (log/tile/<L>/<N>[.p/<W>]) of exactly W SHA-256 hashes: outputs
    nobody chooses, so no text; its entry bundles and checkpoint are scanned as text."""
    from provenance.log.tiles import hash_tile_width
    width = hash_tile_width(rel[len("log/"):]) if rel.startswith("log/tile/") else None
    return width is not None and len(data) == 32 * width


def _scan_bytes(rel: str, data: bytes, listed: set[str] = frozenset()) -> list:
    if rel.endswith(".png") and _pixels_only(data):
        return []  # pixels carry no text: the scan would read compressed bytes as words
    if _hashes_only(rel, data):
        return []  # random bytes would read as words too ("~/" in a tile looked like a home path)
    text = data.decode("utf-8", "replace")
    if rel == "public_bundle_manifest.json" and listed:
        text = "\n".join("" if ln in listed else ln for ln in text.split("\n"))  # line numbers kept
    return sanitize.scan_text(rel, text)


def _scan(root: Path, skip: set[str], listed: set[str]) -> list:
    """The hygiene scan, once per published file; a file the last bundle published with the same
    bytes (scanned then, under the same rules) is not scanned again, nor a line of the file
    manifest that the last manifest held (one file a line: only the new files' lines are read)."""
    out = []
    for rel in _listing(root):
        if rel in skip or not (root / rel).is_file():
            continue
        out += _scan_bytes(rel, (root / rel).read_bytes(), listed)
    return out


def check_site(root: str | Path) -> list[str]:
    """Re-scan a bundle and re-check its manifest: every problem as one line."""
    root = Path(root)
    problems = [str(v) for v in _scan(root, set(), set())]  # the same scan the build ran
    man = root / "public_bundle_manifest.json"
    if not man.is_file():
        return problems + ["public_bundle_manifest.json: missing"]
    doc = canonical.load_file(man, "public_bundle_manifest.json")
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str) for f in files):
        return problems + ["public_bundle_manifest.json: not a bundle manifest (files: [{path, sha256}])"]
    listed = {f["path"]: f["sha256"] for f in files}
    actual = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"public_bundle_manifest.json"}
    for path in sorted(actual | set(listed)):
        if path not in listed:
            problems.append(f"{path}: not listed in public_bundle_manifest.json")
        elif path not in actual:
            problems.append(f"{path}: listed but missing")
        elif _sha(root / path) != listed[path]:
            problems.append(f"{path}: sha256 differs from public_bundle_manifest.json")
    return problems
