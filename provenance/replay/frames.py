"""A few frames of the original and of the reconstruction, kept as PNG evidence objects.

Illustrations for the run page, never score authority: the score comes from the report. The
frame indices are fixed by the profile, so every run of a contest shows the same moments. The
host reads the sandbox's .raw outputs only as regular files opened without following links, and
only the bytes of the frames it keeps. PNGs are written with zlib and struct (no imaging library)
so the same pixels give the same bytes and the same digest everywhere."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

from provenance.contest.rules import Profile
from provenance.core.errors import ProvError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png(rgb: bytes, width: int, height: int) -> bytes:
    """8-bit RGB, no filter, deterministic zlib level 9."""
    if len(rgb) != width * height * 3:
        raise ValueError("pixel buffer does not match the size")
    row = width * 3
    raw = b"".join(b"\x00" + rgb[y * row:(y + 1) * row] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def read_frames_raw(path: Path, profile: Profile, indices: tuple[int, ...]) -> dict[int, bytes]:
    """The chosen frames of a .raw output: a regular file, never through a link, exactly sized."""
    size = profile.width * profile.height * 3
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ProvError(f"{path.name}: cannot open for frames ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProvError(f"{path.name}: not a regular file; no frames kept")
        if st.st_size != size * profile.frames:
            raise ProvError(f"{path.name}: {st.st_size:,} bytes, not {profile.frames} frames")
        out = {}
        for i in indices:
            data = os.pread(fd, size, i * size)
            if len(data) != size:
                raise ProvError(f"{path.name}: short read at frame {i}")
            out[i] = data
        return out
    finally:
        os.close(fd)


def _original(video: Path, indices: tuple[int, ...]) -> dict[int, bytes]:
    import av  # the host decodes the upstream's own clip, as the evaluator does
    want, out = set(indices), {}
    with av.open(str(video)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in want:
                out[i] = f.to_ndarray(format="rgb24").tobytes()
            if len(out) == len(want):
                break
    return out


def frame_pngs(profile: Profile, upstream: Path, inflated: Path, names: list[str]) -> dict[str, bytes]:
    """{"<video>/<kind>/<index>": PNG bytes}, kind original|reconstruction: pure work, no store,
    so a replay can make them while the evaluator runs. Only the first video of the names file is
    illustrated (the contest has one)."""
    indices = tuple(i for i in profile.preview_frames if 0 <= i < profile.frames)
    if not indices or not names:
        return {}
    base = os.path.splitext(names[0])[0]
    recon = read_frames_raw(inflated / f"{base}.raw", profile, indices)
    try:
        orig = _original(upstream / "videos" / names[0], indices)
    except ImportError:  # no PyAV on this host: the reconstruction alone still illustrates the run
        orig = {}
    return {f"{base}/{kind}/{i:04d}": png(frames[i], profile.width, profile.height)
            for i in indices for kind, frames in (("original", orig), ("reconstruction", recon)) if i in frames}


def keep_frames(store, profile: Profile, upstream: Path, inflated: Path, names: list[str],
                pngs: dict[str, bytes] | None = None) -> dict:
    """{"<video>/<kind>/<index>": Digest} of the frame PNGs, put in the store."""
    pngs = frame_pngs(profile, upstream, inflated, names) if pngs is None else pngs
    with store.batch() as b:
        return {k: b.put_bytes(v, "blob") for k, v in pngs.items()}
