"""`prov log publish`: the store's log written out as C2SP tlog-tiles (formats: `log.tiles`), up to its
newest signed checkpoint, so anyone can mirror and audit it with static files.

Incremental: the folder's own checkpoint says how far it was published; only the tiles the new leaves
touch are written (full tiles never change; partial tiles of earlier checkpoints stay, as the spec
requires), then made durable together (one syncfs), then the checkpoint is replaced. A crash leaves
the old checkpoint over a superset of its tiles. A folder holding another log, a newer state or a
fork of this one is refused before anything is written."""

from __future__ import annotations

import os

from provenance.core.errors import ProvError, VerificationFailed
from provenance.core.files import write_atomic
from provenance.log import tiles
from provenance.log.checkpoint import parse_checkpoint
from provenance.log.proofs import LogProofError
from provenance.log.translog import NODE_SHIFT, open_log


def _published(out: str) -> tuple[str, object] | None:
    """The folder's checkpoint, as text and parsed; None where it has none."""
    path = os.path.join(out, "checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ProvError(f"{path}: cannot read ({e})") from None
    try:
        return text, parse_checkpoint(text)
    except LogProofError as e:
        raise ProvError(f"{path}: not a checkpoint ({e}); publish into an empty folder") from None


def _parent(out: str, rel: str, made: set) -> str:
    """The folder `rel` goes in, made as needed, never through a link: what is written stays inside OUT."""
    parent = out
    for part in rel.split("/")[:-1]:
        parent = os.path.join(parent, part)
        if parent in made:
            continue
        try:
            os.mkdir(parent)
        except FileExistsError:
            import stat
            if not stat.S_ISDIR(os.lstat(parent).st_mode):
                raise ProvError(f"{parent}: not a folder (a link, or a file): refusing to publish through it") from None
        made.add(parent)
    return parent


def _stage(parent: str, name: str, data: bytes) -> str:
    """`data` in a new temp file beside `name`, never through a link; its path."""
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # a dead run's, or a planted link: removed, never written through
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return tmp


def _write(out: str, rel: str, data: bytes, made: set) -> None:
    parent = _parent(out, rel, made)
    name = rel.rsplit("/", 1)[-1]
    os.replace(_stage(parent, name, data), os.path.join(parent, name))  # a reader sees a whole tile or none


GROUP = 64  # tiles read from the store in one query: few round trips, bounded memory


def publish(store, out: str, progress=None) -> dict:
    """Write (or extend) OUT as the tiles of this store's log at its newest signed checkpoint."""
    log = open_log(store)
    db = log.db
    row = db.execute("SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    if row is None:
        raise ProvError("the log has no signed checkpoint to publish: prov log checkpoint --key LOG_KEY first")
    size, note = row
    origin = log.origin()
    published = _published(out)
    old = published[1] if published else None
    start = 0
    if old is not None:
        if old.origin != origin:
            raise ProvError(f"{out}: holds the log {old.origin}, not {origin}")
        if old.size > size:
            raise ProvError(f"{out}: already holds size {old.size}, beyond this log's newest checkpoint ({size})")
        kept = db.execute("SELECT note FROM log_checkpoints WHERE size=?", (old.size,)).fetchone()
        if (kept is None or parse_checkpoint(kept[0]).body != old.body) and log.root(old.size) != old.root:
            raise VerificationFailed(f"{out}: its checkpoint (size {old.size}) is not a state of this log: a fork")
        start = old.size
    todo = tiles.tiles_between(start, size)
    written = 0
    made: set = set()
    if todo:
        os.makedirs(out, exist_ok=True)
    group: list = []
    for t in todo:  # consecutive tiles of one level, read from the store together
        if group and (t[0] != group[0][0] or len(group) == GROUP):
            written += _write_group(db, out, group, made, start, progress)
            group = []
        group.append(t)
    if group:
        written += _write_group(db, out, group, made, start, progress)
    if written:
        from provenance.store.durable import syncfs
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            tmp = _stage(out, "checkpoint", note.encode("utf-8"))
            syncfs(fd)  # every tile, and the checkpoint to come, durable before the checkpoint names them
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(out, "checkpoint"))  # not yet durable after a crash: the old one, still true
    elif published is None or published[0] != note:  # an empty log, or cosignatures added since
        write_atomic(os.path.join(out, "checkpoint"), note.encode("utf-8"))
    return {"out": out, "origin": origin, "size": size, "from": start, "files": written,
            "signatures": len(parse_checkpoint(note).signatures)}


def _write_group(db, out: str, group: list, made: set, start: int, progress) -> int:
    """Tiles of one level, consecutive: their hashes (and, at level 0, entries) in one query each."""
    level = group[0][0]
    height = tiles.HEIGHT * level
    lo = group[0][1] * tiles.WIDTH
    hi = group[-1][1] * tiles.WIDTH + group[-1][2]
    hashes = [r[0] for r in db.execute("SELECT hash FROM log_nodes WHERE id >= ? AND id < ? ORDER BY id",
                                       (height << NODE_SHIFT | lo, height << NODE_SHIFT | hi))]
    if len(hashes) != hi - lo:
        raise ProvError(f"log: nodes at height {height} missing from the store (prov log verify)")
    entries = [r[0] for r in db.execute("SELECT entry FROM log_leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                                        (lo, hi))] if level == 0 else None
    written = 0
    for _, n, width in group:
        a = n * tiles.WIDTH - lo
        _write(out, tiles.tile_path(level, n, width), b"".join(hashes[a:a + width]), made)
        written += 1
        if entries is not None:
            _write(out, tiles.tile_path(tiles.ENTRIES, n, width), tiles.bundle(entries[a:a + width]), made)
            written += 1
            if progress:
                progress(width - max(0, start - n * tiles.WIDTH))
    return written
