"""Witnesses and monitors against a split view (#29): one log (one origin, one key) that shows two
histories. The monitor catches it with both checkpoints as evidence; a witness refuses to cosign
either a rollback or a fork, and its cosignature is what C2SP tlog-cosignature says, read here from
the spec's words rather than from our code."""

import base64
import hashlib
import json
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conftest import PROV, run_prov
from provenance.log import logbook, translog
from provenance.log.checkpoint import NOTE_KEY_NAME, sign_checkpoint
from provenance.log.publish import publish
from provenance.store.objects import Store


def entry(tag: str, i: int) -> bytes:
    return translog.entry_bytes("record", hashlib.sha256(b"%s%d" % (tag.encode(), i)).hexdigest(),
                                hashlib.sha256(b"b%d" % i).hexdigest())


def pem(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def split(tmp_path):
    """Log A at sizes 19, 20, 25 and its fork B (A's first 19 leaves, then others) at 20 and 21, both
    signed by the same log key; notes in files, both published; a trust policy on the log key."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "log.pub.pem").write_bytes(pem(key.public_key()))
    for k in ("rel", "root", "w1", "w2"):
        run_prov("key", "generate", "--out", tmp_path / k, check=0)
    a = Store(tmp_path / "a", create=True)
    translog.open_log(a).append_many([entry("a", i) for i in range(19)])
    notes = {"a19": logbook.checkpoint(a, key)}
    trust = tmp_path / "trust.json"
    run_prov("trust", "init", "--release-key", tmp_path / "rel/key.pub.pem", "--log-key", tmp_path / "log.pub.pem",
             "--log-origin", notes["a19"].split("\n")[0], "--root-key", tmp_path / "root/key.pub.pem",
             "--witness-key", tmp_path / "w1/key.pub.pem", "--expires", "2099-01-01T00:00:00Z", "--out", trust, check=0)
    a.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    stores = {"a": Store(tmp_path / "a"), "b": Store(tmp_path / "b")}
    for name, tag, sizes in (("a", "a", (20, 25)), ("b", "B", (20, 21))):
        log = translog.open_log(stores[name])
        for size in sizes:
            log.append_many([entry(tag, i) for i in range(log.size(), size)])
            notes[f"{name}{size}"] = logbook.checkpoint(stores[name], key)
        publish(stores[name], str(tmp_path / f"pub-{name}"))
    for s in stores.values():
        s.close()
    for k, n in notes.items():
        (tmp_path / f"{k}.note").write_text(n)
    return dict(dir=tmp_path, trust=trust, notes=notes, key=key, note=lambda k: tmp_path / f"{k}.note")


def proof(split, store: str, old: str, new: str):
    out = split["dir"] / f"proof-{old}-{new}"
    run_prov("log", "consistency", split["note"](old), split["note"](new), "--out", out,
             store=split["dir"] / store, check=0)
    return out


def witness(split, note: str, *extra, w="w1", check):
    r = run_prov("log", "witness", split["note"](note), "--key", split["dir"] / w / "key.pem",
                 "--state", split["dir"] / f"{w}.state", "--trust", split["trust"], *extra, "--json")
    assert r.returncode == check, r.out + r.err
    return json.loads(r.out) if check == 0 else r.err


def test_the_monitor_catches_the_split_view(split):
    d = split["dir"]
    state = d / "audit.state"
    r = run_prov("log", "audit", d / "pub-a", "--trust", split["trust"], "--state", state, "--json", check=0)
    assert json.loads(r.out)["ok"]
    kept = state.read_bytes()
    r = run_prov("log", "audit", d / "pub-b", "--trust", split["trust"], "--state", state, "--json")
    assert r.returncode == 1
    out = json.loads(r.out)
    assert not out["ok"] and len(out["forks"]) == 1
    fork = out["forks"][0]
    assert fork["why"].startswith("rollback") and fork["seen"] == split["notes"]["a25"]
    assert fork["now"] == split["notes"]["b21"]  # both checkpoints, as evidence
    assert state.read_bytes() == kept  # the state never takes the fork's side
    # a judge holding A's size-20 checkpoint: B's first 20 leaves have another root
    r = run_prov("log", "audit", d / "pub-b", "--trust", split["trust"], "--since", split["note"]("a20"))
    assert r.returncode == 1 and "fork: the log's first 20 entries now have root" in r.out
    assert "seen before (--since):" in r.out and "published now:" in r.out
    # B's own older checkpoint is a prefix of it: no fork
    run_prov("log", "audit", d / "pub-b", "--trust", split["trust"], "--since", split["note"]("a19"), check=0)


def test_a_witness_refuses_rollback_and_fork(split):
    first = witness(split, "a20", check=0)
    assert first["size"] == 20 and "first checkpoint" in first["checked"]
    state = split["dir"] / "w1.state"
    kept = state.read_bytes()
    err = witness(split, "a19", check=1)
    assert "rollback" in err and "size 19 is below size 20" in err
    err = witness(split, "b20", check=1)
    assert "fork" in err and "size 20 has root" in err
    err = witness(split, "b21", "--proof", proof(split, "b", "b20", "b21"), check=1)
    assert "fork" in err and "size 21 is not consistent with size 20" in err
    assert state.read_bytes() == kept  # a refusal changes nothing
    # bad input: no proof, or one from another size (exit 2, one line)
    err = witness(split, "a25", check=2)
    assert "consistency proof from size 20" in err
    err = witness(split, "a25", "--proof", proof(split, "a", "a19", "a25"), check=2)
    assert "from size 19, but this witness last cosigned size 20" in err
    ok = witness(split, "a25", "--proof", proof(split, "a", "a20", "a25"), check=0)
    assert ok["checked"] == "consistent with size 20 cosigned before" and ok["time"] >= first["time"]


def test_a_witness_checks_the_log_signature(split, tmp_path):
    other = Ed25519PrivateKey.generate()
    cp = translog.parse_checkpoint(split["notes"]["a20"])
    forged = tmp_path / "forged.note"
    forged.write_text(sign_checkpoint(cp.origin, cp.size, cp.root, other, NOTE_KEY_NAME))
    r = run_prov("log", "witness", forged, "--key", split["dir"] / "w1/key.pem", "--state", tmp_path / "s",
                 "--trust", split["trust"])
    assert r.returncode == 1 and "no valid signature by a trusted log key" in r.err
    assert not (tmp_path / "s").exists()


def test_two_witness_runs_at_once_cosign_one_side_only(split):
    """The state is locked from read to write: of two forks at one size, at most one is cosigned."""
    d = split["dir"]
    procs = [subprocess.Popen([PROV, "log", "witness", split["note"](n),
                               "--key", d / "w1/key.pem", "--state", d / "race.state", "--trust", split["trust"]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in ("a20", "b20")]
    codes = sorted(p.wait() for p in procs)
    errs = "".join(p.stderr.read() for p in procs)
    assert codes == [0, 1], errs
    assert "fork" in errs


def test_the_cosignature_is_c2sp_cosignature_v1(split):
    """From c2sp.org/tlog-cosignature: '— <key name> base64(32-bit key ID || signature)'; key ID
    SHA-256(<name> || "\\n" || 0x04 || 32-byte Ed25519 public key)[:4]; the signature a u64 big-endian
    timestamp then 64 bytes of Ed25519 over 'cosignature/v1', 'time <timestamp>' and the note body."""
    out = witness(split, "a20", check=0)
    note = split["notes"]["a20"]
    assert out["note"].startswith(note) and out["note"][len(note):] == out["cosignature"]
    line = out["cosignature"]
    assert line.startswith("\u2014 ") and line.endswith("\n") and line.count("\n") == 1
    name, b64 = line[2:-1].split(" ")
    raw = base64.b64decode(b64, validate=True)
    assert len(raw) == 4 + 8 + 64
    pub = serialization.load_pem_public_key((split["dir"] / "w1/key.pub.pem").read_bytes())
    pub_raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw[:4] == hashlib.sha256(name.encode() + b"\n" + b"\x04" + pub_raw).digest()[:4]
    ts = int.from_bytes(raw[4:12], "big")
    assert ts == out["time"] and ts < 2 ** 63
    body = note.split("\n\n")[0] + "\n"
    Ed25519PublicKey.from_public_bytes(pub_raw).verify(raw[12:], b"cosignature/v1\ntime %d\n" % ts + body.encode())
    # the vkey: name+hash+base64(0x04 || key)
    vname, vhash, vdata = out["vkey"].split("+", 2)
    assert (vname, bytes.fromhex(vhash), base64.b64decode(vdata)) == (name, raw[:4], b"\x04" + pub_raw)


def test_cosign_add_collects_into_store_manifest_and_tiles(split, tmp_path):
    d = split["dir"]
    w1 = witness(split, "a25", check=0)
    (tmp_path / "w1.cosigned").write_text(w1["note"])
    w2 = run_prov("log", "witness", split["note"]("a25"), "--key", d / "w2/key.pem", "--state", tmp_path / "w2.s",
                  "--trust", split["trust"], "--out", tmp_path / "w2.cosigned")
    assert w2.returncode == 0, w2.err
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"payload": "", "payloadType": "x", "signatures": [],
                                    "log": {"checkpoint": split["notes"]["a25"]}}))
    before = manifest.read_bytes()
    # w2 is not a witness of this policy: refused with --trust, and nothing is written anywhere
    r = run_prov("log", "cosign-add", tmp_path / "w1.cosigned", tmp_path / "w2.cosigned", "--manifest", manifest,
                 "--trust", split["trust"], store=d / "a")
    assert r.returncode == 2 and "not a valid cosignature by a witness" in r.err
    assert manifest.read_bytes() == before
    # a copy of another log's checkpoint: refused
    r = run_prov("log", "cosign-add", split["note"]("b21"), "--trust", split["trust"], store=d / "a")
    assert r.returncode == 2 and "not a checkpoint this store's log signed" in r.err
    r = run_prov("log", "cosign-add", tmp_path / "w1.cosigned", store=d / "a")  # whose witnesses? say
    assert r.returncode == 2 and "--trust" in r.err
    run_prov("trust", "rotate", "--from", split["trust"], "--key", d / "root/key.pem", "--witness-key",
             d / "w1/key.pub.pem", "--witness-key", d / "w2/key.pub.pem", "--expires", "2099-01-01T00:00:00Z",
             "--out", d / "both.json", check=0)
    r = run_prov("log", "cosign-add", tmp_path / "w1.cosigned", tmp_path / "w2.cosigned", "--manifest", manifest,
                 "--trust", d / "both.json", "--json", store=d / "a", check=0)
    assert json.loads(r.out)["added"] == 2
    note = json.loads(manifest.read_text())["log"]["checkpoint"]
    assert note.count("\n\u2014 ") == 3 and w1["cosignature"] in note
    run_prov("log", "cosign-add", tmp_path / "w1.cosigned", "--trust", d / "both.json", store=d / "a",
             check=0)  # idempotent
    run_prov("log", "publish", "--out", d / "pub-a", store=d / "a", check=0)
    assert (d / "pub-a/checkpoint").read_text() == note
    # signing the same checkpoint again keeps its cosignatures; the log still verifies
    a = Store(d / "a")
    assert logbook.checkpoint(a, split["key"]) == note
    assert translog.open_log(a).recompute() == []
    a.close()


def test_the_state_is_held_from_read_to_write(tmp_path):
    """A second holder waits for the first to finish: without the lock, two runs could each accept one
    side of a fork."""
    import threading
    from provenance.log.seen import Seen
    path = tmp_path / "state"
    entered = threading.Event()

    def second():
        with Seen(path):
            entered.set()
    with Seen(path):
        t = threading.Thread(target=second)
        t.start()
        assert not entered.wait(0.5)  # a slow start only hides a broken lock: a failure here is never false
    assert entered.wait(60)
    t.join()


def test_a_new_log_under_the_same_key_is_not_watched(split, tmp_path):
    """The lab starts a second log (another origin) with the same key: a witness that has never been told
    of it refuses, and a monitor pinned to the first log fails it."""
    c = Store(tmp_path / "c", create=True)
    translog.open_log(c).append_many([entry("c", i) for i in range(5)])
    note = logbook.checkpoint(c, split["key"])
    publish(c, str(tmp_path / "pub-c"))
    c.close()
    (tmp_path / "c.note").write_text(note)
    r = run_prov("log", "witness", tmp_path / "c.note", "--key", split["dir"] / "w1/key.pem", "--state",
                 tmp_path / "w.state", "--trust", split["trust"])
    assert r.returncode == 1 and "not a log this witness watches" in r.err
    (tmp_path / "log.vkey").write_text(translog.note_verifier(NOTE_KEY_NAME, split["key"].public_key().public_bytes_raw()))
    r = run_prov("log", "witness", tmp_path / "c.note", "--key", split["dir"] / "w1/key.pem", "--state",
                 tmp_path / "w.state", "--vkey", tmp_path / "log.vkey")
    assert r.returncode == 1 and "--origin ORIGIN" in r.err
    run_prov("log", "witness", tmp_path / "c.note", "--key", split["dir"] / "w1/key.pem", "--state",
             tmp_path / "w.state", "--vkey", tmp_path / "log.vkey", "--origin", note.split("\n")[0], check=0)
    r = run_prov("log", "audit", tmp_path / "pub-c", "--trust", split["trust"], "--json")
    assert r.returncode == 1 and "checkpoint: of the log" in r.out


def test_a_linked_state_is_the_same_state(split, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "etc").mkdir()
    real = tmp_path / "real/state"
    run_prov("log", "witness", split["note"]("a20"), "--key", split["dir"] / "w1/key.pem", "--state", real,
             "--trust", split["trust"], check=0)
    (tmp_path / "etc/state").symlink_to("../real/state")
    r = run_prov("log", "witness", split["note"]("b20"), "--key", split["dir"] / "w1/key.pem", "--state",
                 tmp_path / "etc/state", "--trust", split["trust"])
    assert r.returncode == 1 and "fork" in r.err
    assert (tmp_path / "etc/state").is_symlink()


def test_bad_input_is_one_line(split, tmp_path):
    d = split["dir"]
    for name in ("my witness", "a+b", "tab\there"):
        r = run_prov("log", "witness", split["note"]("a20"), "--key", d / "w1/key.pem", "--state", tmp_path / "s",
                     "--trust", split["trust"], "--name", name)
        assert r.returncode == 2 and "witness name" in r.err and r.err.count("\n") == 1, r.err
    assert not (tmp_path / "s").exists()
    (tmp_path / "junk.note").write_text("not a note\n")
    r = run_prov("log", "witness", tmp_path / "junk.note", "--key", d / "w1/key.pem", "--state", tmp_path / "s",
                 "--trust", split["trust"])
    assert r.returncode == 2 and "not a checkpoint" in r.err
    for url in ("http://127.0.0.1:99999/x", "http://[::1/x", "ftp://example/x", "http://127.0.0.1:1/x?y=1"):
        r = run_prov("log", "audit", url, "--trust", split["trust"])
        assert r.returncode == 2 and r.err.count("\n") == 1 and "internal error" not in r.err, (url, r.err)
    r = run_prov("log", "audit", d / "pub-a", "--trust", split["trust"], "--max-entries", "10")
    assert r.returncode == 2 and "beyond --max-entries 10" in r.err


def test_publish_never_writes_through_a_link(split, tmp_path):
    out, outside = tmp_path / "pub", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "tile").symlink_to(outside)
    r = run_prov("log", "publish", "--out", out, store=split["dir"] / "a")
    assert r.returncode == 2 and "refusing to publish through it" in r.err
    assert not any(outside.iterdir()) and not (out / "checkpoint").exists()
