"""Safe intake of archive.zip: the result of `unzip -o` for legitimate archives, and one clear
refusal (entry and rule) for hostile ones, with nothing written outside the scratch directory."""

from __future__ import annotations

import os
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from provenance.core.errors import ProvError
from provenance.core.files import remove_tree


class IntakeError(ProvError):
    """An archive refused by a named intake rule (exit 2)."""


@dataclass(frozen=True)
class Limits:
    max_entries: int = 10_000
    max_entry_bytes: int = 8 << 30  # a real .raw of the full clip is 3.7 GB; archives hold far less
    max_total_bytes: int = 16 << 30
    max_ratio: float = 1000.0  # uncompressed / compressed, for entries over ratio_floor
    ratio_floor: int = 1 << 20
    max_depth: int = 64  # directory levels in an entry's path


def _refuse(archive, entry: str, rule: str, detail: str) -> IntakeError:
    return IntakeError(f"{archive}: entry {entry!r}: {detail} (rule: {rule})")


DOS_HOSTS = (0, 6, 11)  # FAT, HPFS, NTFS: Info-ZIP maps their unflagged names through its OEM table
UTF8_FLAG = 0x800


def unzip_name(archive, info: zipfile.ZipInfo) -> str:
    """The name `unzip -o` writes on Linux. zipfile decodes unflagged names as cp437; Info-ZIP keeps
    their bytes as they are (from Unix hosts) or maps them OEM -> Latin-1 (from DOS hosts). Names
    that would not come out as UTF-8 are refused: no judge's tool could name them alike."""
    if info.flag_bits & UTF8_FLAG:
        return info.filename
    raw = info.filename.encode("cp437")
    if raw.isascii():
        return info.filename
    if info.create_system in DOS_HOSTS:
        raise _refuse(archive, info.filename, "name-encoding",
                      "non-ASCII name from a DOS host without the UTF-8 flag (unzip would write Latin-1 bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(archive, raw.decode("utf-8", "backslashreplace"), "name-encoding",
                      "name is not UTF-8 (unzip would write its raw bytes)") from None


def _safe_name(archive, raw: str, limits: "Limits") -> str:
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


def check(archive: str | Path, limits: Limits = Limits()) -> list[tuple[zipfile.ZipInfo, str]]:
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
        key = name.rstrip("/")
        if key in seen:
            raise _refuse(archive, info.filename, "duplicate", "appears more than once")
        seen.add(key)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if info.create_system == 3 and kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "symlink" if kind == stat.S_IFLNK else "device or special file"
            raise _refuse(archive, info.filename, "special-entry", f"{what} entries are not allowed")
        if info.flag_bits & 0x1:
            raise _refuse(archive, info.filename, "encrypted", "encrypted entry")
        if info.file_size > limits.max_entry_bytes:
            raise _refuse(archive, info.filename, "entry-size",
                          f"{info.file_size:,} bytes, limit {limits.max_entry_bytes:,}")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise _refuse(archive, info.filename, "total-size", f"archive expands past {limits.max_total_bytes:,} bytes")
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise _refuse(archive, info.filename, "compression-ratio",
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
    import struct
    spans = []
    try:
        with open(archive, "rb") as f:
            end_of_file = os.fstat(f.fileno()).st_size
            for info in infos:
                f.seek(info.header_offset)
                head = f.read(30)
                if len(head) < 30 or head[:4] != b"PK\x03\x04":
                    raise _refuse(archive, info.filename, "corrupt", "no local header where the directory points")
                nlen, xlen = struct.unpack("<HH", head[26:30])
                end = info.header_offset + 30 + nlen + xlen + info.compress_size
                if end > end_of_file:
                    raise _refuse(archive, info.filename, "corrupt", "data runs past the end of the archive")
                spans.append((info.header_offset, end, info.filename))
    except OSError as e:
        raise IntakeError(f"{archive}: {e.strerror}") from None
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise _refuse(archive, b, "overlap", f"its data overlaps entry {a!r} (an overlapping-entry zip bomb)")


def _actual_size(archive: str | Path, info: zipfile.ZipInfo, cap: int) -> int | None:
    """Inflate a member's raw data ourselves (zipfile stops at the declared size); None if unknown."""
    import struct
    import zlib
    with open(archive, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            return None
        nlen, xlen = struct.unpack("<HH", head[26:30])
        f.seek(info.header_offset + 30 + nlen + xlen)
        if info.compress_type == zipfile.ZIP_STORED:
            return info.compress_size
        if info.compress_type != zipfile.ZIP_DEFLATED:
            return None
        d, total, left = zlib.decompressobj(-15), 0, info.compress_size
        try:
            while left > 0 and total <= cap:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
                total += len(d.decompress(chunk, cap + 1 - total))
                while d.unconsumed_tail and total <= cap:
                    total += len(d.decompress(d.unconsumed_tail, cap + 1 - total))
        except zlib.error:
            return None
        return total


def _relabel(source, label, limits: Limits):
    try:
        return check(source, limits)
    except IntakeError as e:
        raise IntakeError(str(e).replace(str(source), str(label), 1)) from None


def extract(archive: str | Path, dest: str | Path, limits: Limits = Limits(), label: str | None = None) -> list[str]:
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
    names = []
    try:
        with zipfile.ZipFile(source) as z:
            for info, name in entries:
                target = os.path.join(root, name)
                if not os.path.realpath(target).startswith(root + os.sep):
                    raise _refuse(archive, info.filename, "parent-path", "resolves outside the archive directory")
                if name.endswith("/"):
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                written = 0
                try:
                    with z.open(info) as src, open(target, "xb") as out:
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            if written > info.file_size:
                                raise _refuse(archive, info.filename, "size-mismatch",
                                              f"inflates past its declared {info.file_size:,} bytes")
                            out.write(chunk)
                except zipfile.BadZipFile as e:
                    actual = _actual_size(source, info, limits.max_entry_bytes)
                    if actual is not None and actual != info.file_size:
                        raise _refuse(archive, info.filename, "size-mismatch",
                                      f"holds {actual:,} bytes, declares {info.file_size:,}") from None
                    raise _refuse(archive, info.filename, "corrupt", str(e)) from None
                except (zipfile.LargeZipFile, NotImplementedError, RuntimeError) as e:
                    raise _refuse(archive, info.filename, "unsupported", str(e)) from None
                except EOFError as e:
                    raise _refuse(archive, info.filename, "size-mismatch", f"truncated ({e})") from None
                if written != info.file_size:
                    raise _refuse(archive, info.filename, "size-mismatch",
                                  f"{written:,} bytes, declared {info.file_size:,}")
                mode = (info.external_attr >> 16) & 0o777 if info.create_system == 3 else 0
                os.chmod(target, (mode & 0o755) or 0o644)  # as unzip: keep rwx bits, never setuid/setgid
                os.utime(target, (time.mktime(info.date_time + (0, 0, -1)),) * 2)
                names.append(name)
        os.rename(work, dest)
    except BaseException:
        remove_tree(work)
        raise
    return names
