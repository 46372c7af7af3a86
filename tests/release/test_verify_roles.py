"""Roles stay apart: with --key, a checkpoint signed by the release key is not the log's unless the
judge says so (--key-signs-log), or names the log key (--log-key)."""

import json

import pytest

from conftest import RUNTIME_SPEC, make_tree, prov_json, run_prov
from conftest import report


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Keys a and b, a record, and three releases by a: no log; log signed by a; log signed by b.
    Built once: verify reads only, and a module fixture keeps these tests fast."""
    d = tmp_path_factory.mktemp("roles")
    store = d / "store"
    for k in "ab":
        run_prov("key", "generate", "--out", d / k, check=0)
    rt = make_tree(d / "runtime", RUNTIME_SPEC)
    archive = d / "archive.zip"
    archive.write_bytes(b"\0" * 2_244_900)
    (d / "report.txt").write_bytes(report())
    rec = prov_json("adjudicate", d / "report.txt", "--archive", archive, "--runtime", rt, store=store)
    out = {}
    for name, log in (("plain", None), ("same", "a"), ("other", "b")):
        out[name] = d / f"{name}.json"
        run_prov("release", "create", "--record", rec["digest"]["sha256"], "--archive", archive, "--runtime", rt,
                 "--name", name, "--key", d / "a/key.pem", *(["--log-key", d / log / "key.pem"] if log else []),
                 "--out", out[name], store=store, check=0)
    return dict(dir=d, manifests=out, pub=lambda k: d / k / "key.pub.pem")


@pytest.fixture
def same_key_release(lab):
    m = lab["manifests"]["same"]
    assert "checkpoint" in json.loads(m.read_text())["log"]
    return lab, m


def vkey(lab, manifest, *extra, check):
    r = run_prov("verify", manifest, "--key", lab["pub"]("a"), *extra, "--no-files", "--json")  # roles, not files
    assert r.returncode == check, r.out + r.err
    return r


def failed(r) -> dict:
    return {c["name"]: c["detail"] for c in json.loads(r.out)["checks"] if not c["ok"]}


def test_release_key_checkpoint_is_not_taken_for_the_logs(same_key_release):
    lab, m = same_key_release
    bad = failed(vkey(lab, m, check=1))
    assert set(bad) == {"log_checkpoint"}
    assert "--log-key" in bad["log_checkpoint"] and "--key-signs-log" in bad["log_checkpoint"]


def test_key_signs_log_flag_accepts_it(same_key_release):
    lab, m = same_key_release
    out = json.loads(vkey(lab, m, "--key-signs-log", check=0).out)
    assert any(c["name"] == "log_inclusion" and c["ok"] for c in out["checks"])


def test_naming_the_same_key_as_log_key_accepts_it(same_key_release):
    lab, m = same_key_release
    vkey(lab, m, "--log-key", lab["pub"]("a"), check=0)


def test_key_signs_log_does_not_stand_in_for_another_log_key(lab):
    m = lab["manifests"]["other"]
    assert set(failed(vkey(lab, m, "--key-signs-log", check=1))) == {"log_checkpoint"}
    vkey(lab, m, "--log-key", lab["pub"]("b"), check=0)


def test_release_without_log_needs_no_log_key(lab):
    vkey(lab, lab["manifests"]["plain"], check=0)


def test_since_with_release_key_only_asks_for_the_log_key(same_key_release):
    lab, m = same_key_release
    note = lab["dir"] / "cp-since.note"
    note.write_text(json.loads(m.read_text())["log"]["checkpoint"])
    assert "log_checkpoint" in failed(vkey(lab, m, "--since", note, check=1))
    vkey(lab, m, "--since", note, "--key-signs-log", check=0)


@pytest.mark.parametrize("args,needle", [
    (["--key-signs-log", "--log-key", "PUB"], "not both"),
    (["--key-signs-log"], "go with --key"),
])
def test_flag_misuse_is_one_line_exit_2(same_key_release, args, needle):
    lab, m = same_key_release
    args = [str(lab["pub"]("a")) if a == "PUB" else a for a in args]
    base = ["verify", m, "--key", lab["pub"]("a")] if "--log-key" in args else ["verify", m]
    r = run_prov(*base, *args, "--no-files")  # files are not the subject here
    assert r.returncode == 2 and len(r.err.strip().splitlines()) == 1 and needle in r.err, r.err


def test_stdout_on_a_full_disk_is_one_line_and_exit_3(lab):
    """The verify fast path reports a full disk as the environment (3), as the click path and the
    fast re-add do: one line, no traceback, not a usage error (2)."""
    import subprocess
    from conftest import PROV
    m = lab["manifests"]["plain"]
    with open("/dev/full", "w") as full:
        r = subprocess.run([PROV, "verify", str(m), "--key", str(lab["pub"]("a")), "--no-files", "--json"],
                           stdout=full, stderr=subprocess.PIPE)
    assert (r.returncode, r.stderr.decode()) == (3, "prov: error: No space left on device\n")



def test_closed_stderr_or_stdout_is_no_traceback_and_no_error_on_stdout(lab, tmp_path):
    """With stderr closed, the fast path's error line goes nowhere (print would put it on stdout, into
    --json output); with stdout closed, the verdict is the exit code alone."""
    import subprocess
    from conftest import PROV
    m, key = lab["manifests"]["plain"], str(lab["pub"]("a"))
    r = subprocess.run(["sh", "-c", f'"{PROV}" verify "{tmp_path}/missing.json" --key "{key}" --no-files --json 2>&-'],
                       capture_output=True)
    assert r.returncode == 2 and r.stdout == b""
    r = subprocess.run(["sh", "-c", f'"{PROV}" verify "{m}" --key "{key}" --no-files --json >&-'], capture_output=True)
    assert r.returncode == 0 and r.stderr == b""
