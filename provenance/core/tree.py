"""prov-tree-v1: Merkle directory trees (encoding in docs/FORMATS.md).

A tree has one structure and two views: the SHA-256 view names children by their
SHA-256 and is hashed with SHA-256; the BLAKE3 view names them by BLAKE3 and is
hashed with BLAKE3. The SHA-256 view needs nothing but hashlib, so a judge can
recompute a runtime tree digest with the stdlib alone. The store keeps the BLAKE3
view, addressed by its own BLAKE3.
"""

from __future__ import annotations

import hashlib
import os
import stat
from stat import S_ISREG, S_IXUSR
from operator import attrgetter

from blake3 import blake3

from provenance.core.digest import Digest, digest_bytes
from provenance.core.errors import ProvError
from provenance.core.frozen import Frozen

KINDS = ("file", "exec", "link", "tree")
_KIND_BYTES = {k: k.encode() for k in KINDS}
HEADER = {"sha256": b"prov-tree-v1 sha256\n", "blake3": b"prov-tree-v1 blake3\n"}
_HEX = set(b"0123456789abcdef")


class TreeError(ProvError):
    """A tree that prov-tree-v1 refuses to record, naming the offending path."""


class Entry(Frozen):
    __slots__ = ("kind", "name", "size", "sha256", "blake3")

    def __init__(self, kind: str, name: str, size: int, sha256: str, blake3: str) -> None:
        self._init(locals())


def check_name(name: bytes, where: str) -> str:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise TreeError(f"{where}: invalid entry name {name!r}")
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise TreeError(f"{where}: name is not valid UTF-8: {name!r}") from None


def check_link(target: bytes, depth: int, where: str) -> None:
    """Reject absolute targets and targets that climb above the tree root (lexically)."""
    if not target:
        raise TreeError(f"{where}: empty symlink target")
    if target.startswith(b"/"):
        raise TreeError(f"{where}: symlink target is absolute ({target.decode('utf-8', 'replace')})")
    try:
        target.decode("utf-8")
    except UnicodeDecodeError:
        raise TreeError(f"{where}: symlink target is not valid UTF-8") from None
    level = depth  # directories between the root and the link's parent
    for part in target.split(b"/"):
        if part == b"..":
            level -= 1
            if level < 0:
                raise TreeError(f"{where}: symlink escapes the tree root ({target.decode()})")
        elif part not in (b"", b"."):
            level += 1


MAX_HOPS = 40  # the kernel's own limit on links followed in one lookup (ELOOP)


def check_link_chain(root: bytes, parent: list[bytes], target: bytes, where: str) -> None:
    """Resolve `target` as the kernel would from directory `parent` (components below `root`), but
    lexically and through the tree's own links only: refuse it if any step climbs above the root,
    meets an absolute link, or loops. So `d -> .` then `esc -> d/d/d/../../../x` is refused, which
    counting `..` alone lets through."""
    stack = list(parent)
    pending = target.split(b"/")[::-1]
    hops = 0
    while pending:
        part = pending.pop()
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not stack:
                raise TreeError(f"{where}: symlink escapes the tree root through its links "
                                f"({target.decode('utf-8', 'replace')})")
            stack.pop()
            continue
        full = os.path.join(root, *stack, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(full).st_mode)
        except OSError:  # missing: the rest is lexical, like a dangling link
            is_link = False
        if not is_link:
            stack.append(part)
            continue
        hops += 1
        if hops > MAX_HOPS:
            raise TreeError(f"{where}: too many levels of symbolic links ({target.decode('utf-8', 'replace')})")
        inner = os.readlink(full)
        if inner.startswith(b"/"):
            raise TreeError(f"{where}: symlink resolves through an absolute link "
                            f"({os.fsdecode(os.path.join(*stack, part) if stack else part)})")
        pending.extend(inner.split(b"/")[::-1])


def check_links_within(root: bytes) -> None:
    """check_link_chain for every symlink under a materialized tree (export's last gate)."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parent = [] if rel == "." else rel.split(b"/")
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                check_link_chain(root, parent, os.readlink(full), os.fsdecode(full))


def encode(entries: list[Entry], algo: str) -> bytes:
    """Canonical bytes of one view. `entries` must already be sorted by UTF-8 name bytes."""
    kinds, digest = _KIND_BYTES, attrgetter(algo)
    return HEADER[algo] + b"".join([b"%s %d %s %s\0" % (kinds[e.kind], e.size, digest(e).encode(), e.name.encode())
                                    for e in entries])


def sort_entries(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: e.name.encode())


def tree_digest(entries: list[Entry]) -> tuple[Digest, bytes]:
    """(digest of the tree, its BLAKE3-view bytes for storage)."""
    b3_view = encode(entries, "blake3")
    return Digest(hashlib.sha256(encode(entries, "sha256")).hexdigest(),
                  blake3(b3_view).hexdigest(),
                  sum(e.size for e in entries)), b3_view


def view_of(rows: list[tuple[str, str, int, str]], child_sha256) -> Digest | None:
    """A stored tree's digest (its SHA-256 view with it) from its parsed rows, each child's SHA-256
    given by `child_sha256(kind, name, blake3)`; None where that gives None (a child not there). The
    one rebuild of the SHA-256 view: fsck, fsck --repair and a batch's fetch use it."""
    entries = []
    for kind, name, size, child in rows:
        sha = child_sha256(kind, name, child)
        if sha is None:
            return None
        entries.append(Entry(kind, name, size, sha, child))
    return tree_digest(entries)[0]


def parse(data: bytes, where: str = "tree") -> list[tuple[str, str, int, str]]:
    """Strictly parse a stored BLAKE3 view into (kind, name, size, blake3) rows."""
    head = HEADER["blake3"]
    if not data.startswith(head):
        raise TreeError(f"{where}: not a prov-tree-v1 object")
    rows, pos, prev = [], len(head), None
    while pos < len(data):
        end = data.find(b"\0", pos)
        if end < 0:
            raise TreeError(f"{where}: truncated entry")
        parts = data[pos:end].split(b" ", 3)
        if len(parts) != 4 or parts[0].decode("ascii", "replace") not in KINDS:
            raise TreeError(f"{where}: malformed entry")
        kind, size, hexd, name = parts
        if not size.isdigit() or (len(size) > 1 and size[0:1] == b"0") or len(hexd) != 64 \
                or not set(hexd) <= _HEX:
            raise TreeError(f"{where}: malformed entry")
        if prev is not None and name <= prev:
            raise TreeError(f"{where}: entries not strictly sorted")
        rows.append((kind.decode(), check_name(name, where), int(size), hexd.decode()))
        prev, pos = name, end + 1
    return rows


# -- walking a directory -----------------------------------------------------------------

TYPE_CHECKING = False  # collections.abc's import (collections, operator, reprlib) stays off the verify path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    FileDigester = Callable[[bytes, os.stat_result], Digest]
    BlobSink = Callable[[bytes, Digest], None]
    TreeSink = Callable[[bytes, Digest, list[Entry]], None]
    # after a directory's entries are digested: (its path, its lstat, its sorted entry names, their lstat)
    DirSeen = Callable[[bytes, os.stat_result, list[bytes], list[os.stat_result]], None]


def walk(root: str | os.PathLike, file_digest: FileDigester,
         put_link: BlobSink | None = None, put_tree: TreeSink | None = None,
         allow_unsafe_links: bool = False, seen: DirSeen | None = None) -> Digest:
    """Digest a directory bottom-up; callbacks store blobs and trees as they are made, and `seen`
    hears what lstat said of every directory's entries, as the walk used them."""
    root_b = os.fsencode(root)
    st = os.lstat(root_b)
    if not stat.S_ISDIR(st.st_mode):
        raise TreeError(f"{os.fsdecode(root_b)}: not a directory")
    return _walk_dir(root_b, 0, file_digest, put_link, put_tree, allow_unsafe_links, root_b, [], st, seen)


def _walk_dir(path: bytes, depth: int, file_digest, put_link, put_tree, unsafe,
              root: bytes = b"", parent: list[bytes] | None = None,
              dir_st: os.stat_result | None = None, seen: DirSeen | None = None) -> Digest:
    where = os.fsdecode(path)
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise TreeError(f"{where}: cannot list directory ({e.strerror})") from None
    entries = []
    stats = [] if seen is not None else None
    base = path if path.endswith(b"/") else path + b"/"  # os.path.join, without its cost a file
    for raw in names:  # per file, this loop is most of re-adding an unchanged tree: errors only decode
        full = base + raw
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = check_name(raw, os.fsdecode(full))
        st = os.lstat(full)
        if stats is not None:
            stats.append(st)
        mode = st.st_mode
        if S_ISREG(mode):
            d = file_digest(full, st)
            entries.append(Entry("exec" if mode & S_IXUSR else "file", name, d.size, d.sha256, d.blake3))
            continue
        fwhere = os.fsdecode(full)
        check_name(raw, fwhere)
        if stat.S_ISLNK(mode):
            target = os.readlink(full)
            if not unsafe:
                check_link(target, depth, fwhere)
                check_link_chain(root or path, parent or [], target, fwhere)
            d = digest_bytes(target)
            if put_link:
                put_link(target, d)
            entries.append(Entry("link", name, d.size, d.sha256, d.blake3))
        elif stat.S_ISDIR(mode):
            d = _walk_dir(full, depth + 1, file_digest, put_link, put_tree, unsafe, root, [*(parent or []), raw],
                          st, seen)
            entries.append(Entry("tree", name, d.size, d.sha256, d.blake3))
        else:
            what = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                    else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
            raise TreeError(f"{fwhere}: {what} not allowed in a tree")
    d, b3_view = tree_digest(entries)  # names came sorted from listdir bytes
    if seen is not None:
        seen(path, dir_st, names, stats)
    if put_tree:
        put_tree(b3_view, d, entries)
    return d


def iter_files(root: bytes, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    """(relative posix path, absolute path) of every regular file under root, sorted."""
    for raw in sorted(os.listdir(root)):
        full = os.path.join(root, raw)
        rel = prefix + raw.decode("utf-8", "surrogateescape")
        st = os.lstat(full)
        if stat.S_ISDIR(st.st_mode):
            yield from iter_files(full, rel + "/")
        elif stat.S_ISREG(st.st_mode):
            yield rel, full


def hash_path(path: str | os.PathLike, progress=None, allow_unsafe_links: bool = False) -> tuple[str, Digest]:
    """("file", digest) of a regular file or ("tree", digest) of a directory (prov-tree-v1); stores
    nothing. A path that is neither, or a file that cannot be read, is the caller's bad input."""
    import stat
    from provenance.core.digest import hash_file
    try:
        st = os.lstat(path)
    except OSError as e:
        raise ProvError(f"{path}: {e.strerror}") from None
    if progress is not None and stat.S_ISREG(st.st_mode):
        progress.total = st.st_size
    if stat.S_ISREG(st.st_mode):
        try:
            return "file", hash_file(path, progress)
        except OSError as e:
            raise ProvError(f"{path}: cannot read file ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        def file_digest(p, s):
            try:
                return hash_file(p, progress)
            except OSError as e:
                raise TreeError(f"{os.fsdecode(p)}: cannot read file ({e.strerror})") from None
        return "tree", walk(path, file_digest, allow_unsafe_links=allow_unsafe_links)
    raise ProvError(f"{path}: not a regular file or directory")


def listing(root: str | os.PathLike) -> tuple[Digest, list[dict]]:
    """(digest, listing) of a tree: every entry by its path, directories before what they hold,
    names in prov-tree-v1 order; files and links with size, sha256 and blake3, links with their
    target. A release signs it, so a checker can name each path that differs."""
    from provenance.core.digest import hash_file
    from provenance.core.tree_digest import Refused
    seen: dict[bytes, Digest] = {}

    def file_digest(p, s):
        seen[p] = d = hash_file(p)
        return d
    d = walk(root, file_digest)
    out: list[dict] = []

    def visit(path: bytes, prefix: str) -> None:
        for raw in sorted(os.listdir(path)):
            full, rel = path + b"/" + raw, prefix + raw.decode("utf-8")
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                out.append({"path": rel, "type": "tree"})
                visit(full, rel + "/")
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(full)
                ld = digest_bytes(target)
                out.append({"path": rel, "type": "link", "size": ld.size, "sha256": ld.sha256, "blake3": ld.blake3,
                            "target": target.decode("utf-8", "replace")})
            else:
                fd = seen.get(full)
                if fd is None:
                    raise TreeError(f"{os.fsdecode(full)}: appeared while the tree was read")
                out.append({"path": rel, "type": "exec" if st.st_mode & S_IXUSR else "file", "size": fd.size,
                            "sha256": fd.sha256, "blake3": fd.blake3})
    visit(os.fsencode(root).rstrip(b"/") or b"/", "")
    try:
        again = listing_digest(out)
    except Refused as e:
        raise TreeError(f"{os.fsdecode(root)}: {e}") from None
    if again != (d.sha256, d.blake3):
        raise TreeError(f"{os.fsdecode(root)}: changed while it was read")
    return d, out


def listing_digest(entries: list[dict]) -> tuple[str, str]:
    """(sha256, blake3) prov-tree-v1 digests a listing describes; tree_digest.Refused if it is not one tree."""
    from provenance.core.tree_digest import listing_sha256
    return (listing_sha256(entries),
            listing_sha256(entries, "blake3", lambda rows: blake3(rows).hexdigest()))
