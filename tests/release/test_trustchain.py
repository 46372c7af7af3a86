"""Trust policy rotation (TUF root rotation): a chain of versions, each signed by the previous
version's root threshold; forks, rollbacks, expired links and revoked keys refused."""

import base64
import json
import os
import shutil

import pytest

from conftest import RUNTIME_SPEC, inproc, make_tree, run_prov
from provenance.core import signing
from conftest import report

FAR = "2099-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    for k in "abc":
        inproc("key", "generate", "--out", d / k)
    pub = lambda k: d / k / "key.pub.pem"  # noqa: E731
    key = lambda k: d / k / "key.pem"  # noqa: E731
    inproc("trust", "init", "--release-key", pub("a"), "--root-key", pub("a"), "--root-key", pub("b"),
             "--root-threshold", "2", "--expires", FAR, "--out", d / "v1.json")
    (d / "chain").mkdir()
    # v2: a leaves the release role (revoked); b releases; root moves to b+c
    inproc("trust", "rotate", "--from", d / "v1.json", "--key", key("a"), "--key", key("b"), "--key", key("c"),
             "--release-key", pub("b"), "--root-key", pub("b"), "--root-key", pub("c"), "--root-threshold", "2",
             "--expires", FAR, "--out", d / "chain/2.trust.json")
    inproc("trust", "rotate", "--from", d / "chain/2.trust.json", "--key", key("b"), "--key", key("c"),
             "--release-key", pub("c"), "--root-key", pub("c"), "--expires", FAR,
             "--out", d / "chain/3.trust.json")
    rt = make_tree(d / "runtime", RUNTIME_SPEC)
    (d / "archive.zip").write_bytes(os.urandom(2_244_900))
    (d / "report.txt").write_bytes(report())
    rec = json.loads(inproc("adjudicate", d / "report.txt", "--archive", d / "archive.zip", "--runtime", rt,
                           "--json", store=d / "s").output)
    inproc("release", "create", "--record", rec["digest"]["sha256"], "--archive", d / "archive.zip",
             "--runtime", rt, "--name", "demo", "--key", key("a"), "--out", d / "by-a.json", store=d / "s")
    env = json.loads((d / "by-a.json").read_text())
    payload = base64.b64decode(env["payload"])
    for k in "bc":  # the same statement released by other keys
        (d / f"by-{k}.json").write_text(json.dumps(signing.envelope(payload, signing.load_private(key(k)))))
    return dict(dir=d, pub=pub, key=key, v1=d / "v1.json", chain=d / "chain")


def verify(c, manifest, *extra, chain_dir=None, subprocess=False):
    args = ["verify", c["dir"] / manifest, "--trust", c["v1"], "--no-files", "--json", *extra]
    if chain_dir is not False:
        args += ["--trust-chain", chain_dir or c["chain"]]
    if subprocess:  # the real command, as a judge runs it
        r = run_prov(*args)
        return r.returncode, (json.loads(r.out) if r.out.strip() else None), r.err
    r = inproc(*args, check=None)
    return r.exit_code, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


def copy_chain(c, tmp_path, versions=(2, 3)):
    d = tmp_path / "chain"
    d.mkdir()
    for v in versions:
        shutil.copyfile(c["chain"] / f"{v}.trust.json", d / f"{v}.trust.json")
    return d


def test_three_version_chain(chain):
    v3 = json.loads((chain["chain"] / "3.trust.json").read_text())
    assert v3["version"] == 3 and v3["signatures"] and v3["issued_at"]
    rc, out, err = verify(chain, "by-c.json", subprocess=True)
    assert rc == 0, err
    assert out["trust_chain"] == [1, 2, 3] and out["trust_version"] == 3
    # without the chain, only the pinned v1 counts: c is nobody
    rc, out, _ = verify(chain, "by-c.json", chain_dir=False)
    assert rc == 1 and out["checks"][0]["name"] == "signatures" and not out["checks"][0]["ok"]
    rc, out, _ = verify(chain, "by-a.json", chain_dir=False)
    assert rc == 0


def test_revoked_key_fails_after_rotation(chain):
    for m in ("by-a.json", "by-b.json"):  # a revoked at v2, b at v3
        rc, out, _ = verify(chain, m)
        assert rc == 1 and {c["name"] for c in out["checks"] if not c["ok"]} == {"signatures"}
        assert "trust policy v3" in out["checks"][0]["detail"]


def test_fork_refused(chain, tmp_path):
    d = copy_chain(chain, tmp_path)  # the chain folder also holds a v1 that is not the pinned one
    inproc("trust", "init", "--release-key", chain["pub"]("c"), "--expires", "2098-01-01T00:00:00Z",
           "--out", d / "1.trust.json")
    rc, _, err = verify(chain, "by-c.json", chain_dir=d, subprocess=True)
    assert rc == 1 and "fork" in err and len(err.strip().splitlines()) == 1


def test_rollback_refused(chain, tmp_path):
    state = tmp_path / "state.json"
    assert verify(chain, "by-c.json", "--state", state)[0] == 0
    older = copy_chain(chain, tmp_path, versions=(2,))
    rc, _, err = verify(chain, "by-b.json", "--state", state, chain_dir=older)  # v2 was valid for b ...
    assert rc == 1 and "rollback" in err  # ... but this verifier has seen v3
    mislabel = tmp_path / "mis"
    mislabel.mkdir()
    shutil.copyfile(chain["chain"] / "2.trust.json", mislabel / "2.trust.json")
    shutil.copyfile(chain["chain"] / "2.trust.json", mislabel / "3.trust.json")
    rc, _, err = verify(chain, "by-b.json", chain_dir=mislabel)
    assert rc == 1 and "rollback" in err


def test_expired_middle_version_and_gaps_refused(chain, tmp_path):
    d = tmp_path / "chain"
    d.mkdir()
    key, pub = chain["key"], chain["pub"]
    inproc("trust", "rotate", "--from", chain["v1"], "--key", key("a"), "--key", key("b"),
           "--expires", "2020-01-01T00:00:00Z", "--out", d / "2.trust.json")
    inproc("trust", "rotate", "--from", d / "2.trust.json", "--key", key("a"), "--key", key("b"),
           "--release-key", pub("c"), "--expires", FAR, "--out", d / "3.trust.json", "--allow-expired")
    rc, _, err = verify(chain, "by-c.json", chain_dir=d)
    assert rc == 1 and "expired link" in err
    (tmp_path / "g").mkdir()
    gap = copy_chain(chain, tmp_path / "g", versions=(3,))
    rc, _, err = verify(chain, "by-c.json", chain_dir=gap)
    assert rc == 1 and "v2 is missing" in err


def test_rotation_needs_the_previous_root_threshold(chain, tmp_path):
    r = run_prov("trust", "rotate", "--from", chain["v1"], "--key", chain["key"]("a"),  # 1 of the 2 required
                 "--expires", FAR, "--out", tmp_path / "2.trust.json")
    assert r.returncode == 1 and "1 of the 2 required root key(s)" in r.err and not (tmp_path / "2.trust.json").exists()
    forged = json.loads((chain["chain"] / "2.trust.json").read_text())
    forged["roles"]["release"]["keys"] = forged["roles"]["root"]["keys"]  # edit after signing
    d = tmp_path / "forged"
    d.mkdir()
    (d / "2.trust.json").write_text(json.dumps(forged))
    rc, _, err = verify(chain, "by-c.json", chain_dir=d)
    assert rc == 1 and "required root key" in err


def test_a_chain_folder_is_read_for_its_policy_versions_only(chain, tmp_path):
    d = copy_chain(chain, tmp_path)
    shutil.copyfile(chain["dir"] / "by-a.json", d / "manifest.json")  # a manifest is not a policy
    (d / "notes.json").write_text("{not json")
    rc, out, err = verify(chain, "by-c.json", chain_dir=d, subprocess=True)
    assert rc == 0 and out["trust_chain"] == [1, 2, 3], err


def test_a_rotated_in_signer_without_the_chain_gets_a_hint(chain, tmp_path):
    judge = tmp_path / "judge"
    judge.mkdir()
    shutil.copyfile(chain["dir"] / "by-c.json", judge / "manifest.json")
    shutil.copyfile(chain["v1"], judge / "trust.json")
    shutil.copytree(chain["chain"], judge / "trust-chain")
    r = run_prov("verify", judge / "manifest.json", "--trust", judge / "trust.json", "--no-files")
    lines = r.out.splitlines()
    assert r.returncode == 1 and lines[-1] == "FAILED: signatures"
    assert lines[-2] == (f"hint: no key of the pinned policy (v1) signed it; later policy versions lie in "
                         f"{judge / 'trust-chain'}: add --trust-chain {judge / 'trust-chain'}")
    shutil.rmtree(judge / "trust-chain")  # no chain beside it: no hint, the same failure
    r = run_prov("verify", judge / "manifest.json", "--trust", judge / "trust.json", "--no-files")
    assert r.returncode == 1 and "hint" not in r.out and r.out.splitlines()[-1] == "FAILED: signatures"


def test_rotating_from_an_expired_policy_refuses_unless_asked(chain, tmp_path):
    old = tmp_path / "old.json"
    run_prov("trust", "init", "--release-key", chain["pub"]("a"), "--expires", "2020-01-01T00:00:00Z",
             "--out", old, check=0)
    args = ["trust", "rotate", "--from", old, "--key", chain["key"]("a"), "--expires", FAR, "--out", tmp_path / "2.json"]
    r = run_prov(*args)
    assert r.returncode == 2 and len(r.err.splitlines()) == 1 and "expired at 2020-01-01T00:00:00Z" in r.err
    assert "--allow-expired" in r.err and not (tmp_path / "2.json").exists()
    r = run_prov(*args, "--allow-expired")
    assert r.returncode == 0 and json.loads((tmp_path / "2.json").read_text())["version"] == 2
