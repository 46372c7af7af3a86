"""What a judge runs: stock tools (sha256sum, b3sum, ssh-keygen, python3 tree_digest.py) on a
published release folder, and `prov verify` refusing to say more than it checked."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rfc8785

from conftest import REPO, RUNTIME_SPEC, inproc, make_tree, prov_json, run_prov
from provenance.core import signing, sshsig
from conftest import report

STOCK_PY = shutil.which("python3", path="/usr/bin:/bin") or sys.executable  # not our venv: any Python 3


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    """A 2-of-3 release signed by all three keys, its judge files exported into rel/."""
    d = tmp_path_factory.mktemp("judge")
    store = d / "store"
    for k in "abc":
        inproc("key", "generate", "--out", d / k)
    rt = make_tree(d / "runtime", RUNTIME_SPEC)
    archive = d / "archive.zip"
    archive.write_bytes(os.urandom(2_244_900))
    (d / "report.txt").write_bytes(report())
    rec = json.loads(inproc("adjudicate", d / "report.txt", "--archive", archive, "--runtime", rt, "--json",
                           store=store).output)
    trust = d / "trust.json"
    inproc("trust", "init", *[x for k in "abc" for x in ("--release-key", d / k / "key.pub.pem")],
             "--threshold", "2", "--expires", "2099-01-01T00:00:00Z", "--out", trust)
    out = d / "rel"
    out.mkdir()
    manifest = out / "manifest.json"
    inproc("release", "create", "--record", rec["digest"]["sha256"], "--archive", archive, "--runtime", rt,
             "--name", "demo", "--key", d / "a/key.pem", "--out", manifest, store=store)
    for k in "bc":
        inproc("release", "sign", manifest, "--key", d / k / "key.pem")
    run_prov("export-checksums", manifest, "--runtime", rt, "--archive", archive, "--trust", trust, "--out", out,
             check=0)
    inproc("trust", "allowed-signers", trust, "--out", d / "allowed_signers")
    return dict(dir=d, rt=rt, archive=archive, trust=trust, out=out, manifest=manifest, store=store)


def judge_folder(rel, dest: Path) -> Path:
    """What a judge holds: the published release folder (nothing from elsewhere) beside archive.zip and runtime/."""
    shutil.copytree(rel["out"], dest)
    shutil.copyfile(rel["archive"], dest / "archive.zip")
    shutil.copytree(rel["rt"], dest / "runtime", symlinks=True)
    return dest


def sh(cmd, cwd, stdin=None):
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as f:
        return subprocess.run(cmd, cwd=cwd, stdin=f, capture_output=True, text=True)


def identities(rel) -> list[str]:
    return [line.split(" ", 1)[0] for line in (rel["dir"] / "allowed_signers").read_text().splitlines()]


def ssh_verify(cwd, ident, sig=None, ns="comma-lab-release", file="statement.json"):
    return sh(["ssh-keygen", "-Y", "verify", "-f", "allowed_signers", "-I", ident, "-n", ns,
               "-s", sig or f"{file}.{ident}.sig"], cwd, stdin=Path(cwd) / file)


def stock_checks(j: Path) -> dict:
    ident = (j / "allowed_signers").read_text().split(" ", 1)[0]
    return {"ssh_sums": ssh_verify(j, ident, file="SHA256SUMS").returncode,
            "ssh_statement": ssh_verify(j, ident).returncode,
            "sha256sum": sh(["sha256sum", "--quiet", "-c", "SHA256SUMS"], j).returncode,
            "b3sum": sh(["b3sum", "--quiet", "-c", "B3SUMS"], j).returncode,
            "tree_digest": sh([STOCK_PY, "tree_digest.py", "--check", "statement.json"], j).returncode}


def regenerate_sums(j: Path) -> None:
    """What a forger does after swapping files: checksum files made afresh for what is there now."""
    names = [line.split("  ", 1)[1] for line in (j / "B3SUMS").read_text().splitlines()]
    (j / "B3SUMS").write_text(sh(["b3sum", *names], j).stdout)
    (j / "SHA256SUMS").write_text(sh(["sha256sum", *names, "B3SUMS"], j).stdout)


def test_stock_tools_on_a_published_release(rel, tmp_path):
    j = judge_folder(rel, tmp_path / "judge")
    names = {line.split("  ", 1)[1] for line in (j / "SHA256SUMS").read_text().splitlines()}
    assert "archive.zip" in names and "runtime/inflate.sh" in names and all(
        n in ("archive.zip", "statement.json", "B3SUMS", "tree_digest.py") or n.startswith("runtime/") for n in names)
    assert {"statement.json", "B3SUMS", "tree_digest.py"} <= names  # bound to the signature over SHA256SUMS
    assert set(stock_checks(j).values()) == {0}
    st = json.loads((j / "statement.json").read_bytes())
    tree = next(s for s in st["subject"] if s["name"] == "runtime/")["digest"]["prov-tree-v1-sha256"]
    r = sh([STOCK_PY, "tree_digest.py", "runtime"], j)
    assert r.returncode == 0 and r.stdout.strip() == tree
    assert prov_json("hash", j / "runtime")["sha256"] == tree
    creator = sshsig.identity(signing.keyid(signing.load_public(rel["dir"] / "a/key.pub.pem")))
    assert ssh_verify(j, creator).returncode == 0
    assert not (j / "statement.json.sig").exists()  # one .sig per distinct key, nothing doubled
    # and prov agrees, reading the same folder
    out = prov_json("verify", j / "manifest.json", "--trust", rel["trust"], "--archive", j / "archive.zip",
                    "--runtime", j / "runtime")
    ok = {c["name"] for c in out["checks"] if c["ok"]}
    assert out["ok"] and {"ssh_signatures", "judge_files", "archive_digest", "runtime_tree"} <= ok


@pytest.mark.parametrize("tamper,caught_by", [
    ("byte", {"sha256sum", "b3sum", "tree_digest"}),
    ("archive", {"sha256sum", "b3sum", "tree_digest"}),
    ("exec_bit", {"tree_digest"}),        # checksum files cannot express modes
    ("symlink", {"tree_digest"}),         # sha256sum follows links; the tree records their target text
    # the archive swapped and both checksum files made afresh: OpenSSH's check of SHA256SUMS fails
    ("swap_and_regenerate", {"ssh_sums", "tree_digest"}),
    ("tool", {"sha256sum", "b3sum"}),     # a tree_digest.py that always says OK is not the signed one
    ("everything", {"ssh_sums"}),         # swap, an always-OK tool, fresh checksums: the signature still fails
])
def test_stock_tools_catch_tampering(rel, tmp_path, tamper, caught_by):
    j = judge_folder(rel, tmp_path / "judge")
    if tamper == "byte":
        p = j / "runtime/model.bin"
        data = bytearray(p.read_bytes())
        data[100] ^= 1
        p.write_bytes(data)
    elif tamper == "archive":
        with open(j / "archive.zip", "r+b") as f:
            f.seek(12345)
            b = f.read(1)
            f.seek(12345)
            f.write(bytes([b[0] ^ 0x80]))
    elif tamper == "exec_bit":
        os.chmod(j / "runtime/inflate.sh", 0o644)
    elif tamper == "symlink":  # same bytes behind it, a different link
        link = j / "runtime/lib/libSvtAv1Enc.so.2"
        link.unlink()
        os.symlink("./libSvtAv1Enc.so.2.3.0", link)
    else:
        if tamper in ("swap_and_regenerate", "everything"):
            (j / "archive.zip").write_bytes(os.urandom(1000))
        if tamper in ("tool", "everything"):
            (j / "tree_digest.py").write_text("print('all OK')\n")
        if tamper != "tool":
            regenerate_sums(j)
    got = stock_checks(j)
    assert {k for k, rc in got.items() if rc != 0} == caught_by, got


def signed_by_two(rel, statement: dict, out: Path) -> bytes:
    """A DSSE manifest of `statement` signed by keys a and b (no SSHSIG), written to `out`; its payload."""
    payload = rfc8785.dumps(statement)
    out.write_text(json.dumps({"payload": base64.b64encode(payload).decode(), "payloadType": signing.IN_TOTO,
                               "signatures": [signing.sign(signing.load_private(rel["dir"] / k / "key.pem"),
                                                           signing.IN_TOTO, payload) for k in "ab"]}))
    return payload


def readme_commands(j: Path) -> list[str]:
    return [line.strip() for line in (j / "README").read_text().splitlines()
            if line.startswith("  ") and line.split()[0] in ("ssh-keygen", "sha256sum", "b3sum", "python3", "prov")]


def test_the_packet_stands_alone_and_its_readme_commands_run(rel, tmp_path):
    j = judge_folder(rel, tmp_path / "judge")
    ids = identities(rel)
    assert (j / "allowed_signers").read_text() == (rel["dir"] / "allowed_signers").read_text()
    assert (j / "trust.json").read_bytes() == rel["trust"].read_bytes()
    sigs = sorted(p.name for p in j.glob("*.sig"))
    assert sigs == sorted([f"statement.json.{i}.sig" for i in ids] + [f"SHA256SUMS.{i}.sig" for i in ids])
    from provenance.release.packet import FILES
    assert {p.name for p in rel["out"].iterdir()} == set(FILES) - {"log.vkey"} | set(sigs)
    readme = (j / "README").read_text()
    st = json.loads((j / "statement.json").read_bytes())
    assert hashlib.sha256((j / "statement.json").read_bytes()).hexdigest() in readme
    assert st["subject"][0]["digest"]["sha256"] in readme and all(i in readme for i in ids)
    cmds = readme_commands(j)
    assert [c.split()[0] for c in cmds] == ["python3"] + ["ssh-keygen"] * 6 + ["sha256sum", "b3sum", "python3", "prov"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for c in cmds:
        r = subprocess.run(["bash", "-c", c], cwd=j, capture_output=True, text=True, env=env)
        assert r.returncode == 0, (c, r.stdout, r.stderr)
    (j / "archive.zip").write_bytes(os.urandom(1000))
    regenerate_sums(j)
    r = subprocess.run(["bash", "-c", cmds[1]], cwd=j, capture_output=True, text=True)
    assert r.returncode != 0  # the README's first signature check fails for the forged checksums
    out = prov_json("verify", j / "manifest.json", "--trust", j / "trust.json", "--archive", j / "archive.zip",
                    "--runtime", j / "runtime", check=1)
    bad = {c["name"]: c["detail"] for c in out["checks"] if not c["ok"]}
    assert set(bad) == {"judge_files", "archive_digest"} and "SHA256SUMS is not the checksums" in bad["judge_files"]


@pytest.mark.parametrize("kind,line", [
    ("mode", "runtime/inflate.sh: mode differs (exec bit clear here, set in the release)"),
    ("target", "runtime/lib/libSvtAv1Enc.so.2: target differs (-> ./libSvtAv1Enc.so.2.3.0 here, "
               "-> libSvtAv1Enc.so.2.3.0 in the release)"),
    ("content", "runtime/model.bin: content differs"),
    ("missing", "runtime/src/codec.py: missing (released as file)"),
    ("extra", "runtime/src/extra.py: extra (a file not in the release)"),
])
def test_both_checkers_name_the_path_that_differs(rel, tmp_path, kind, line):
    j = judge_folder(rel, tmp_path / "judge")
    rt = j / "runtime"
    if kind == "mode":
        os.chmod(rt / "inflate.sh", 0o644)
    elif kind == "target":
        (rt / "lib/libSvtAv1Enc.so.2").unlink()
        os.symlink("./libSvtAv1Enc.so.2.3.0", rt / "lib/libSvtAv1Enc.so.2")
    elif kind == "content":
        (rt / "model.bin").write_bytes(b"other")
    elif kind == "missing":
        (rt / "src/codec.py").unlink()
    else:
        (rt / "src/extra.py").write_text("x")
    r = sh([STOCK_PY, "tree_digest.py", "--check", "statement.json"], j)
    named = [x.strip() for x in r.stdout.splitlines() if x.startswith("  ")]
    assert r.returncode == 1 and len(named) == 1 and named[0].startswith(line), r.stdout
    out = prov_json("verify", j / "manifest.json", "--trust", j / "trust.json", "--archive", j / "archive.zip",
                    "--runtime", rt, check=1)
    bad = {c["name"]: c["detail"] for c in out["checks"] if not c["ok"]}
    assert set(bad) == {"runtime_tree"} and line.split(": ", 1)[1] in bad["runtime_tree"] \
        and line.split(":")[0].removeprefix("runtime/") in bad["runtime_tree"], bad


def test_a_listing_that_does_not_describe_the_signed_tree_fails(rel, tmp_path):
    """A signer cannot list one tree and sign another's digest: both checkers recompute it."""
    env = json.loads(rel["manifest"].read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    entry = next(e for e in st["predicate"]["runtime_listing"] if e["path"] == "model.bin")
    entry["sha256"] = "0" * 64
    payload = signed_by_two(rel, st, tmp_path / "m.json")
    out = prov_json("verify", tmp_path / "m.json", "--trust", rel["trust"], "--archive", rel["archive"],
                    "--runtime", rel["rt"], check=1)
    bad = {c["name"]: c["detail"] for c in out["checks"] if not c["ok"]}
    assert set(bad) == {"runtime_listing"} and "does not reproduce" in bad["runtime_listing"]
    j = judge_folder(rel, tmp_path / "judge")
    (j / "statement.json").write_bytes(payload)
    r = sh([STOCK_PY, "tree_digest.py", "--check", "statement.json"], j)
    assert r.returncode == 1 and "listing does not reproduce" in r.stdout


def test_export_refuses_checksums_the_release_did_not_sign(rel, tmp_path, monkeypatch):
    """An export by a prov whose tree_digest.py differs would publish checksums nobody signed."""
    from provenance.core.errors import VerificationFailed
    from provenance.release import packet
    env = json.loads(rel["manifest"].read_text())
    monkeypatch.setattr(packet, "tool_bytes", lambda: b"print('another version')\n")
    with pytest.raises(VerificationFailed, match="made with another prov's tree_digest.py"):
        packet.write_packet(env, rel["rt"], tmp_path / "out", rel["archive"])


def test_ssh_keygen_verifies_every_key_of_a_2_of_3_release(rel, tmp_path):
    j = judge_folder(rel, tmp_path / "judge")
    ids = identities(rel)
    assert len(ids) == 3
    for ident in ids:
        r = ssh_verify(j, ident, f"statement.json.{ident}.sig")
        assert r.returncode == 0 and "Good" in r.stdout + r.stderr, r.stderr
        assert ssh_verify(j, ident, f"statement.json.{ident}.sig", ns="other").returncode != 0
        assert ssh_verify(j, ident, file="SHA256SUMS").returncode == 0
    assert ssh_verify(j, ids[1], f"statement.json.{ids[0]}.sig").returncode != 0  # wrong signer identity
    data = bytearray((j / "statement.json").read_bytes())
    for at in (0, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[at] ^= 1
        (j / "statement.json").write_bytes(bad)
        assert ssh_verify(j, ids[0]).returncode != 0


def test_our_verifier_reads_ssh_keygens_signatures(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "k"], check=True)
    msg = tmp_path / "m"
    msg.write_bytes(b"statement bytes\n")
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", tmp_path / "k", "-n", "comma-lab-release", msg],
                   check=True, capture_output=True)
    armored = (tmp_path / "m.sig").read_text()
    raw = base64.b64decode((tmp_path / "k.pub").read_text().split()[1])[-32:]
    assert sshsig.verify(armored, b"statement bytes\n") == raw
    assert sshsig.verify(armored, b"statement bytes!\n") is None
    assert sshsig.verify(armored, b"statement bytes\n", namespace="git") is None


def test_prov_verify_reports_dsse_ssh_disagreement(rel, tmp_path):
    env = json.loads(rel["manifest"].read_text())
    payload = base64.b64decode(env["payload"])
    base = ["--trust", rel["trust"], "--archive", rel["archive"], "--runtime", rel["rt"], "--json"]

    def check(mutated):
        m = tmp_path / "m.json"
        m.write_text(json.dumps(mutated))
        r = run_prov("verify", m, *base)
        out = json.loads(r.out)
        return r.returncode, {c["name"]: c for c in out["checks"] if not c["ok"]}

    dropped = dict(env, ssh=env["ssh"][:2])  # DSSE by three keys, SSH by two
    rc, bad = check(dropped)
    assert rc == 1 and set(bad) == {"ssh_signatures"} and "disagree" in bad["ssh_signatures"]["detail"]
    other = sshsig.sign(signing.load_private(rel["dir"] / "b/key.pem"), payload + b" ")
    rc, bad = check(dict(env, ssh=[*env["ssh"][:2], {"keyid": env["ssh"][2]["keyid"], "sshsig": other}]))
    assert rc == 1 and set(bad) == {"ssh_signatures"}
    rc, bad = check(env)
    assert rc == 0 and not bad


def test_no_partial_verified(rel):
    m, t = rel["manifest"], rel["trust"]
    r = run_prov("verify", m, "--trust", t)
    assert r.returncode == 2 and "--archive" in r.err and "--no-files" in r.err and len(r.err.splitlines()) == 1
    assert run_prov("verify", m, "--trust", t, "--archive", rel["archive"]).returncode == 2
    assert run_prov("verify", m, "--trust", t, "--no-files", "--archive", rel["archive"]).returncode == 2
    human = run_prov("verify", m, "--trust", t, "--no-files", check=0).out.splitlines()
    assert "- archive_digest: not checked (--no-files)" in human and "- runtime_tree: not checked (--no-files)" in human
    assert human[-1].startswith("VERIFIED (signatures and score only: archive and runtime NOT checked)")
    out = prov_json("verify", m, "--trust", t, "--no-files")
    assert out["ok"] is True and out["files_checked"] is False
    assert out["not_checked"] == ["archive_digest", "runtime_tree"]
    assert not {"archive_digest", "runtime_tree"} & {c["name"] for c in out["checks"]}
    full = prov_json("verify", m, "--trust", t, "--archive", rel["archive"], "--runtime", rel["rt"])
    assert full["files_checked"] is True and full["not_checked"] == []


def test_runtime_subject_names_its_algorithm_and_old_releases_verify(rel, tmp_path):
    env = json.loads(rel["manifest"].read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    rt = next(s for s in st["subject"] if s["name"] == "runtime/")
    assert set(rt["digest"]) == {"prov-tree-v1-sha256", "prov-tree-v1-blake3"}
    arch = next(s for s in st["subject"] if s["name"] == "archive.zip")
    assert set(arch["digest"]) == {"sha256", "blake3"}
    # a release made before the rename: plain sha256/blake3 keys on the tree
    rt["digest"] = {"sha256": rt["digest"]["prov-tree-v1-sha256"], "blake3": rt["digest"]["prov-tree-v1-blake3"]}
    signed_by_two(rel, st, tmp_path / "old.json")
    out = prov_json("verify", tmp_path / "old.json", "--trust", rel["trust"], "--archive", rel["archive"],
                    "--runtime", rel["rt"])
    assert out["ok"] and "ssh_signatures" not in {c["name"] for c in out["checks"]}
    from provenance.records.models import Statement
    Statement.model_validate(st)
    for name in ("eval-record.v1.json", "release-statement.v1.json", "trust-policy.v1.json"):
        doc = json.loads((REPO / "schemas" / name).read_text())
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["$id"] == f"https://comma-lab.dev/schemas/{name}"


def test_note_verifier_key_is_published_and_checks_real_checkpoints(tmp_path):
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    for k in ("rel", "log"):
        run_prov("key", "generate", "--out", tmp_path / k, check=0)
    t = tmp_path / "trust.json"
    run_prov("trust", "init", "--release-key", tmp_path / "rel/key.pub.pem", "--log-key", tmp_path / "log/key.pub.pem",
             "--expires", "2099-01-01T00:00:00Z", "--out", t, check=0)
    doc = json.loads(t.read_text())
    log_name = doc["roles"]["log"]["keys"][0]
    vkey = doc["keys"][log_name]["note_verifier"]
    # recompute from the PEM alone, as golang.org/x/mod/sumdb/note defines it
    raw = load_pem_public_key((tmp_path / "log/key.pub.pem").read_bytes()).public_bytes(Encoding.Raw, PublicFormat.Raw)
    name, khash, data = vkey.split("+", 2)
    assert khash == hashlib.sha256(name.encode() + b"\n\x01" + raw).digest()[:4].hex()
    assert base64.b64decode(data) == b"\x01" + raw
    assert "release" not in {r for r, s in doc["roles"].items() if log_name in s["keys"]}
    assert not doc["keys"][doc["roles"]["release"]["keys"][0]].get("note_verifier")
    # a checkpoint the lab signs verifies under exactly that verifier key
    f = tmp_path / "blob"
    f.write_text("evidence")
    blob = prov_json("add", f, store=tmp_path / "store")
    prov_json("log", "append", blob["sha256"], store=tmp_path / "store")
    prov_json("log", "checkpoint", "--key", tmp_path / "log/key.pem", "--out", tmp_path / "cp.note",
              store=tmp_path / "store")
    body, sigs = (tmp_path / "cp.note").read_text().split("\n\n", 1)
    signer, sig = sigs.strip()[2:].split(" ")
    sig = base64.b64decode(sig)
    assert signer == name and sig[:4].hex() == khash
    Ed25519PublicKey.from_public_bytes(base64.b64decode(data)[1:]).verify(sig[4:], (body + "\n").encode())
    bad = dict(doc)
    bad["keys"] = {**doc["keys"], log_name: {**doc["keys"][log_name], "note_verifier": vkey[:-4] + "AAA="}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = run_prov("verify", tmp_path / "nope.json", "--trust", tmp_path / "bad.json", "--no-files")
    assert r.returncode == 2


def test_tree_digest_py_matches_prov_and_refuses_what_prov_refuses(runtime, tmp_path):
    script = REPO / "provenance/core/tree_digest.py"
    r = subprocess.run([STOCK_PY, script, runtime], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == prov_json("hash", runtime)["sha256"]
    esc = make_tree(tmp_path / "esc", {"up": ("link", "../../etc/passwd")})
    r = subprocess.run([STOCK_PY, script, esc], capture_output=True, text=True)
    assert r.returncode == 1 and "escapes" in r.stderr
    fifo = make_tree(tmp_path / "fifo", {})
    os.mkfifo(fifo / "p")
    r = subprocess.run([STOCK_PY, script, fifo], capture_output=True, text=True)
    assert r.returncode == 1 and "special file" in r.stderr
    assert subprocess.run([STOCK_PY, script], capture_output=True).returncode == 2


def test_store_option_after_the_subcommand(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    a = prov_json("add", f, "--ref", "r1", "--store", tmp_path / "s1")
    assert prov_json("--store", tmp_path / "s1", "ref", "get", "r1")["target"]["blake3"] == a["blake3"]
    assert prov_json("ref", "get", "r1", f"--store={tmp_path / 's1'}")["target"]["blake3"] == a["blake3"]
    assert run_prov("ref", "get", "r1", "--store", tmp_path / "empty").returncode != 0


def test_wheel_alone_installs_and_verifies(rel, tmp_path):
    """`python -m build` makes a wheel and an sdist; a fresh venv holding only the wheel (and its
    declared dependencies) runs `prov verify`. Built from a copy so the work tree stays clean."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "provenance", src / "provenance", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "bin", src / "bin")  # the `prov` launcher
    for f in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / f, src / f)
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", dist, src],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(dist.glob("comma_lab-*.whl"))
    assert next(dist.glob("comma_lab-*.tar.gz"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    house = Path(sys.executable).parent.parent / "wheelhouse"  # made by .ci/setup; else the index
    local = ["--no-index", "--find-links", house] if house.is_dir() else []
    r = subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "-q",
                        "--disable-pip-version-check", *local, wheel], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([venv / "bin/prov", "verify", rel["manifest"], "--trust", rel["trust"], "--archive",
                        rel["archive"], "--runtime", rel["rt"]], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("VERIFIED"), r.stdout + r.stderr
    listed = subprocess.run([venv / "bin/python", "-c", "import importlib.util as u; "
                             "print([m for m in ('torch', 'av', 'dvc', 'pytest') if u.find_spec(m)])"],
                            capture_output=True, text=True)
    assert listed.stdout.strip() == "[]"  # nothing else came along: only the wheel's own dependencies


def test_shell_completion_as_documented():
    src = run_prov(env={"_PROV_COMPLETE": "bash_source"}, check=0).out
    assert "complete " in src and "_prov_completion" in src
    r = run_prov(env={"_PROV_COMPLETE": "bash_complete", "COMP_WORDS": "prov tru", "COMP_CWORD": "1"}, check=0)
    assert "plain,trust" in r.out.splitlines()


def test_fast_verify_entry_agrees_with_click(rel):
    """`prov verify` skips click for the clean command line: same options, same output, same exit codes."""
    import click
    from provenance.cli.app import cli
    from provenance.cli.entry import FLAG_OPTIONS, VALUE_OPTIONS
    cmd = cli.commands["verify"]
    opts = {o: p.name for p in cmd.params if isinstance(p, click.Option) for o in p.opts if o not in ("-h", "--help")}
    assert opts == {**VALUE_OPTIONS, **FLAG_OPTIONS}
    m, t = rel["manifest"], rel["trust"]
    cases = [
        ["verify", m, "--trust", t, "--archive", rel["archive"], "--runtime", rel["rt"], "--at", "2030-01-01T00:00:00Z"],
        ["verify", m, f"--trust={t}", "--no-files", "--json", "--at=2030-01-01T00:00:00Z"],
        ["verify", m, "--trust", t],                                   # exit 2: asks for the files
        ["verify", m, "--trust", t, "--no-files", "--at", "not-a-time"],  # exit 2: bad time
        ["verify", m, "--trust", t, "--runtime", rel["archive"], "--archive", rel["archive"]],  # click's own error
        ["verify", m, "--bogus"],                                       # click's usage error
    ]
    for args in cases:
        fast = run_prov(*args)
        slow = subprocess.run([sys.executable, "-m", "provenance.cli.app", *map(str, args)], capture_output=True, text=True)
        assert (fast.returncode, fast.out) == (slow.returncode, slow.stdout), args
        assert fast.err.replace("Usage: prov ", "Usage: cli ").splitlines()[-1:] == \
            slow.stderr.replace("Usage: python -m provenance.cli.app ", "Usage: cli ").splitlines()[-1:], args
    code = ("import sys; from provenance.cli.entry import main; "
            f"sys.argv = ['prov', 'verify', {str(m)!r}, '--trust', {str(t)!r}, '--no-files'];\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print(sorted(x for x in ('click', 'pydantic', 'torch') if x in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stderr


# -- what a red-team review of the packet found (each failed before its fix) -------------------------

def test_a_forged_allowed_signers_fails_the_first_stock_command(rel, tmp_path):
    """allowed_signers naming another key under the lab's identity: the README's first command,
    run with the pinned trust.json, refuses it before any signature is believed."""
    j = judge_folder(rel, tmp_path / "judge")
    first = readme_commands(j)[0]
    assert first.startswith("python3 -I tree_digest.py --allowed-signers trust.json | cmp - allowed_signers")
    assert subprocess.run(["bash", "-c", first], cwd=j, capture_output=True).returncode == 0
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "evil"], check=True)
    evil = (tmp_path / "evil.pub").read_text().split()[1]
    lines = (j / "allowed_signers").read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 1)[0] + " " + evil
    (j / "allowed_signers").write_text("\n".join(lines) + "\n")
    assert subprocess.run(["bash", "-c", first], cwd=j, capture_output=True).returncode != 0


def test_a_module_beside_tree_digest_cannot_stand_in_for_the_stdlib(rel, tmp_path):
    j = judge_folder(rel, tmp_path / "judge")
    os.chmod(j / "runtime/inflate.sh", 0o644)
    (j / "json.py").write_text("import sys\nprint('runtime: OK, all fine')\nsys.exit(0)\n")
    naive = sh([STOCK_PY, "tree_digest.py", "--check", "statement.json"], j)
    assert naive.returncode == 0  # what -I is for: the folder's json.py ran instead of the stdlib's
    r = sh([STOCK_PY, "-I", "tree_digest.py", "--check", "statement.json"], j)
    assert r.returncode == 1 and "inflate.sh: mode differs" in r.stdout
    assert all(" -I " in c for c in readme_commands(j) if c.startswith("python3"))


def test_a_packet_short_of_the_threshold_is_refused(rel, tmp_path):
    """2-of-3 policy, statement SSH-signed by one key: stock tools cannot count, so no packet."""
    env = json.loads(rel["manifest"].read_text())
    short = dict(env, ssh=env["ssh"][:1])
    r = inproc_packet(short, rel, tmp_path / "out")
    assert "1 of the 2 release keys" in r and not (tmp_path / "out").exists()


def inproc_packet(manifest, rel, out):
    from provenance.core.errors import ProvError
    from provenance.release.packet import write_packet
    try:
        write_packet(manifest, rel["rt"], out, rel["archive"], rel["trust"])
        return ""
    except ProvError as e:
        return str(e)


def test_a_refused_export_leaves_the_folder_as_it_was(rel, tmp_path):
    out = judge_folder(rel, tmp_path / "judge")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    env = json.loads(rel["manifest"].read_text())
    bad = dict(env, ssh=[dict(env["ssh"][0], sums_sshsig=env["ssh"][1]["sums_sshsig"]), *env["ssh"][1:]])
    assert "no SSHSIG over the SHA256SUMS" in inproc_packet(bad, rel, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # a chain exported into the packet's own trust-chain/ is read before anything is written
    chain = out / "trust-chain"
    chain.mkdir()
    from provenance.release.packet import write_packet
    inproc("trust", "rotate", "--from", rel["trust"], "--key", rel["dir"] / "a/key.pem", "--key",
           rel["dir"] / "b/key.pem", "--expires", "2099-01-01T00:00:00Z", "--out", chain / "2.trust.json")
    v2 = (chain / "2.trust.json").read_bytes()
    write_packet(env, rel["rt"], out, rel["archive"], rel["trust"], chain)
    assert (chain / "2.trust.json").read_bytes() == v2


def test_control_characters_in_names_are_shown_escaped(rel, tmp_path):
    j = judge_folder(rel, tmp_path / "judge")
    evil = "\r\x1b[1A\x1b[2Kruntime: OK fake"
    (j / "runtime" / evil).write_text("x")
    r = sh([STOCK_PY, "-I", "tree_digest.py", "--check", "statement.json"], j)
    assert r.returncode == 1 and "\x1b" not in r.stdout and "\r" not in r.stdout
    assert "'\\r\\x1b[1A\\x1b[2Kruntime: OK fake': extra" in r.stdout
    out = prov_json("verify", j / "manifest.json", "--trust", j / "trust.json", "--archive", j / "archive.zip",
                    "--runtime", j / "runtime", check=1)
    detail = next(c["detail"] for c in out["checks"] if c["name"] == "runtime_tree")
    assert "\x1b" not in detail and "extra" in detail


def test_a_newline_in_a_runtime_name_is_refused_at_release(rel, tmp_path):
    rt = make_tree(tmp_path / "rt", {**RUNTIME_SPEC, "two\nlines": b"x"})
    (tmp_path / "report.txt").write_bytes(report())
    rec = json.loads(inproc("adjudicate", tmp_path / "report.txt", "--archive", rel["archive"], "--runtime", rt,
                            "--json", store=rel["store"]).output)
    r = run_prov("release", "create", "--record", rec["digest"]["sha256"], "--archive", rel["archive"], "--runtime",
                 rt, "--name", "nl", "--key", rel["dir"] / "a/key.pem", "--out", tmp_path / "m.json", store=rel["store"])
    assert r.returncode == 1 and "newline" in r.err and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("mutate,why", [
    (lambda L: L.append({"path": "/src/codec.py", "type": "file", "size": 11, "sha256": L[-1].get("sha256"),
                         "blake3": L[-1].get("blake3")}), "not one entry of one tree"),
    (lambda L: next(e for e in L if e["type"] == "file").update(sha256="Z" * 64), "lacks its sha256"),
    (lambda L: next(e for e in L if e["type"] == "file").pop("blake3"), None),  # stdlib has no BLAKE3: prov's alone
])
def test_a_listing_that_is_not_one_tree_is_refused_by_both(rel, tmp_path, mutate, why):
    env = json.loads(rel["manifest"].read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    mutate(st["predicate"]["runtime_listing"])
    payload = signed_by_two(rel, st, tmp_path / "m.json")
    r = run_prov("verify", tmp_path / "m.json", "--trust", rel["trust"], "--archive", rel["archive"],
                 "--runtime", rel["rt"], "--json")
    assert r.returncode == 1 and "Traceback" not in r.err, r.err
    bad = {c["name"] for c in json.loads(r.out)["checks"] if not c["ok"]}
    assert bad and bad <= {"runtime_listing", "statement_schema"}, bad
    j = judge_folder(rel, tmp_path / "judge")
    (j / "statement.json").write_bytes(payload)
    r = sh([STOCK_PY, "-I", "tree_digest.py", "--check", "statement.json"], j)
    assert r.returncode == (0 if why is None else 1) and (why is None or why in r.stdout), r.stdout


def test_tree_digest_check_names_the_release_and_refuses_an_expired_one(rel, tmp_path):
    j = judge_folder(rel, tmp_path / "judge")
    r = sh([STOCK_PY, "-I", "tree_digest.py", "--check", "statement.json"], j)
    assert r.returncode == 0 and r.stdout.startswith("release demo v1: profile comma-official-v1")
    st = json.loads((j / "statement.json").read_bytes())
    st["predicate"]["expires"] = "2020-01-01T00:00:00Z"
    (j / "statement.json").write_bytes(rfc8785.dumps(st))
    r = sh([STOCK_PY, "-I", "tree_digest.py", "--check", "statement.json"], j)
    assert r.returncode == 1 and "EXPIRED at 2020-01-01T00:00:00Z" in r.stdout
