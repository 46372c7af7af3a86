"""Durable writing: bytes written whole, files and directories fsynced (or the filesystem synced
once for many), writeback started early, and large files copied in the kernel while two threads
hash the copy. What the write batch (store.batch) is made of."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from provenance.core.digest import Digest

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
        os.sync()


_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a range now (SYNC_FILE_RANGE_WRITE), so fsync finds less to do."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, 2)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, mv: memoryview) -> None:
    while mv:
        mv = mv[os.write(fd, mv):]


WINDOW = 16 << 20  # page-aligned copy/hash window; at most INFLIGHT of them mapped at once
INFLIGHT = 3


def copy_and_hash(src_fd: int, out_fd: int, progress) -> Digest:
    """Copy src into out in the kernel, window by window, while two threads hash each
    finished window of *out* through mmap: the digest is that of the bytes we keep,
    even if the source changes under us, and no byte crosses into user space twice."""
    import hashlib
    import mmap
    import queue
    import threading
    from blake3 import blake3

    hashers = [hashlib.sha256(), blake3()]
    queues = [queue.SimpleQueue() for _ in hashers]
    slots = threading.Semaphore(INFLIGHT)
    refs: dict[int, list] = {}
    lock = threading.Lock()

    def release(key: int) -> None:
        with lock:
            refs[key][0] -= 1
            if refs[key][0] == 0:
                refs.pop(key)[1].close()
                slots.release()

    def work(h, q) -> None:
        while (item := q.get()) is not None:
            key, mm = item
            h.update(mm)
            release(key)

    threads = [threading.Thread(target=work, args=(h, q), daemon=True) for h, q in zip(hashers, queues)]
    for t in threads:
        t.start()
    offset = 0
    try:
        while True:
            n = 0
            while n < WINDOW:
                got = os.copy_file_range(src_fd, out_fd, WINDOW - n)
                if got == 0:
                    break
                n += got
            if n == 0:
                break
            start_writeback(out_fd, offset, n)  # so the final fsync finds little left to do
            slots.acquire()
            mm = mmap.mmap(out_fd, n, offset=offset, access=mmap.ACCESS_READ)
            refs[offset] = [len(queues), mm]
            for q in queues:
                q.put((offset, mm))
            offset += n
            if progress:
                progress(n)
            if n < WINDOW:
                break
    finally:
        for q in queues:
            q.put(None)
        for t in threads:
            t.join()
    return Digest(hashers[0].hexdigest(), hashers[1].hexdigest(), offset)
