"""What a monitor or a witness saw before: per log origin, the newest checkpoint it accepted. One JSON
file, held under an exclusive lock from read to write (two runs at once could otherwise each accept one
side of a fork), replaced atomically."""

from __future__ import annotations

import fcntl
import json
import os

from provenance.core.errors import ProvError
from provenance.core.files import write_json
from provenance.log.checkpoint import Checkpoint, parse_checkpoint
from provenance.log.proofs import LogProofError


class Seen:
    """`with Seen(path) as seen:` ... `seen.get(origin)`, `seen.accept(checkpoint note, **extra)`."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)  # a link to the state is the state: one lock, one file
        self.doc: dict = {}
        self._lock = None
        self._dirty = False

    def __enter__(self) -> "Seen":
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise ProvError(f"{self.path}: its folder does not exist")
        self._lock = open(self.path + ".lock", "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self.doc = self._read()
        except BaseException:
            self._release()
            raise
        return self

    def _read(self) -> dict:
        if not os.path.exists(self.path):
            return {"logs": {}}
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise ProvError(f"{self.path}: unreadable state ({e})") from None
        logs = doc.get("logs") if isinstance(doc, dict) else None
        if not isinstance(logs, dict) or not all(isinstance(v, dict) and isinstance(v.get("checkpoint"), str)
                                                 for v in logs.values()):
            raise ProvError(f"{self.path}: not a state file of prov log audit or prov log witness")
        return doc

    def get(self, origin: str) -> tuple[Checkpoint, dict] | None:
        entry = self.doc["logs"].get(origin)
        if entry is None:
            return None
        try:
            cp = parse_checkpoint(entry["checkpoint"])
        except LogProofError as e:
            raise ProvError(f"{self.path}: the checkpoint kept for {origin} does not parse ({e})") from None
        if cp.origin != origin:
            raise ProvError(f"{self.path}: the checkpoint kept for {origin} is of {cp.origin}")
        return cp, entry

    def accept(self, note: str, **extra) -> None:
        cp = parse_checkpoint(note)
        self.doc["logs"][cp.origin] = {"size": cp.size, "checkpoint": note, **extra}
        self._dirty = True

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._dirty:
                write_json(self.path, self.doc)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None
