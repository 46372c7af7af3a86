"""One concept, one home (issue 12): time, trust, the envelope reader, the check type, and verify
as mechanism (authenticate) then policy (appraise). Library-level: the CLI is not the subject."""
import ast
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import run_prov
from provenance.core import canonical, signing
from provenance.core.checks import Check
from provenance.core.clock import format_time, now_rfc3339, parse_time
from provenance.core.errors import ProvError
from provenance.log import logbook
from provenance.records.envelope import read_envelope, statement_of
from provenance.release.chain import load_trust
from provenance.release.trust import read_trust_doc, trust_from_doc, trust_policy
from provenance.release.verify import Outcome, appraise, authenticate
from provenance.store.objects import Store

PKG = Path(__file__).resolve().parent.parent / "provenance"


def test_time_one_parse_one_format():
    assert format_time(parse_time("2026-01-01T01:30:00+02:00", "t")) == "2025-12-31T23:30:00Z"
    assert parse_time("2026-01-01T00:00:00", "t").tzinfo is timezone.utc  # naive is UTC
    assert parse_time(now_rfc3339(), "now") <= datetime.now(timezone.utc)
    for bad in ("garbage", "", "2026-13-01T00:00:00Z", None, 5):
        with pytest.raises(ProvError, match=r"^--expires: not an RFC 3339 time"):
            parse_time(bad, "--expires")


def test_trust_init_with_a_bad_time_is_one_line(tmp_path):
    run_prov("key", "generate", "--out", tmp_path / "k", check=0)
    r = run_prov("trust", "init", "--release-key", tmp_path / "k/key.pub.pem", "--expires", "garbage",
                 "--out", tmp_path / "t.json", check=2)
    assert r.err.strip() == "prov: error: --expires: not an RFC 3339 time ('garbage')"
    assert not (tmp_path / "t.json").exists()


def _keys(tmp_path, *names):
    for n in names:
        signing.generate_key(tmp_path / n)
    return [str(tmp_path / n / "key.pub.pem") for n in names]


def test_trust_keeps_every_roles_threshold(tmp_path):
    rel, l1, l2 = _keys(tmp_path, "rel", "log1", "log2")
    doc = trust_policy([rel], 1, [l1, l2], "2099-01-01T00:00:00Z").model_dump(mode="json", by_alias=True,
                                                                               exclude_none=True)
    doc["roles"]["log"]["threshold"] = 2
    (tmp_path / "trust.json").write_text(json.dumps(doc))
    t = load_trust(str(tmp_path / "trust.json"), None)
    assert (t.threshold, t.log_threshold, len(t.log)) == (1, 2, 2)
    doc["roles"]["log"]["threshold"] = 3  # more than its keys: unreadable, not quietly lowered
    with pytest.raises(ProvError, match="role log threshold 3 exceeds its 2 key"):
        trust_from_doc(doc, "trust.json")


def test_a_checkpoint_needs_the_log_roles_threshold(tmp_path):
    s = Store(tmp_path / "store", create=True)
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    b3 = s.put_bytes(canonical.dumps({"_type": "https://in-toto.io/Statement/v1", "n": 1}), "statement").blake3
    bundle = logbook.release_log_bundle(s, b3, k1)  # the checkpoint carries k1's signature only
    trusted = {"k1": k1.public_key(), "k2": k2.public_key()}
    one = logbook.check_release_log(bundle, s.read_bytes(b3), trusted, None, threshold=1)
    two = logbook.check_release_log(bundle, s.read_bytes(b3), trusted, None, threshold=2)
    assert all(isinstance(c, Check) for c in one + two)
    assert all(c.ok for c in one)
    assert [(c.name, c.ok) for c in two] == [("log_checkpoint", False)] and "1 of 2 required" in two[0].detail
    s.close()


def test_verify_authenticates_before_it_appraises(lab):
    env, dupes = read_envelope(lab["manifest"])
    trust = load_trust(str(lab["trust"]), None)
    out = Outcome()
    v = authenticate(env, trust, out, dupes)
    assert v is not None and v.statement == statement_of(env) and len(v.signers) == 1
    assert [c.name for c in out.checks] == ["signatures", "payload_type", "strict_json", "threshold",
                                            "statement_schema", "ssh_signatures"]
    appraise(v, trust, out, archive=str(lab["archive"]), runtime=str(lab["rt"]))
    assert out.ok and {"archive_digest", "runtime_tree", "score_recomputes", "not_expired"} <= {c.name for c in out.checks}
    # a key the judge does not trust: authentication stops, nothing in the payload is looked at
    stranger = load_trust(None, str(lab["dir"] / "b/key.pub.pem"))
    out = Outcome()
    assert authenticate(env, stranger, out, dupes) is None
    assert [(c.name, c.ok) for c in out.checks] == [("signatures", False)] and out.statement is None


def test_appraisal_alone_catches_a_swapped_archive(lab, tmp_path):
    env, dupes = read_envelope(lab["manifest"])
    trust = load_trust(str(lab["trust"]), None)
    out = Outcome()
    v = authenticate(env, trust, out, dupes)
    other = tmp_path / "other.zip"
    other.write_bytes(b"not the archive")
    appraise(v, trust, out, archive=str(other))
    assert not out.ok and [c.name for c in out.checks if not c.ok] == ["archive_digest"]


def _offences(src: str):
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and n.slice.value == "payload":
            yield "reads an envelope's payload itself"
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("loads", "load_file") \
                and "trust" in "".join(ast.get_source_segment(src, a) or "" for a in n.args):
            yield "parses a trust policy itself (not read_trust_doc: strict JSON, schema, duplicate keys)"


def test_one_envelope_reader_and_one_trust_reader():
    """Only records/envelope.py opens an envelope's payload; only release/trust.py parses a trust
    policy file."""
    offenders = [f"{f.relative_to(PKG)}: {why}" for f in sorted(PKG.rglob("*.py"))
                 if f.relative_to(PKG).as_posix() not in ("records/envelope.py", "release/trust.py")
                 and not f.relative_to(PKG).as_posix().startswith("lab/miniature/")
                 for why in set(_offences(f.read_text()))]
    assert not offenders, offenders
    assert set(_offences("x = json.loads(Path(trust).read_text())\ny = env['payload']\n")) == {
        "reads an envelope's payload itself",
        "parses a trust policy itself (not read_trust_doc: strict JSON, schema, duplicate keys)"}


def test_a_trust_file_is_read_strictly(tmp_path):
    (tmp_path / "trust.json").write_text('{"schema": "comma-lab/trust-policy/v1", "version": 1, "version": 2}')
    with pytest.raises(ProvError, match="duplicate key"):
        read_trust_doc(tmp_path / "trust.json")


def test_log_consistency_reads_the_notes_before_the_store(tmp_path):
    (tmp_path / "a.note").write_text("garbage\n")
    r = run_prov("log", "consistency", tmp_path / "a.note", tmp_path / "a.note", store=tmp_path / "no-store", check=1)
    assert r.err.startswith("prov: error: checkpoint: not a signed note") and not (tmp_path / "no-store").exists()


@pytest.mark.parametrize("doc", [
    {"payload": "e30=", "payloadType": "x", "signatures": []},  # a statement of {}
    {"payload": "eyJzdWJqZWN0IjogNX0=", "payloadType": "x", "signatures": []},  # subject: 5
    {"schema": "comma-lab/eval-record/v1", "result": 3},
    {"schema": "comma-lab/eval-record/v1", "result": {"canonical_score": 1}},
])
def test_compare_with_a_hollow_claim_is_one_line(tmp_path, doc):
    """`prov replay --compare` reads the claim through the one envelope reader: a claim that is
    well-formed JSON but not the document it says is bad input, exit 2, before any replay."""
    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps(doc))
    (tmp_path / "up").mkdir()
    r = run_prov("replay", "--archive", claim, "--runtime", tmp_path / "up", "--upstream", tmp_path / "up",
                 "--compare", claim, store=tmp_path / "store", check=2)
    assert r.err.startswith(f"prov: error: {claim}: ") and len(r.err.strip().splitlines()) == 1, r.err
    assert "internal error" not in r.err and not (tmp_path / "store").exists()


def test_appraisal_has_no_side_effects_the_caller_saves_the_state(lab, tmp_path):
    """appraise reads the verifier's state and writes nothing; verify_manifest, its caller, remembers."""
    from provenance.release.verify import verify_manifest
    env, dupes = read_envelope(lab["manifest"])
    trust = load_trust(str(lab["trust"]), None)
    state = tmp_path / "state.json"
    out = Outcome()
    v = authenticate(env, trust, out, dupes)
    appraise(v, trust, out, archive=str(lab["archive"]), runtime=str(lab["rt"]), state=str(state))
    assert out.ok and "rollback" in {c.name for c in out.checks} and not state.exists()
    assert verify_manifest(lab["manifest"], trust, str(lab["archive"]), str(lab["rt"]), state=str(state)).ok
    assert json.loads(state.read_text())["releases"]["demo"]["version"] == 1
