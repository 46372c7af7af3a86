"""Verify asks for witnesses (#29): when the trust policy names a witness role, a release's checkpoint
needs its threshold of valid, fresh cosignatures from distinct witness keys, and each missing or bad
one is named. A release made under a policy without the role still verifies under that policy."""

import json
import time

import pytest

from conftest import RUNTIME_SPEC, make_tree, prov_json, report, run_prov


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Release key, log key, witnesses w1 w2 (the policy's, 2 of 2, 1 hour) and w3 (nobody's); a release
    logged in store A, and a second log B for a cosignature over another origin."""
    d = tmp_path_factory.mktemp("witnesses")
    for k in ("rel", "log", "root", "w1", "w2", "w3"):
        run_prov("key", "generate", "--out", d / k, check=0)
    rt = make_tree(d / "runtime", RUNTIME_SPEC)
    archive = d / "archive.zip"
    archive.write_bytes(b"\0" * 2_244_900)
    (d / "report.txt").write_bytes(report())
    rec = prov_json("adjudicate", d / "report.txt", "--archive", archive, "--runtime", rt, store=d / "A")
    manifest = d / "manifest.json"
    run_prov("release", "create", "--record", rec["digest"]["sha256"], "--archive", archive, "--runtime", rt,
             "--name", "demo", "--key", d / "rel/key.pem", "--log-key", d / "log/key.pem", "--out", manifest,
             store=d / "A", check=0)
    note = json.loads(manifest.read_text())["log"]["checkpoint"]
    run_prov("trust", "init", "--release-key", d / "rel/key.pub.pem", "--log-key", d / "log/key.pub.pem",
             "--expires", "2099-01-01T00:00:00Z", "--out", d / "t.json", check=0)
    (d / "log.vkey").write_text(next(k["note_verifier"] for k in json.loads((d / "t.json").read_text())["keys"].values()
                                     if "note_verifier" in k) + "\n")
    common = ["--release-key", d / "rel/key.pub.pem", "--log-key", d / "log/key.pub.pem",
              "--expires", "2099-01-01T00:00:00Z"]
    witnessed = [*common, "--log-origin", note.split("\n")[0], "--root-key", d / "root/key.pub.pem"]
    run_prov("trust", "init", *common, "--out", d / "plain.json", check=0)
    run_prov("trust", "init", *witnessed, "--witness-key", d / "w1/key.pub.pem", "--witness-key",
             d / "w2/key.pub.pem", "--witness-threshold", "2", "--witness-max-age", "3600", "--out", d / "trust.json",
             check=0)
    (d / "release.note").write_text(note)
    # another log (its own origin), signed by the same log key, cosigned by w2
    other = prov_json("adjudicate", d / "report.txt", "--archive", archive, "--runtime", rt, store=d / "B")
    run_prov("log", "append", other["digest"]["sha256"], store=d / "B", check=0)
    run_prov("log", "checkpoint", "--key", d / "log/key.pem", "--out", d / "other.note", store=d / "B", check=0)
    return dict(dir=d, manifest=manifest, rt=rt, archive=archive, note=note, witnessed=witnessed)


def cosigned(lab, w, note="release.note", ts=None):
    """W's cosignature line on a checkpoint (through `prov log witness`, or at a chosen time)."""
    d = lab["dir"]
    if ts is None:
        r = prov_json("log", "witness", d / note, "--key", d / w / "key.pem", "--state", d / f"{w}-{note}.state",
                      "--vkey", d / "log.vkey", "--origin", (d / note).read_text().split("\n")[0])
        return r["cosignature"]
    from provenance.core.signing import load_private
    from provenance.log import cosign
    key = load_private(d / w / "key.pem")
    body = (d / note).read_text().split("\n\n")[0] + "\n"
    return cosign.sign(cosign.default_name(key.public_key().public_bytes_raw()), key, ts, body)


def verify(lab, lines, *extra, trust="trust.json", check):
    env = json.loads(lab["manifest"].read_text())
    env["log"]["checkpoint"] = lab["note"] + "".join(lines)
    m = lab["dir"] / "case.json"
    m.write_text(json.dumps(env))
    r = run_prov("verify", m, "--trust", lab["dir"] / trust, "--no-files", "--json", *extra)
    assert r.returncode == check, r.out + r.err
    return {c["name"]: c for c in json.loads(r.out)["checks"]}


def test_zero_one_two_of_two(lab):
    w1, w2 = cosigned(lab, "w1"), cosigned(lab, "w2")
    c = verify(lab, [], check=1)["log_witnesses"]
    assert not c["ok"] and c["detail"].startswith("0 of 2")
    assert c["detail"].count(": no cosignature") == 2
    c = verify(lab, [w1], check=1)["log_witnesses"]
    assert not c["ok"] and c["detail"].startswith("1 of 2") and "w2" not in c["detail"].split(";")[0]
    assert verify(lab, [w1, w2], check=0)["log_witnesses"]["ok"]
    assert verify(lab, [w2, w1], check=0)["log_witnesses"]["ok"]  # order does not matter


def test_one_key_twice_counts_once(lab):
    now = int(time.time())
    c = verify(lab, [cosigned(lab, "w1", ts=now - 5), cosigned(lab, "w1", ts=now - 1)], check=1)["log_witnesses"]
    assert c["detail"].startswith("1 of 2")


def test_an_expired_cosignature(lab):
    now = int(time.time())
    old = cosigned(lab, "w2", ts=now - 3 * 3600)
    c = verify(lab, [cosigned(lab, "w1"), old], check=1)["log_witnesses"]
    assert "older than the policy's 3600 s" in c["detail"]
    # the same two, judged as of two hours earlier: both fresh then, but w1's was made after: not counted
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 2 * 3600))
    c = verify(lab, [cosigned(lab, "w1"), old], "--at", at, check=1)["log_witnesses"]
    assert "after the time of verification" in c["detail"] and c["detail"].startswith("1 of 2")


def test_a_cosignature_over_another_origin(lab):
    other = cosigned(lab, "w2", note="other.note")
    c = verify(lab, [cosigned(lab, "w1"), other], check=1)["log_witnesses"]
    assert "does not verify over this checkpoint" in c["detail"]


def test_strangers_and_forged_lines_do_not_count(lab):
    stranger = cosigned(lab, "w3")  # a valid cosignature, by a key the policy does not name
    w1 = cosigned(lab, "w1")
    name, b64 = w1[2:-1].split(" ")
    import base64
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    forged = f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n"
    c = verify(lab, [stranger, forged, cosigned(lab, "w2")], check=1)["log_witnesses"]
    assert c["detail"].startswith("1 of 2") and "does not verify" in c["detail"]


def test_a_release_before_the_role_verifies_under_its_policy(lab):
    d = lab["dir"]
    checks = verify(lab, [], trust="plain.json", check=0)
    assert "log_witnesses" not in checks and checks["log_checkpoint"]["ok"]
    # the policy rotated to one that names witnesses: a judge walking the chain asks for them
    chain = d / "chain"
    chain.mkdir()
    origin = lab["note"].split("\n")[0]
    r = run_prov("trust", "rotate", "--from", d / "plain.json", "--key", d / "rel/key.pem", "--witness-key",
                 d / "w1/key.pub.pem", "--log-origin", origin, "--expires", "2099-01-01T00:00:00Z",
                 "--out", chain / "2.trust.json")
    assert r.returncode == 2 and "root role of its own" in r.err  # the lab's own root could pick its witnesses
    run_prov("trust", "rotate", "--from", d / "plain.json", "--key", d / "rel/key.pem", "--key", d / "root/key.pem",
             "--root-key", d / "root/key.pub.pem", "--witness-key", d / "w1/key.pub.pem", "--log-origin", origin,
             "--expires", "2099-01-01T00:00:00Z", "--out", chain / "2.trust.json", check=0)
    r = run_prov("verify", lab["manifest"], "--trust", d / "plain.json", "--trust-chain", chain, "--no-files", "--json")
    assert r.returncode == 1 and "0 of 1 required witness cosignature" in r.out
    env = json.loads(lab["manifest"].read_text())
    env["log"]["checkpoint"] += cosigned(lab, "w1")
    (d / "cosigned.json").write_text(json.dumps(env))
    run_prov("verify", d / "cosigned.json", "--trust", d / "plain.json", "--trust-chain", chain, "--no-files",
             check=0)


def test_a_witness_cannot_be_the_lab(lab, tmp_path):
    d = lab["dir"]
    for key in ("log", "rel"):
        r = run_prov("trust", "init", *lab["witnessed"], "--witness-key", d / key / "key.pub.pem",
                     "--out", tmp_path / "t.json")
        assert r.returncode == 2 and "witness" in r.err, r.err
        assert not (tmp_path / "t.json").exists()
    r = run_prov("trust", "init", "--release-key", d / "rel/key.pub.pem", "--witness-key", d / "w1/key.pub.pem",
                 "--expires", "2099-01-01T00:00:00Z", "--out", tmp_path / "t.json")
    assert r.returncode == 2 and "needs a log role" in r.err
    r = run_prov("trust", "init", *lab["witnessed"], "--witness-key", d / "w1/key.pub.pem", "--witness-threshold", "2",
                 "--out", tmp_path / "t.json")
    assert r.returncode == 2 and "witness threshold 2" in r.err
    r = run_prov("trust", "init", "--release-key", d / "rel/key.pub.pem", "--log-key", d / "log/key.pub.pem",
                 "--root-key", d / "root/key.pub.pem", "--witness-key", d / "w1/key.pub.pem",
                 "--expires", "2099-01-01T00:00:00Z", "--out", tmp_path / "t.json")
    assert r.returncode == 2 and "names its origin" in r.err
    r = run_prov("trust", "init", *lab["witnessed"][:-2], "--witness-key", d / "w1/key.pub.pem",
                 "--out", tmp_path / "t.json")
    assert r.returncode == 2 and "root role of its own" in r.err


def test_a_vkey_names_a_witness(lab, tmp_path):
    """A witness with a name of its own gives the judge its vkey; cosignatures under that name count."""
    d = lab["dir"]
    r = prov_json("log", "witness", d / "release.note", "--key", d / "w3/key.pem", "--state", tmp_path / "s",
                  "--trust", d / "trust.json", "--name", "witness.example/w3")
    (tmp_path / "w3.vkey").write_text(r["vkey"] + "\n")
    run_prov("trust", "init", *lab["witnessed"], "--witness-key", tmp_path / "w3.vkey", "--out", tmp_path / "t.json",
             check=0)
    (d / "w3.json").write_text((tmp_path / "t.json").read_text())
    c = verify(lab, [r["cosignature"]], trust="w3.json", check=0)["log_witnesses"]
    assert "witness.example/w3" in c["detail"]
    assert not verify(lab, [cosigned(lab, "w3")], trust="w3.json", check=1)["log_witnesses"]["ok"]  # another name


def test_the_policy_pins_the_log(lab):
    """A checkpoint of another log, even one signed by the same log key and cosigned, is not this release's."""
    d = lab["dir"]
    env = json.loads(lab["manifest"].read_text())
    env["log"]["checkpoint"] = (d / "other.note").read_text() + cosigned(lab, "w1", note="other.note") \
        + cosigned(lab, "w2", note="other.note")
    (d / "elsewhere.json").write_text(json.dumps(env))
    r = run_prov("verify", d / "elsewhere.json", "--trust", d / "trust.json", "--no-files", "--json")
    assert r.returncode == 1
    c = {c["name"]: c for c in json.loads(r.out)["checks"]}["log_checkpoint"]
    assert not c["ok"] and f"not {lab['note'].split(chr(10))[0]}" in c["detail"]
    # without the pin, the statement's own origin still binds it
    r = run_prov("verify", d / "elsewhere.json", "--trust", d / "plain.json", "--no-files", "--json")
    c = {c["name"]: c for c in json.loads(r.out)["checks"]}["log_checkpoint"]
    assert r.returncode == 1 and not c["ok"] and "the statement names" in c["detail"]


def test_a_rotation_keeps_what_it_does_not_change(lab, tmp_path):
    d = lab["dir"]
    run_prov("trust", "rotate", "--from", d / "trust.json", "--key", d / "root/key.pem", "--witness-key",
             d / "w1/key.pub.pem", "--witness-key", d / "w3/key.pub.pem", "--expires", "2099-01-01T00:00:00Z",
             "--out", tmp_path / "2.json", check=0)
    role = json.loads((tmp_path / "2.json").read_text())["roles"]["witness"]
    assert role["threshold"] == 2 and role["max_age"] == 3600 and len(role["keys"]) == 2
    r = run_prov("trust", "rotate", "--from", d / "trust.json", "--key", d / "root/key.pem", "--witness-key",
                 d / "w1/key.pub.pem", "--expires", "2099-01-01T00:00:00Z", "--out", tmp_path / "3.json")
    assert r.returncode == 2 and "witness threshold 2" in r.err  # fewer witnesses: say the new threshold
    r = run_prov("trust", "rotate", "--from", d / "trust.json", "--key", d / "rel/key.pem", "--witness-key",
                 d / "w3/key.pub.pem", "--witness-threshold", "1", "--expires", "2099-01-01T00:00:00Z",
                 "--out", tmp_path / "4.json")
    assert r.returncode == 1 and "root key" in r.err  # the release key is no root of this policy
