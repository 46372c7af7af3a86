import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rfc8785

from conftest import prov_json, run_prov
from provenance.core import signing


def verify(lab, *extra, manifest=None, trust=None, check=None):
    args = ["verify", manifest or lab["manifest"], "--trust", trust or lab["trust"],
            "--archive", lab["archive"], "--runtime", lab["rt"], *extra, "--json"]
    r = run_prov(*args)
    if check is not None:
        assert r.returncode == check, r.out + r.err
    return r.returncode, (json.loads(r.out) if r.out.strip() else None), r


def failed(out) -> set:
    return {c["name"] for c in out["checks"] if not c["ok"]}


def load(p):
    return json.loads(Path(p).read_text())


def save(p, env):
    Path(p).write_text(json.dumps(env))
    return p


def statement(env):
    return json.loads(base64.b64decode(env["payload"]))


def resign(lab, env, mutate=None, keys="a", payload=None, ptype=signing.IN_TOTO):
    """A manifest an insider with trusted key(s) could make: mutated statement, valid signatures."""
    if payload is None:
        st = statement(env)
        if mutate:
            mutate(st)
        payload = rfc8785.dumps(st)
    out = {"payload": base64.b64encode(payload).decode(), "payloadType": ptype, "signatures": []}
    for k in keys:
        out["signatures"].append(signing.sign(signing.load_private(lab["key"](k)), ptype, payload))
    return out


def test_pae_test_vector():
    assert signing.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_clean_release_verifies_with_trust_and_with_key(lab):
    rc, out, r = verify(lab, check=0)
    assert out["ok"] and [c["name"] for c in out["checks"]][:5] == \
        ["signatures", "payload_type", "strict_json", "threshold", "statement_schema"]
    run_prov("verify", lab["manifest"], "--key", lab["pub"]("a"), "--no-files", check=0)
    human = run_prov("verify", lab["manifest"], "--key", lab["pub"]("a"), "--archive", lab["archive"],
                     "--runtime", lab["rt"]).out
    assert "✓ archive_digest" in human and "VERIFIED" in human


def test_record_file_check(lab, tmp_path):
    rec = tmp_path / "record.json"
    rec.write_bytes(run_prov("cat", lab["record"]["digest"]["sha256"], store=lab["store"], check=0).stdout)
    verify(lab, "--record", rec, check=0)
    doc = json.loads(rec.read_text())
    doc["result"]["canonical_score"] = 1.0
    rec.write_bytes(rfc8785.dumps(doc))
    rc, out, _ = verify(lab, "--record", rec, check=1)
    assert failed(out) == {"record_digest"}


def test_interop_with_securesystemslib(lab):
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey
    env = load(lab["manifest"])
    pub = signing.load_public(lab["pub"]("a"))
    key = SSlibKey.from_crypto(pub, keyid=signing.keyid(pub))
    assert signing.keyid(pub) in Envelope.from_dict(env).verify([key], 1)
    st = statement(env)
    assert base64.b64decode(env["payload"]) == rfc8785.dumps(st)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert [s["name"] for s in st["subject"]] == ["archive.zip", "runtime/"]


def flip_b64(s: str, at: int = 10) -> str:
    raw = bytearray(base64.b64decode(s))
    raw[at] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def test_tamper_payload_byte(lab):
    env = load(lab["manifest"])
    env["payload"] = flip_b64(env["payload"], 40)
    assert failed(verify(lab, manifest=save(lab["dir"] / "m.json", env), check=1)[1]) == {"signatures"}


def test_tamper_signature_byte(lab):
    env = load(lab["manifest"])
    env["signatures"][0]["sig"] = flip_b64(env["signatures"][0]["sig"], 3)
    assert failed(verify(lab, manifest=save(lab["dir"] / "m.json", env), check=1)[1]) == {"signatures"}


def test_tamper_archive_byte(lab):
    data = bytearray(lab["archive"].read_bytes())
    data[12345] ^= 0x80
    lab["archive"].write_bytes(bytes(data))
    assert failed(verify(lab, check=1)[1]) == {"archive_digest"}


@pytest.mark.parametrize("rel", ["inflate.sh", "model.bin", "lib/libSvtAv1Enc.so.2.3.0", "src/codec.py"])
def test_tamper_each_runtime_file(lab, rel):
    p = lab["rt"] / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 1
    p.write_bytes(bytes(data))
    assert failed(verify(lab, check=1)[1]) == {"runtime_tree"}


@pytest.mark.parametrize("change", ["add", "remove", "exec", "relink"])
def test_tamper_runtime_shape(lab, change):
    rt = lab["rt"]
    if change == "add":
        (rt / "extra.py").write_text("x")
    elif change == "remove":
        (rt / "src/codec.py").unlink()
    elif change == "exec":
        (rt / "inflate.sh").chmod(0o644)
    else:
        os.unlink(rt / "lib/libSvtAv1Enc.so.2")
        os.symlink("../model.bin", rt / "lib/libSvtAv1Enc.so.2")
    assert failed(verify(lab, check=1)[1]) == {"runtime_tree"}


def test_payloads_swapped_between_manifests(lab):
    a = load(lab["manifest"])
    b = resign(lab, a, lambda st: st["predicate"].update(name="other"))
    a["payload"], b["payload"] = b["payload"], a["payload"]
    assert failed(verify(lab, manifest=save(lab["dir"] / "m.json", a), check=1)[1]) == {"signatures"}
    assert failed(verify(lab, manifest=save(lab["dir"] / "n.json", b), check=1)[1]) == {"signatures"}


def test_untrusted_key(lab):
    env = resign(lab, load(lab["manifest"]), keys="b")
    env["signatures"][0]["keyid"] = signing.keyid(signing.load_public(lab["pub"]("a")))  # a lying hint
    assert failed(verify(lab, manifest=save(lab["dir"] / "m.json", env), check=1)[1]) == {"signatures"}


@pytest.fixture
def two_of_three(lab):
    t = lab["dir"] / "trust2.json"
    run_prov("trust", "init", *[x for k in "abc" for x in ("--release-key", lab["pub"](k))], "--threshold", "2",
             "--expires", "2099-01-01T00:00:00Z", "--out", t, check=0)
    return t


def test_same_key_twice_counts_once(lab, two_of_three):
    env = resign(lab, load(lab["manifest"]), keys="aa")
    assert len(env["signatures"]) == 2
    assert failed(verify(lab, manifest=save(lab["dir"] / "m.json", env), trust=two_of_three, check=1)[1]) == {"threshold"}


def test_threshold_unmet_then_cosigned(lab, two_of_three):
    assert failed(verify(lab, trust=two_of_three, check=1)[1]) == {"threshold"}
    run_prov("release", "sign", lab["manifest"], "--key", lab["key"]("c"), check=0)
    assert run_prov("release", "sign", lab["manifest"], "--key", lab["key"]("c")).returncode == 2  # no double sign
    verify(lab, trust=two_of_three, check=0)


def test_payload_type_changed(lab):
    env = load(lab["manifest"])
    env["payloadType"] = "application/json"
    assert failed(verify(lab, manifest=save(lab["dir"] / "m.json", env), check=1)[1]) == {"signatures"}
    signed = resign(lab, load(lab["manifest"]), ptype="application/json")  # signed, but not in-toto
    assert failed(verify(lab, manifest=save(lab["dir"] / "n.json", signed), check=1)[1]) == {"payload_type"}


def test_duplicated_json_key(lab):
    env = load(lab["manifest"])
    payload = base64.b64decode(env["payload"])
    dup = payload.replace(b'{"_type":', b'{"_type":"x","_type":', 1)
    assert dup != payload
    signed = resign(lab, env, payload=dup)
    assert failed(verify(lab, manifest=save(lab["dir"] / "m.json", signed), check=1)[1]) == {"strict_json"}
    raw = json.dumps(env)[:-1] + ', "payloadType": "application/vnd.in-toto+json"}'
    (lab["dir"] / "e.json").write_text(raw)
    assert failed(verify(lab, manifest=lab["dir"] / "e.json", check=1)[1]) == {"strict_json"}


def test_score_edited(lab):
    env = load(lab["manifest"])
    edited = resign(lab, env, lambda st: st["predicate"]["score"].update(canonical=0.5))
    assert failed(verify(lab, manifest=save(lab["dir"] / "m.json", edited), check=1)[1]) == {"score_recomputes"}
    forged = dict(env, payload=edited["payload"])  # same edit without the key
    assert failed(verify(lab, manifest=save(lab["dir"] / "n.json", forged), check=1)[1]) == {"signatures"}


def test_expired(lab):
    env = resign(lab, load(lab["manifest"]), lambda st: st["predicate"].update(expires="2030-01-01T00:00:00Z"))
    m = save(lab["dir"] / "m.json", env)
    verify(lab, manifest=m, check=0)
    assert failed(verify(lab, "--at", "2031-01-01T00:00:00Z", manifest=m, check=1)[1]) == {"not_expired"}
    # the trust policy expires too
    assert failed(verify(lab, "--at", "2100-01-01T00:00:00Z", check=1)[1]) == {"not_expired"}


def test_version_rollback(lab):
    s = lab["dir"] / "state.json"
    old = lab["dir"] / "v1.json"
    shutil.copy(lab["manifest"], old)
    rec = lab["record"]["digest"]["sha256"]
    run_prov("release", "create", "--record", rec, "--archive", lab["archive"], "--runtime", lab["rt"], "--name",
             "demo", "--key", lab["key"]("a"), "--out", lab["manifest"], store=lab["store"], check=0)
    st = statement(load(lab["manifest"]))["predicate"]
    assert st["version"] == 2 and st["previous"] == __import__("hashlib").sha256(
        base64.b64decode(load(old)["payload"])).hexdigest()
    verify(lab, "--state", s, check=0)
    assert failed(verify(lab, "--state", s, manifest=old, check=1)[1]) == {"rollback"}
    verify(lab, "--state", s, check=0)


def test_release_create_refuses_mismatched_files(lab, tmp_path):
    other = tmp_path / "other.zip"
    other.write_bytes(b"not the archive")
    r = run_prov("release", "create", "--record", lab["record"]["digest"]["sha256"], "--archive", other,
                 "--runtime", lab["rt"], "--name", "x", "--key", lab["key"]("a"), "--out", tmp_path / "o.json",
                 store=lab["store"])
    assert r.returncode == 1 and "does not match the record" in r.err and not (tmp_path / "o.json").exists()
    (lab["rt"] / "inflate.sh").write_text("changed")
    r = run_prov("release", "create", "--record", lab["record"]["digest"]["sha256"], "--archive", lab["archive"],
                 "--runtime", lab["rt"], "--name", "x", "--key", lab["key"]("a"), "--out", tmp_path / "o.json",
                 store=lab["store"])
    assert r.returncode == 1 and "does not match the record" in r.err


def test_export_checksums_with_stock_tools(lab):
    out = lab["dir"]
    run_prov("export-checksums", lab["manifest"], "--runtime", lab["rt"], "--archive", lab["archive"],
             "--out", out, check=0)
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out, check=True)
    if shutil.which("b3sum"):
        subprocess.run(["b3sum", "--quiet", "-c", "B3SUMS"], cwd=out, check=True)
    (lab["rt"] / "model.bin").write_bytes(b"tampered")
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out, capture_output=True).returncode == 1
    r = run_prov("export-checksums", lab["manifest"], "--runtime", lab["rt"], "--out", out)
    assert r.returncode == 1 and "not the released runtime" in r.err


def test_keys(tmp_path):
    out = prov_json("key", "generate", "--out", tmp_path / "k")
    assert (tmp_path / "k/key.pem").stat().st_mode & 0o777 == 0o600
    pub = signing.load_public(tmp_path / "k/key.pub.pem")
    import hashlib
    assert out["keyid"] == hashlib.sha256(signing.raw_public(pub)).hexdigest()
    before = (tmp_path / "k/key.pem").read_bytes()
    r = run_prov("key", "generate", "--out", tmp_path / "k")
    assert r.returncode == 2 and "refusing to overwrite" in r.err and (tmp_path / "k/key.pem").read_bytes() == before
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    run_prov("key", "generate", "--out", tmp_path / "e", "--passphrase-file", pw, check=0)
    assert b"ENCRYPTED" in (tmp_path / "e/key.pem").read_bytes()
    signing.load_private(tmp_path / "e/key.pem", pw)
    with pytest.raises(signing.ProvError, match="encrypted"):
        signing.load_private(tmp_path / "e/key.pem")
    bad = tmp_path / "bad"
    bad.write_text("wrong")
    with pytest.raises(signing.ProvError, match="wrong passphrase"):
        signing.load_private(tmp_path / "e/key.pem", bad)


@pytest.mark.parametrize("content,needle", [(b"nope", "not valid JSON"), (b'{"payload": 1}', "not a DSSE envelope"),
                                            (b'{"payload":"!!","payloadType":"x","signatures":[]}', "base64")])
def test_malformed_manifest_exit_2(lab, content, needle):
    m = lab["dir"] / "bad.json"
    m.write_bytes(content)
    r = run_prov("verify", m, "--trust", lab["trust"], "--no-files")
    assert r.returncode == 2 and needle in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_bad_trust_exit_2(lab):
    t = lab["dir"] / "t.json"
    doc = load(lab["trust"])
    name = next(iter(doc["keys"]))
    doc["keys"][name]["keyid"] = "0" * 64
    t.write_text(json.dumps(doc))
    r = run_prov("verify", lab["manifest"], "--trust", t, "--no-files")
    assert r.returncode == 2 and "keyid does not match" in r.err
    assert run_prov("verify", lab["manifest"], "--no-files").returncode == 2  # no trust given


def test_verify_imports_nothing_heavy(lab):
    code = ("import sys; from click.testing import CliRunner; from provenance.cli.app import cli; "
            f"r = CliRunner().invoke(cli, ['verify', {str(lab['manifest'])!r}, '--trust', {str(lab['trust'])!r}, "
            f"'--archive', {str(lab['archive'])!r}, '--runtime', {str(lab['rt'])!r}]); "
            "assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('torch', 'av', 'dvc', 'pydantic', 'numpy') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "clean", r.stderr + r.stdout


def test_verifier_schema_agrees_with_models(lab):
    """The fast verifier checks the generated schema; the pydantic model must agree on both sides."""
    from provenance.records import jsonschema_lite
    from provenance.records.models import Statement
    st = statement(load(lab["manifest"]))
    Statement.model_validate(st)
    assert jsonschema_lite.validate(st, "release-statement.v1.json") == []
    for mutate in (lambda s: s.pop("predicate"), lambda s: s["predicate"].update(version=0),
                   lambda s: s["predicate"].update(grade="S"), lambda s: s["subject"].pop(),
                   lambda s: s.update(extra=1), lambda s: s["subject"][0]["digest"].update(sha256="xyz")):
        bad = json.loads(json.dumps(st))
        mutate(bad)
        assert jsonschema_lite.validate(bad, "release-statement.v1.json")
        with pytest.raises(Exception):
            Statement.model_validate(bad)
