"""`prov log audit`: a monitor of a published log (C2SP tlog-tiles, from a folder or over HTTP).

It checks the checkpoint's signatures against the log keys it trusts, recomputes the whole tree from
the entry bundles (checking every hash tile on the way), and holds the result against the checkpoints it
saw before (`--since`, and its state file): an older state must be a prefix of this one, with the same
root recomputed from the same leaves. A fork or a rollback is reported with both checkpoints, the
evidence a judge or a witness needs; the state only ever moves forward."""

from __future__ import annotations

import contextlib
import os

from provenance.core.errors import ProvError
from provenance.log import tiles
from provenance.log.checkpoint import verify_checkpoint
from provenance.log.proofs import LogProofError

LIMITS = {"checkpoint": 1 << 20}  # a tile or bundle is bounded by its width; a checkpoint by this
BUNDLE_MAX = tiles.WIDTH * (2 + tiles.MAX_ENTRY)


class FolderSource:
    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise ProvError(f"{root}: not a folder of published tiles, nor an http(s) URL")
        self.root = root

    def fetch(self, rel: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, rel), "rb") as f:
                return f.read(LIMITS.get(rel, BUNDLE_MAX) + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise ProvError(f"{self.root}/{rel}: {e.strerror}") from None


class HttpSource:
    """GETs over one kept-alive connection; 404 is a missing tile, any other failure is an error."""

    def __init__(self, url: str) -> None:
        from urllib.parse import quote, urlsplit
        try:
            u = urlsplit(url)
            u.port  # raises on a port out of range
        except ValueError as e:
            raise ProvError(f"{url}: not a URL ({e})") from None
        if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
            raise ProvError(f"{url}: not an http(s) URL prefix")
        self.url, self.u = url, u
        self.prefix = quote(u.path.rstrip("/"), safe="/%") + "/"
        self.conn = None

    def _connect(self):
        import http.client
        cls = http.client.HTTPSConnection if self.u.scheme == "https" else http.client.HTTPConnection
        return cls(self.u.hostname, self.u.port, timeout=60)

    def fetch(self, rel: str) -> bytes | None:
        import http.client
        for attempt in (0, 1):  # a kept-alive connection the server closed is retried once, fresh
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request("GET", self.prefix + rel, headers={"Accept-Encoding": "gzip, identity"})
                r = self.conn.getresponse()
                body = r.read(LIMITS.get(rel, BUNDLE_MAX) + 1)
                if r.will_close:
                    self.conn.close()
                    self.conn = None
            except (OSError, http.client.HTTPException, UnicodeError, ValueError) as e:
                self.conn.close()
                self.conn = None
                if attempt:
                    raise ProvError(f"{self.url}: {rel}: {e}") from None
                continue
            if r.status == 404:
                return None
            if r.status != 200:
                raise ProvError(f"{self.url.rstrip('/')}/{rel}: HTTP {r.status}")
            if r.getheader("Content-Encoding", "identity").lower() == "gzip":
                import zlib
                try:
                    body = zlib.decompressobj(wbits=31).decompress(body, LIMITS.get(rel, BUNDLE_MAX) + 1)
                except zlib.error as e:
                    raise ProvError(f"{self.url.rstrip('/')}/{rel}: bad gzip body ({e})") from None
            return body
        return None


def open_source(where: str):
    return HttpSource(where) if where.startswith(("http://", "https://")) else FolderSource(where)


MAX_ENTRIES = 1 << 32  # a hostile log can claim any size and serve one valid tile for it forever


def audit(where: str, trusted: dict, threshold: int = 1, since_note: str | None = None,
          state: str | None = None, progress=None, origins=(), max_entries: int = MAX_ENTRIES) -> dict:
    """Audit the published log at WHERE. Returns the report; `ok` is False on any problem, fork or rollback,
    or a log other than `origins` (where any is given)."""
    src = open_source(where)
    raw = src.fetch("checkpoint")
    if raw is None:
        raise ProvError(f"{where}: no checkpoint (is it a published log?)")
    if len(raw) > LIMITS["checkpoint"]:
        raise ProvError(f"{where}/checkpoint: larger than {LIMITS['checkpoint']} bytes")
    try:
        note = raw.decode("utf-8")
        cp, good = verify_checkpoint(note, trusted)
    except (UnicodeDecodeError, LogProofError) as e:
        return _report(where, None, None, [f"checkpoint: {e}"])
    if len(good) < threshold:
        return _report(where, cp, note, [f"checkpoint: signed by {len(good)} of {threshold} required log key(s)"])
    if origins and cp.origin not in origins:
        return _report(where, cp, note, [f"checkpoint: of the log {cp.origin}, not {' or '.join(origins)}"])
    if cp.size > max_entries:
        raise ProvError(f"{where}: the checkpoint claims {cp.size:,} entries, beyond --max-entries {max_entries:,}")
    earlier = []
    if since_note is not None:
        try:
            since, _ = verify_checkpoint(since_note, trusted)
        except LogProofError as e:
            raise ProvError(f"--since: {e}") from None
        if since.origin != cp.origin:
            raise ProvError(f"--since is a checkpoint of another log ({since.origin}, not {cp.origin})")
        earlier.append(("--since", since, since_note))
    from provenance.log.seen import Seen
    with (Seen(state) if state else contextlib.nullcontext()) as seen:
        kept = seen.get(cp.origin) if seen else None
        if kept is not None:
            earlier.append((state, kept[0], kept[1]["checkpoint"]))
        forks = [_evidence(label, e_note, note, f"rollback: the log now shows size {cp.size}, below size "
                                                f"{e.size} seen before") for label, e, e_note in earlier if e.size > cp.size]
        rec = tiles.recompute(cp.size, src.fetch, sizes=[e.size for _, e, _ in earlier if e.size <= cp.size],
                              progress=progress)
        problems = list(rec.problems)
        if not problems and rec.roots[cp.size] != cp.root:
            problems.append(f"checkpoint: its root is not the root of the {cp.size} entries published")
        if not problems:
            forks += [_evidence(label, e_note, note, f"fork: the log's first {e.size} entries now have root "
                                                     f"{rec.roots[e.size].hex()}, not {e.root.hex()} as seen before")
                      for label, e, e_note in earlier if e.size <= cp.size and rec.roots[e.size] != e.root]
        out = _report(where, cp, note, problems, forks, rec.leaves)
        if out["ok"] and seen is not None and (kept is None or kept[0].size <= cp.size):
            seen.accept(note)
    return out


def _evidence(label: str, seen_note: str, now_note: str, why: str) -> dict:
    return {"why": why, "seen_in": label, "seen": seen_note, "now": now_note}


def _report(where, cp, note, problems, forks=(), leaves=0) -> dict:
    return {"ok": not problems and not forks, "source": where, "origin": cp.origin if cp else None,
            "size": cp.size if cp else None, "root": cp.root.hex() if cp else None, "entries_read": leaves,
            "problems": problems, "forks": list(forks), "checkpoint": note}
