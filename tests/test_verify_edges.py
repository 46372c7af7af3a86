"""Verify's edges as a judge meets them: what the last line says, exit 2 for every unreadable
input, and the exit codes `--help` promises."""

import json
import os

import pytest

from conftest import RUNTIME_SPEC, inproc, make_tree, report, run_prov


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    d = tmp_path_factory.mktemp("edges")
    inproc("key", "generate", "--out", d / "k")
    inproc("key", "generate", "--out", d / "log")
    rt = make_tree(d / "runtime", RUNTIME_SPEC)
    (d / "archive.zip").write_bytes(os.urandom(2_244_900))
    (d / "report.txt").write_bytes(report())
    rec = json.loads(inproc("adjudicate", d / "report.txt", "--archive", d / "archive.zip", "--runtime", rt,
                            "--json", store=d / "s").output)
    inproc("trust", "init", "--release-key", d / "k/key.pub.pem", "--log-key", d / "log/key.pub.pem",
           "--expires", "2099-01-01T00:00:00Z", "--out", d / "trust.json")
    inproc("release", "create", "--record", rec["digest"]["sha256"], "--archive", d / "archive.zip", "--runtime", rt,
           "--name", "demo", "--key", d / "k/key.pem", "--log-key", d / "log/key.pem", "--out", d / "m.json",
           store=d / "s")
    return d


def base(d):
    return ["verify", d / "m.json", "--trust", d / "trust.json", "--archive", d / "archive.zip", "--runtime",
            d / "runtime"]


def test_the_last_line_names_the_failed_checks(rel, tmp_path):
    assert run_prov(*base(rel)).out.splitlines()[-1].startswith("VERIFIED")
    other = tmp_path / "archive.zip"
    other.write_bytes(b"not it")
    rt = make_tree(tmp_path / "rt", {**RUNTIME_SPEC, "extra": b"x"})
    r = run_prov("verify", rel / "m.json", "--trust", rel / "trust.json", "--archive", other, "--runtime", rt)
    assert r.returncode == 1 and r.out.splitlines()[-1] == "FAILED: archive_digest, runtime_tree"


@pytest.mark.parametrize("what", ["garbage", "directory", "binary", "empty"])
def test_an_unreadable_since_checkpoint_is_bad_input(rel, tmp_path, what):
    p = tmp_path / "since.note"
    if what == "directory":
        p.mkdir()
    else:
        p.write_bytes({"garbage": b"hello\n", "binary": b"\xff\xfe\x00", "empty": b""}[what])
    r = run_prov(*base(rel), "--since", p)
    assert r.returncode == 2 and str(p) in r.err and not r.out, r.err
    assert what == "directory" or len(r.err.splitlines()) == 1  # a directory is click's usage error


def test_unreadable_state_and_chain_are_bad_input(rel, tmp_path):
    state = tmp_path / "state.json"
    state.write_text("[1, 2")
    r = run_prov(*base(rel), "--state", state)
    assert r.returncode == 2 and "state" in r.err and len(r.err.splitlines()) == 1
    chain = tmp_path / "chain"
    chain.mkdir()
    (chain / "2.trust.json").write_text("{")
    r = run_prov(*base(rel), "--trust-chain", chain)
    assert r.returncode == 2 and "2.trust.json" in r.err and len(r.err.splitlines()) == 1


def test_help_lists_every_exit_code():
    text = " ".join(run_prov("verify", "--help", check=0).out.split())
    for code in ("0 all checks pass", "1 a check failed", "2 bad or unreadable input", "3 a tool or library"):
        assert code in text, code
