"""Each traceback issue 13 names, as its own test: the input, the exit code and the one line.
(The hypothesis harness in test_fuzz_inputs.py finds the rest of their kind.)"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import zipfile

import pytest
import rfc8785

from fuzzkit import assert_clean, invoke, library_outcome
from provenance.core import canonical, signing
from provenance.core.errors import ProvError
from provenance.store.objects import Store


def run(world, *args, code):
    full = ["--store", world["store"], *args]
    res = invoke(full)
    assert_clean(res, full)
    assert res.exit_code == code, (args, res.exit_code, res.output)
    return res


def case(world, name, data) -> str:
    p = world["tmp"] / "named" / name
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return p


def legacy_with(world, edit):
    doc = json.loads(json.dumps(world["legacy"]))
    edit(doc)
    return doc


# -- import-legacy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,edit,needle", [
    ("attribute_error_row_not_an_object",
     lambda d: d["provenance"]["inflate_runtime_manifest"].__setitem__("files", [None]), "list of objects"),
    ("overflow_component_beyond_a_double", lambda d: d.__setitem__("avg_posenet_dist", 1e308), "non-finite"),
    ("validation_error_negative_size", lambda d: d.__setitem__("archive_size_bytes", -5), "negative"),
    ("validation_error_negative_samples", lambda d: d.__setitem__("n_samples", -1), "negative"),
])
def test_import_legacy_named(world, name, edit, needle):
    res = run(world, "import-legacy", case(world, f"{name}.json", legacy_with(world, edit)), code=2)
    assert needle in res.stderr


@pytest.mark.parametrize("token,needle", [("1e400", "beyond a double"), ("123456789012345678901234567890", "2**53"),
                                          ("18446744073709551617", "2**53")])
def test_import_legacy_integer_and_float_domain(world, token, needle):
    """IntegerDomainError / FloatDomainError came from canonicalising numbers RFC 8785 cannot hold:
    the strict loader now refuses them on the way in."""
    text = json.dumps(world["legacy"]).replace('"n_samples": 600', f'"n_samples": {token}')
    assert token in text
    res = run(world, "import-legacy", case(world, "domain.json", text.encode()), code=2)
    assert needle in res.stderr


# -- the strict loader -----------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["1e400", "-1e400", "[1E999]", '{"a": 1e400}'])
def test_strict_loader_refuses_infinity_written_as_a_number(text):
    with pytest.raises(ProvError, match="beyond a double"):
        canonical.loads(text)


def test_strict_loader_refuses_deep_nesting_and_lone_surrogates():
    with pytest.raises(ProvError, match="nested too deeply"):
        canonical.loads("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProvError):
        canonical.loads('"\\ud800"')
    with pytest.raises(ProvError):
        canonical.loads(b'"\xed\xa0\x80"')
    assert canonical.loads('"\\ud83d\\ude00"') == "\U0001F600"


# -- verify ------------------------------------------------------------------------------------------

def _signed(world, stmt_bytes: bytes) -> dict:
    env = dict(world["env"])
    env["payload"] = base64.b64encode(stmt_bytes).decode()
    env["signatures"] = [signing.sign(world["key"], env["payloadType"], stmt_bytes)]
    return env


@pytest.mark.parametrize("token", ["1e400", "123456789012345678901234567890123"])
def test_verify_trusted_payload_with_out_of_domain_number(world, token):
    """A trusted key signed it, so the signature check passes; the number must still be refused."""
    raw = rfc8785.dumps(world["statement"]).replace(b'"archive_size":2244900', b'"archive_size":' + token.encode())
    assert token.encode() in raw
    res = run(world, "verify", "--no-files", case(world, "m.json", _signed(world, raw)), "--trust", world["trust"], code=2)
    assert "payload" in res.stderr


@pytest.mark.parametrize("field,value", [("inclusion", None), ("inclusion", 5), ("consistency", []),
                                         ("consistency", {"1": 7}), ("index", "0"), ("leaf", 3),
                                         ("checkpoint", 12), ("index", 1e300)])
def test_verify_unsigned_log_bundle_field_of_wrong_type(world, field, value):
    env = dict(world["env"])
    env["log"] = {**env["log"], field: value}
    res = run(world, "verify", "--no-files", case(world, "m.json", env), "--trust", world["trust"], "--since", world["cp1"],
              "--json", code=1)
    assert not json.loads(res.stdout)["ok"]


@pytest.mark.parametrize("size", ["١٢", "²", "１", "99999999999999999999999999"])
def test_verify_checkpoint_size_with_non_ascii_digits(world, size):
    lines = world["cp1"].read_text().split("\n")
    lines[1] = size
    note = case(world, "cp.note", "\n".join(lines).encode())
    run(world, "verify", "--no-files", world["manifest"], "--trust", world["trust"], "--since", note, "--json", code=2)
    run(world, "log", "consistency", note, world["cp1"], code=1)


def test_verify_json_nested_100k_deep(world):
    deep = b"[" * 100_000 + b"]" * 100_000
    for args in (["verify", "--no-files", case(world, "deep.json", deep), "--trust", world["trust"]],
                 ["verify", "--no-files", world["manifest"], "--trust", case(world, "deep-trust.json", deep)],
                 ["import-legacy", case(world, "deep-legacy.json", deep)]):
        res = run(world, *args, code=2)
        assert "nested too deeply" in res.stderr


@pytest.mark.parametrize("state", [{"releases": {"demo": {"version": 1}}}, {"releases": {"demo": None}},
                                   {"releases": {"demo": {"version": "1", "statement_sha256": "x"}}},
                                   {"releases": []}, [], b"\xff\xfe", b"1e400"])
def test_state_files(world, state):
    p = case(world, "state.json", state)
    res = run(world, "verify", "--no-files", world["manifest"], "--trust", world["trust"], "--state", p, code=2)
    assert "state" in res.stderr


@pytest.mark.parametrize("expires", ["garbage", "", "2026-13-45", "1e400", "\n"])
def test_trust_init_expires_garbage(world, expires):
    res = run(world, "trust", "init", "--release-key", world["tmp"] / "a/key.pub.pem", "--expires", expires,
              "--out", world["tmp"] / "named" / "t.json", code=2)
    assert "--expires" in res.stderr
    assert not (world["tmp"] / "named" / "t.json").exists()


# -- zip intake (intake.py is the lead's, issue 11: these pin the outcome, not the code) -------------

def _zip_with_raw_name(name: bytes, utf8_flag: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("placeholder.txt", b"x")
    data = bytearray(buf.getvalue())
    old = b"placeholder.txt"
    assert len(name) == len(old)
    data = bytearray(bytes(data).replace(old, name))
    if utf8_flag:  # general purpose bit 11, in the local header and the central directory entry
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            i = bytes(data).find(sig)
            data[i + off + 1] |= 0x08  # bit 11 is 0x0800: the high byte
    return bytes(data)


def test_zip_name_invalid_utf8_under_the_utf8_flag(tmp_path):
    from provenance.replay import intake
    p = tmp_path / "a.zip"
    p.write_bytes(_zip_with_raw_name(b"b\xff\xfe" + b"x" * 8 + b".txt", True))
    assert library_outcome(intake.extract, p, tmp_path / "out") == 2


def test_zip_entry_path_2100_levels_deep(tmp_path):
    from provenance.replay import intake
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("d/" * 2100 + "f.raw", b"x")
    p = tmp_path / "deep.zip"
    p.write_bytes(buf.getvalue())
    assert library_outcome(intake.extract, p, tmp_path / "out") in (0, 2)


# -- the store under faults ----------------------------------------------------------------------------

def test_sqlite_disk_full_at_commit_is_exit_3_and_leaves_the_store_consistent(tmp_path):
    """SQLITE_FULL at the index commit (max_page_count is SQLite's own disk-full path): one line,
    exit 3, no index row without its object; fsck stays clean."""
    s = Store(tmp_path / "store", create=True)
    s.put_bytes(b"first", "blob")
    pages = s.db.execute("PRAGMA page_count").fetchone()[0]
    s.db.execute(f"PRAGMA max_page_count={pages}")
    big = [bytes([i]) * 3000 + bytes(range(256)) for i in range(200)]

    def add_many():
        with s.batch() as b:
            for data in big:
                b.put_bytes(data, "blob")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        add_many()
    assert library_outcome(add_many) == 3
    s.close()
    from provenance.store import check
    rep = check.fsck(tmp_path / "store")
    assert rep["ok"], rep["errors"]


def test_os_disk_full_maps_to_exit_3():
    """ENOSPC from the filesystem (a real write to /dev/full) is the environment: exit 3."""
    from provenance.core.faults import os_error_code

    def write_full():
        with open("/dev/full", "wb", buffering=0) as f:
            f.write(b"x")
    assert library_outcome(write_full) == 3
    with pytest.raises(OSError) as e:
        write_full()
    assert os_error_code(e.value) == 3
