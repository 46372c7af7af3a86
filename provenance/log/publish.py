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


def _published(out: str) -> object | None:
    path = os.path.join(out, "checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ProvError(f"{path}: cannot read ({e})") from None
    try:
        return parse_checkpoint(text)
    except LogProofError as e:
        raise ProvError(f"{path}: not a checkpoint ({e}); publish into an empty folder") from None


def _write(out: str, rel: str, data: bytes) -> None:
    path = os.path.join(out, rel)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # a reader sees a whole tile or none


def publish(store, out: str, progress=None) -> dict:
    """Write (or extend) OUT as the tiles of this store's log at its newest signed checkpoint."""
    log = open_log(store)
    cps = log.checkpoints()
    if not cps:
        raise ProvError("the log has no signed checkpoint to publish: prov log checkpoint --key LOG_KEY first")
    size, note = cps[-1]
    origin = log.origin()
    old = _published(out)
    start = 0
    if old is not None:
        if old.origin != origin:
            raise ProvError(f"{out}: holds the log {old.origin}, not {origin}")
        if old.size > size:
            raise ProvError(f"{out}: already holds size {old.size}, beyond this log's newest checkpoint ({size})")
        if log.root(old.size) != old.root:
            raise VerificationFailed(f"{out}: its checkpoint (size {old.size}) is not a state of this log: a fork")
        start = old.size
    todo = tiles.tiles_between(start, size)
    db = store.db
    written = 0
    for level, n, width in todo:
        height = tiles.HEIGHT * level
        first = n * tiles.WIDTH
        rows = db.execute("SELECT hash FROM log_nodes WHERE id >= ? AND id < ? ORDER BY id",
                          (height << NODE_SHIFT | first, height << NODE_SHIFT | (first + width))).fetchall()
        if len(rows) != width:
            raise ProvError(f"log: nodes at height {height} missing from the store (prov log verify)")
        _write(out, tiles.tile_path(level, n, width), b"".join(r[0] for r in rows))
        written += 1
        if level == 0:
            entries = db.execute("SELECT entry FROM log_leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                                 (first, first + width)).fetchall()
            _write(out, tiles.tile_path(tiles.ENTRIES, n, width), tiles.bundle([e[0] for e in entries]))
            written += 1
            if progress:
                progress(width - max(0, start - first))
    if written:
        from provenance.store.durable import syncfs
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs(fd)  # every tile durable before a checkpoint can name them
        finally:
            os.close(fd)
    write_atomic(os.path.join(out, "checkpoint"), note.encode("utf-8"))
    return {"out": out, "origin": origin, "size": size, "from": start, "files": written,
            "signatures": len(parse_checkpoint(note).signatures)}
