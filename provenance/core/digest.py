"""Digest(sha256, blake3, size) of blobs, from a single streaming read.

BLAKE3 runs on the reading thread; SHA-256 runs on a worker thread fed the same
buffers. Both hashers release the GIL on large inputs, so on two cores the wall
time is that of SHA-256 alone. Buffers come from a small fixed pool: memory stays
bounded whatever the file size.
"""

from __future__ import annotations

import hashlib
import os

from blake3 import blake3

from provenance.core.frozen import Frozen

TYPE_CHECKING = False  # typing stays off the verify path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

CHUNK = 1 << 20  # 1 MiB: large enough to amortise per-call costs, small enough to pipeline
POOL = 4


class Digest(Frozen):
    __slots__ = ("sha256", "blake3", "size")

    def __init__(self, sha256: str, blake3: str, size: int) -> None:
        self._init(locals())

    def as_dict(self) -> dict:
        return {"sha256": self.sha256, "blake3": self.blake3, "size": self.size}


def digest_bytes(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest(), blake3(data).hexdigest(), len(data))


class _Sha256Worker:
    """SHA-256 on its own thread over buffers handed to it; returns each buffer to the pool. Built on
    _thread and _queue: threading and queue import functools and collections, which the verify path
    of a large archive would otherwise pay for at start-up."""

    def __init__(self, pool):  # a _queue.SimpleQueue of bytearrays
        import _queue
        import _thread
        self.h = hashlib.sha256()
        self.pool = pool
        self.work = _queue.SimpleQueue()
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.error: BaseException | None = None
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            while (item := self.work.get()) is not None:
                buf, n = item
                self.h.update(memoryview(buf)[:n])
                self.pool.put(buf)
        except BaseException as e:  # handed to finish(): a digest of part of the bytes is never returned
            self.error = e
            while (item := self.work.get()) is not None:  # hand buffers back: the reader must not wait forever
                self.pool.put(item[0])
        finally:
            self.done.release()

    def feed(self, buf: bytearray, n: int) -> None:
        self.work.put((buf, n))

    def finish(self) -> str:
        self.work.put(None)
        self.done.acquire()
        if self.error is not None:
            raise self.error
        return self.h.hexdigest()


def stream(src: BinaryIO, sink: Callable[[memoryview], object] | None = None,
           progress: Callable[[int], None] | None = None) -> Digest:
    """Hash everything readable from `src` once; each chunk also goes to `sink` (e.g. a write)."""
    first = src.read(CHUNK)
    if len(first) < CHUNK:  # small blob: no thread worth starting
        if sink is not None and first:
            sink(memoryview(first))
        if progress:
            progress(len(first))
        return digest_bytes(first)
    import _queue  # only a large blob needs the worker thread
    pool = _queue.SimpleQueue()
    for _ in range(POOL):
        pool.put(bytearray(CHUNK))
    sha = _Sha256Worker(pool)
    b3 = blake3()
    size = 0
    buf = pool.get()
    buf[:] = first
    n = len(first)
    try:
        while n:
            mv = memoryview(buf)[:n]
            sha.feed(buf, n)
            b3.update(mv)
            if sink is not None:
                sink(mv)
            size += n
            if progress:
                progress(n)
            buf = pool.get()
            n = src.readinto(buf)
    finally:
        sha_hex = sha.finish()
    return Digest(sha_hex, b3.hexdigest(), size)


def hash_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> Digest:
    with open(path, "rb", buffering=0) as f:
        return stream(f, progress=progress)
