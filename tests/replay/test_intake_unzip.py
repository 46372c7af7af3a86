"""Intake against `unzip -o` itself (Info-ZIP 6.00, what the official evaluate.sh runs): the same
files with the same modes for every archive unzip extracts, and a one-line refusal (entry, rule)
where unzip would make a symlink or fails. Archives are written byte by byte here, so each header
field is what the case says."""

import bz2
import os
import shutil
import stat
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from provenance.replay import intake

pytestmark = pytest.mark.skipif(shutil.which("unzip") is None, reason="needs Info-ZIP unzip")


def entry(name: bytes, data: bytes = b"x", *, host=3, mode=0o100644, dos=0, method=8, extra=b"", flag=0,
          packed: bytes | None = None):
    if packed is None:
        if method == 8:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            packed = c.compress(data) + c.flush()
        elif method == 12:
            packed = bz2.compress(data)
        elif method == 9:
            import inflate64
            d = inflate64.Deflater()
            packed = d.deflate(data) + d.flush()
        else:
            packed = data
    return dict(name=name, data=data, host=host, attr=(mode << 16) | dos, method=method, extra=extra,
                flag=flag, packed=packed, crc=zlib.crc32(data))


def raw_zip(path: Path, entries) -> Path:
    out, central = bytearray(), bytearray()
    for e in entries:
        off = len(out)
        version = {9: 21, 12: 46, 14: 63}.get(e["method"], 20)
        fixed = struct.pack("<HHHHHIII", version, e["flag"], e["method"], 0, 0x5021, e["crc"], len(e["packed"]),
                            len(e["data"]))
        out += b"PK\x03\x04" + fixed + struct.pack("<HH", len(e["name"]), len(e["extra"])) + e["name"] + e["extra"]
        out += e["packed"]
        central += (b"PK\x01\x02" + struct.pack("<H", e["host"] << 8 | 30) + fixed
                    + struct.pack("<HHHHHII", len(e["name"]), len(e["extra"]), 0, 0, 0, e["attr"], off)
                    + e["name"] + e["extra"])
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def unzip(z: Path, dest: Path) -> int:
    """unzip's exit code; -1 where it never ends (6.00 loops for ever on a truncated bzip2 stream: an
    official run would hit its 30 minutes). A case takes milliseconds: 15 s is ample on a loaded machine."""
    try:
        return subprocess.run(["bash", "-c", 'umask 022; exec unzip -qo "$1" -d "$2"', "-", str(z), str(dest)],
                              capture_output=True, timeout=15).returncode
    except subprocess.TimeoutExpired:
        return -1


def listing(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            body = os.readlink(p) if stat.S_ISLNK(st.st_mode) else (p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
            out[str(p.relative_to(root))] = (oct(st.st_mode), body)
    return out


def both(tmp_path: Path, z: Path):
    """(unzip's exit code, its tree, our tree or the IntakeError)."""
    rc = unzip(z, tmp_path / "unzip")
    try:
        intake.extract(z, tmp_path / "ours")
        ours = listing(tmp_path / "ours")
    except intake.IntakeError as e:
        ours = e
    return rc, listing(tmp_path / "unzip") if (tmp_path / "unzip").exists() else {}, ours


HOSTS = (0, 1, 2, 3, 5, 6, 7, 11, 12, 13, 16, 17, 18, 19, 30)
MODES = (0, 0o100644, 0o100755, 0o100600, 0o100000, 0o104755, 0o120777, 0o120644, 0o40700, 0o60644, 0o777)
DOS = (0, 0x01, 0x10, 0x20)


@pytest.mark.parametrize("host", HOSTS)
def test_modes_and_links_as_unzip_makes_them(tmp_path, host):
    """Every made-by host x Unix mode x DOS attribute, for a file and a directory entry: the same
    modes as unzip, and a refusal exactly where unzip makes a symlink (or a device we never write)."""
    for i, mode in enumerate(MODES):
        for j, dos in enumerate(DOS):
            case = tmp_path / f"{i}-{j}"
            case.mkdir()
            z = raw_zip(case / "a.zip", [entry(b"d/", b"", host=host, mode=mode if mode & 0o40000 else 0o40755 | 0,
                                               dos=dos | 0x10, method=0),
                                         entry(b"d/f", b"target.txt", host=host, mode=mode, dos=dos)])
            rc, theirs, ours = both(case, z)
            assert rc == 0, (host, oct(mode), dos)
            link = stat.S_ISLNK(int(theirs["d/f"][0], 8))
            device = host == 3 and stat.S_IFMT(mode) == stat.S_IFBLK
            if link or device:
                assert isinstance(ours, intake.IntakeError) and "rule: special-entry" in str(ours), (host, oct(mode))
                assert not (case / "ours").exists()
            else:
                assert ours == theirs, (host, oct(mode), dos)


def test_unicode_path_field_as_unzip_reads_it(tmp_path):
    header = b"plain.txt"
    uni = "unicod\u00e9 \u2603.txt".encode()

    def field(crc_of: bytes, name: bytes, version=1):
        return struct.pack("<HHBI", 0x7075, 5 + len(name), version, zlib.crc32(crc_of)) + name
    cases = {"valid": field(header, uni), "stale crc": field(b"other", uni), "empty name": field(header, b""),
             "version 2": field(header, uni, 2)}
    for label, extra in cases.items():
        for flag in (0, 0x800):
            case = tmp_path / f"{label}-{flag}".replace(" ", "_")
            case.mkdir()
            rc, theirs, ours = both(case, raw_zip(case / "a.zip", [entry(header, b"hi", extra=extra, flag=flag)]))
            assert rc == 0 and ours == theirs, (label, flag, theirs, ours)
    assert "unicod\u00e9 \u2603.txt" in listing(tmp_path / "valid-0" / "ours")


@pytest.mark.parametrize("method", [0, 8, 9, 12])
def test_methods_unzip_extracts_are_extracted(tmp_path, method):
    data = os.urandom(3000) + bytes(200_000) + b"tail" * 5000
    rc, theirs, ours = both(tmp_path, raw_zip(tmp_path / "a.zip", [entry(b"frames.bin", data, method=method)]))
    assert rc == 0 and ours == theirs and theirs["frames.bin"][1] == data


def test_lzma_is_refused_as_unzip_cannot(tmp_path):
    import lzma
    props = lzma._encode_filter_properties({"id": lzma.FILTER_LZMA1})
    c = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)])
    packed = struct.pack("<BBH", 9, 4, len(props)) + props + c.compress(b"hello" * 100) + c.flush()
    rc, theirs, ours = both(tmp_path, raw_zip(tmp_path / "a.zip", [entry(b"a.txt", b"hello" * 100, method=14,
                                                                          packed=packed)]))
    assert rc != 0 and "a.txt" not in theirs
    assert isinstance(ours, intake.IntakeError) and "rule: unsupported" in str(ours) and "'a.txt'" in str(ours)


@pytest.mark.parametrize("method", [8, 9, 12])
@pytest.mark.parametrize("damage", ["flipped", "truncated-stream", "crc"])
def test_corrupt_data_is_refused_naming_the_entry(tmp_path, method, damage):
    data = os.urandom(20_000) + bytes(30_000)
    e = entry(b"frames.bin", data, method=method)
    if damage == "flipped":
        p = bytearray(e["packed"])
        for k in range(len(p) // 4, len(p) // 2):
            p[k] ^= 0x5A
        e["packed"] = bytes(p)
    elif damage == "truncated-stream":
        e["packed"] = e["packed"][: len(e["packed"]) // 2]
    else:
        e["crc"] ^= 1
    z = raw_zip(tmp_path / "a.zip", [e])
    rc, _, ours = both(tmp_path, z)
    assert rc != 0  # unzip fails too
    assert isinstance(ours, intake.IntakeError), ours
    msg = str(ours)
    assert len(msg.splitlines()) == 1 and "'frames.bin'" in msg
    assert "rule: corrupt" in msg or "rule: size-mismatch" in msg
    assert not (tmp_path / "ours").exists() and not list(tmp_path.glob(".ours.intake-*"))
