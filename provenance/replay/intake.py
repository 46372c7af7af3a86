"""Safe intake of archive.zip: exactly what `unzip -o` (Info-ZIP 6.00, as Debian ships it, which the
official evaluate.sh runs) writes for a legitimate archive, and one clear refusal (entry and rule)
for a hostile one, with nothing written outside the scratch directory.

Where we differ from unzip, we refuse what it would do: a symlink entry (unzip makes one, from the
hosts it trusts with links), a device, an encrypted entry, a name that would escape. Methods are
unzip's: stored, deflate, Deflate64 and bzip2 are extracted; LZMA and the rest it cannot extract are
refused (so are shrink and implode, which unzip 6.00 still reads and nobody has written since 1993).
Corrupt data is refused naming the entry, as unzip exits 2 on it."""

from __future__ import annotations

import bz2
import os
import stat
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from provenance.core.errors import ProvError
from provenance.core.files import remove_tree


class IntakeError(ProvError):
    """An archive refused by a named intake rule (exit 2)."""


@dataclass(frozen=True)
class IntakeLimits:
    max_entries: int = 10_000
    max_entry_bytes: int = 8 << 30  # a real .raw of the full clip is 3.7 GB; archives hold far less
    max_total_bytes: int = 16 << 30
    max_ratio: float = 1000.0  # uncompressed / compressed, for entries over ratio_floor
    ratio_floor: int = 1 << 20
    max_depth: int = 64  # directory levels in an entry's path


def _refuse(archive, entry: str, rule: str, detail: str) -> IntakeError:
    return IntakeError(f"{archive}: entry {entry!r}: {detail} (rule: {rule})")


# -- names ------------------------------------------------------------------------------------

DOS_HOSTS = (0, 6, 11)  # FAT, HPFS, NTFS: Info-ZIP maps their unflagged names through its OEM table
UTF8_FLAG = 0x800
UNICODE_PATH = 0x7075  # Info-ZIP's Unicode Path extra field: version 1, CRC-32 of the header name, UTF-8 name


def _header_bytes(info: zipfile.ZipInfo) -> bytes:
    """The name as the header stores it (zipfile decoded it as UTF-8 or cp437, and on 3.12+ may have
    replaced `filename` by the Unicode Path field: orig_filename is the header's)."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & UTF8_FLAG else "cp437")


def _unicode_path(info: zipfile.ZipInfo, raw: bytes) -> bytes | None:
    """The 0x7075 field's name when unzip would use it: version 1 and a CRC-32 that matches the
    header's name bytes (a stale field, one whose header was renamed since, is ignored). An empty
    name says the header's own name is UTF-8."""
    extra, i = info.extra, 0
    while i + 4 <= len(extra):
        tp, ln = struct.unpack_from("<HH", extra, i)
        data = extra[i + 4:i + 4 + ln]
        i += 4 + ln
        if tp == UNICODE_PATH and len(data) >= 5 and data[0] == 1:
            if struct.unpack_from("<I", data, 1)[0] == zlib.crc32(raw):
                return data[5:] or raw
    return None


def unzip_name(archive, info: zipfile.ZipInfo) -> str:
    """The name `unzip -o` writes on Linux. A flagged name is UTF-8 as it stands; an unflagged one
    gives way to a valid Unicode Path field; otherwise unflagged ones keep their bytes (from Unix hosts) or
    go through Info-ZIP's OEM table (from DOS hosts). Names that would not come out as UTF-8 are
    refused: no judge's tool could name them alike."""
    raw = _header_bytes(info)
    shown = raw.decode("utf-8", "backslashreplace")
    uni = None if info.flag_bits & UTF8_FLAG else _unicode_path(info, raw)
    if uni is not None:
        try:
            return uni.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse(archive, shown, "name-encoding", "its Unicode Path field is not UTF-8") from None
    if info.flag_bits & UTF8_FLAG or raw.isascii():
        return info.orig_filename
    if info.create_system in DOS_HOSTS:
        raise _refuse(archive, info.orig_filename, "name-encoding",
                      "non-ASCII name from a DOS host without the UTF-8 flag (unzip would write Latin-1 bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(archive, shown, "name-encoding", "name is not UTF-8 (unzip would write its raw bytes)") from None


def _safe_name(archive, raw: str, limits: "IntakeLimits") -> str:
    if not raw or "\0" in raw:
        raise _refuse(archive, raw, "name", "empty name or NUL byte")
    if "\\" in raw:
        raise _refuse(archive, raw, "name", "backslash in name")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise _refuse(archive, raw, "absolute-path", "absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, raw, "parent-path", "'..' would escape the archive directory")
    if not parts:
        raise _refuse(archive, raw, "name", "names the archive directory itself")
    if len(parts) > limits.max_depth:
        raise _refuse(archive, raw[:120] + "...", "path-depth", f"{len(parts)} levels deep, limit {limits.max_depth}")
    if any(len(p.encode()) > 255 for p in parts) or len(raw.encode()) > 4000:
        raise _refuse(archive, raw[:120] + "...", "name", "a path component over 255 bytes or a path over 4,000")
    return "/".join(parts) + ("/" if raw.endswith("/") else "")


# -- modes: Info-ZIP's unix/unix.c mapattr(), for a umask of 022 -------------------------------

UMASK = 0o022  # the official runner's; a fixed figure, so the same archive extracts alike everywhere
UNIX_LIKE = (3, 2, 13, 5, 30, 16, 12, 17, 18)  # Unix, VMS, Acorn, Atari, AtheOS, BeOS, QDOS, Tandem, THEOS
SYMLINK_HOSTS = (3, 5, 30, 16, 2)  # those unzip trusts with symlinks (SYMLINK_HOST); FAT when consistent
AMIGA, FAT, THEOS = 1, 0, 18


def unzip_attr(info: zipfile.ZipInfo, is_dir: bool) -> tuple[int, bool]:
    """(permission bits, is a symlink) as unzip -o gives them: Unix-like hosts keep the mode's
    rwx bits (never setuid, setgid or sticky), others expand the DOS read-only and directory bits
    through the umask, and FAT keeps a Unix mode whose owner bits agree with its DOS bits."""
    host, attr = info.create_system, info.external_attr
    if host == AMIGA:
        t = (attr >> 17) & 7
        return (t << 6 | t << 3 | t) & ~UMASK, False
    mode = 0
    if host in UNIX_LIKE:
        if host == THEOS:
            attr &= 0xF1FFFFFF
            attr &= 0x41FFFFFF if (attr & 0xF0000000) == 0x40000000 else 0x01FFFFFF
        mode = attr >> 16
        return mode & 0o777, stat.S_ISLNK(mode) and host in SYMLINK_HOSTS
    if host == FAT:
        mode = attr >> 16
    dos = attr & 0xFF
    if not dos & 0x10 and is_dir:
        dos |= 0x10
    t = (0 if dos & 1 else 2) | (dos & 0x10) >> 4
    if (mode & 0o700) == (0o400 | t << 6):
        return mode & 0o777, stat.S_ISLNK(mode) and host == FAT
    return (0o444 | t << 6 | t << 3 | t) & ~UMASK, False


# -- data: unzip's methods, streamed, bounded, CRC-checked ------------------------------------

METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", 9: "Deflate64",
           zipfile.ZIP_BZIP2: "bzip2"}
CHUNK = 1 << 16  # input per step: Deflate64 has no output bound, and expands at most ~1,032x


def _decompressor(method: int):
    """A function (chunk, room) -> bytes, and one that says the stream ended."""
    if method == zipfile.ZIP_STORED:
        return (lambda b, room: b), None  # ends with its bytes
    if method == zipfile.ZIP_DEFLATED:
        d = zlib.decompressobj(-15)

        def inflate(b, room):
            out = d.decompress(b, room)
            while d.unconsumed_tail and len(out) < room:
                out += d.decompress(d.unconsumed_tail, room - len(out))
            return out
        return inflate, (lambda: d.eof)
    if method == zipfile.ZIP_BZIP2:
        d2 = bz2.BZ2Decompressor()

        def bunzip(b, room):
            out = d2.decompress(b, room)
            while not d2.eof and not d2.needs_input and len(out) < room:
                out += d2.decompress(b"", room - len(out))
            return out
        return bunzip, (lambda: d2.eof)
    import inflate64  # only an archive that uses Deflate64 loads it
    d64 = inflate64.Inflater()
    return (lambda b, room: d64.inflate(b)), (lambda: d64.eof)


def _data_offset(f, archive, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise _refuse(archive, info.orig_filename, "corrupt", "no local header where the directory points")
    nlen, xlen = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + nlen + xlen


def _copy_member(f, archive, info: zipfile.ZipInfo, out) -> None:
    """The entry's bytes into `out`: no more than it declares, all of them, and the CRC-32 it names."""
    name = info.orig_filename
    f.seek(_data_offset(f, archive, info))
    push, ended = _decompressor(info.compress_type)
    left, written, crc, room = info.compress_size, 0, 0, info.file_size + 1
    try:
        while True:
            chunk = f.read(min(left, CHUNK)) if left else b""
            left -= len(chunk)
            data = push(chunk, room - written)
            written += len(data)
            if written > info.file_size:
                raise _refuse(archive, name, "size-mismatch", f"inflates past its declared {info.file_size:,} bytes")
            crc = zlib.crc32(data, crc)
            out.write(data)
            if (ended() if ended else not left) or not (chunk or data):
                break
    except (zlib.error, OSError, ValueError, EOFError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # the disk, not the data
            raise ProvError(f"{out.name}: {e.strerror}") from None
        raise _refuse(archive, name, "corrupt", f"its {METHODS[info.compress_type]} data is damaged "
                                                f"({str(e) or type(e).__name__})") from None
    if ended and not ended():
        raise _refuse(archive, name, "corrupt", f"its {METHODS[info.compress_type]} data ends early")
    if written != info.file_size:
        raise _refuse(archive, name, "size-mismatch", f"{written:,} bytes, declared {info.file_size:,}")
    if crc != info.CRC:
        raise _refuse(archive, name, "corrupt", f"CRC-32 {crc:08x}, the archive says {info.CRC:08x} "
                                                "(unzip: bad CRC)")


# -- the central directory, then the data -----------------------------------------------------

def check(archive: str | Path, limits: IntakeLimits = IntakeLimits()) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every rule that can be checked from the central directory, before a byte is written."""
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise IntakeError(f"{archive}: not a zip archive ({e})") from None
    except UnicodeDecodeError:
        raise IntakeError(f"{archive}: an entry flagged UTF-8 has a name that is not UTF-8 "
                          "(rule: name-encoding)") from None
    except OSError as e:
        raise IntakeError(f"{archive}: {e.strerror}") from None
    except (ValueError, EOFError, NotImplementedError, OverflowError) as e:
        raise IntakeError(f"{archive}: unreadable central directory ({e}) (rule: corrupt)") from None
    with z:
        infos = z.infolist()
    if len(infos) > limits.max_entries:
        raise IntakeError(f"{archive}: {len(infos)} entries, limit {limits.max_entries} (rule: entry-count)")
    seen: set[str] = set()
    total = 0
    out = []
    for info in infos:
        name = _safe_name(archive, unzip_name(archive, info), limits)
        shown = info.orig_filename
        key = name.rstrip("/")
        if key in seen:
            raise _refuse(archive, shown, "duplicate", "appears more than once")
        seen.add(key)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if unzip_attr(info, name.endswith("/"))[1]:
            raise _refuse(archive, shown, "special-entry", "symlink entries are not allowed "
                                                           f"(unzip would make one; made on host {info.create_system})")
        if info.create_system == 3 and kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            raise _refuse(archive, shown, "special-entry", "device or special file entries are not allowed")
        if info.flag_bits & 0x1:
            raise _refuse(archive, shown, "encrypted", "encrypted entry")
        if info.compress_type not in METHODS and not name.endswith("/"):
            raise _refuse(archive, shown, "unsupported",
                          f"compression method {info.compress_type} (unzip -o extracts only "
                          f"{', '.join(METHODS.values())} here)")
        if info.file_size > limits.max_entry_bytes:
            raise _refuse(archive, shown, "entry-size", f"{info.file_size:,} bytes, limit {limits.max_entry_bytes:,}")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise _refuse(archive, shown, "total-size", f"archive expands past {limits.max_total_bytes:,} bytes")
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise _refuse(archive, shown, "compression-ratio",
                          f"expands {info.file_size / max(info.compress_size, 1):,.0f}x (a zip bomb)")
        out.append((info, name))
    _check_overlap(archive, [i for i, _ in out])
    # entries that would sit inside a file entry ('a' and 'a/b') cannot both be made
    files = {n for i, n in out if not n.endswith("/")}
    for _, n in out:
        parts = n.rstrip("/").split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[:k]) in files:
                raise _refuse(archive, n, "duplicate", f"lies under the file entry {'/'.join(parts[:k])!r}")
    return out


def _check_overlap(archive, infos: list[zipfile.ZipInfo]) -> None:
    """Each entry's local header and data must lie apart from every other's: entries that share
    data (the overlapping-entry bomb) expand to far more than the archive's size at a modest ratio."""
    spans = []
    try:
        with open(archive, "rb") as f:
            end_of_file = os.fstat(f.fileno()).st_size
            for info in infos:
                end = _data_offset(f, archive, info) + info.compress_size
                if end > end_of_file:
                    raise _refuse(archive, info.orig_filename, "corrupt", "data runs past the end of the archive")
                spans.append((info.header_offset, end, info.orig_filename))
    except OSError as e:
        raise IntakeError(f"{archive}: {e.strerror}") from None
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise _refuse(archive, b, "overlap", f"its data overlaps entry {a!r} (an overlapping-entry zip bomb)")


def _relabel(source, label, limits: IntakeLimits):
    try:
        return check(source, limits)
    except IntakeError as e:
        raise IntakeError(str(e).replace(str(source), str(label), 1)) from None


def extract(archive: str | Path, dest: str | Path, limits: IntakeLimits = IntakeLimits(), label: str | None = None) -> list[str]:
    """Unzip into `dest` (which must not exist). All or nothing: on any refusal, dest is absent.
    `label` is how errors name the archive (the user's path, not a store object's)."""
    dest = Path(dest)
    if os.path.lexists(dest):
        raise ProvError(f"{dest}: already exists")
    source, archive = archive, label or archive
    entries = check(source, limits) if label is None else _relabel(source, archive, limits)
    work = dest.parent / f".{dest.name}.intake-{os.getpid()}"
    work.mkdir(parents=True)
    root = os.path.realpath(work)
    names, dirs = [], []

    def mkdirs(path: str) -> None:  # parents unzip makes on its own: 0777 less the umask
        if not os.path.isdir(path):
            mkdirs(os.path.dirname(path))
            os.mkdir(path)
            os.chmod(path, 0o777 & ~UMASK)
    try:
        with open(source, "rb") as f:
            for info, name in entries:
                target = os.path.join(root, name)
                if not os.path.realpath(target).startswith(root + os.sep):
                    raise _refuse(archive, info.orig_filename, "parent-path", "resolves outside the archive directory")
                perms = unzip_attr(info, name.endswith("/"))[0]
                if name.endswith("/"):
                    mkdirs(target.rstrip("/"))
                    dirs.append((target.rstrip("/"), perms))
                    continue
                mkdirs(os.path.dirname(target))
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    _copy_member(f, archive, info, out)
                os.chmod(target, perms)
                os.utime(target, (time.mktime(info.date_time + (0, 0, -1)),) * 2)
                names.append(name)
        for d, perms in sorted(dirs, reverse=True):  # as unzip: directory modes last, deepest first
            os.chmod(d, perms)
        os.rename(work, dest)
    except BaseException:
        remove_tree(work)
        raise
    return names
