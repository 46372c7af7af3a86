"""The upstream is evidence (issue 24): a replay runs the evaluator the store holds, exported fresh and
read-only, and shows each phase only the files its view lists. A hostile or careless checkout (git
data holding the ground truth, stale bytecode, a shadowing module, an edited file) cannot change
what runs."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import prov_json, run_prov
from needs.miniature import sample

pytest.importorskip("torch")
pytest.importorskip("av")

LFS = ("models/posenet.safetensors", "models/segnet.safetensors", "videos/0.mkv")
MARK = "ESCAPED"


def git(co, *args):
    return subprocess.run(["git", "-C", str(co), *args], check=True, capture_output=True,
                          env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                                   GIT_COMMITTER_EMAIL="t@t")).stdout.decode()


def checkout(tmp_path, mini, extra=None) -> Path:
    """The miniature upstream as a git checkout whose large files are git-LFS objects: pointers in the
    commit, the content under .git/lfs/objects (as `git lfs fetch` leaves them)."""
    import hashlib
    co = tmp_path / "checkout"
    shutil.copytree(mini / "upstream", co)
    for rel, data in (extra or {}).items():
        (co / rel).parent.mkdir(parents=True, exist_ok=True)
        (co / rel).write_bytes(data)
    git(co, "init", "-q")
    for rel in LFS:
        data = (co / rel).read_bytes()
        oid = hashlib.sha256(data).hexdigest()
        obj = co / ".git/lfs/objects" / oid[:2] / oid[2:4] / oid
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        (co / rel).write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n")
    git(co, "add", "-A", "-f")
    git(co, "commit", "-qm", "upstream")
    return co


def replay(tmp_path, upstream, runtime_of="copy", mini=None, runtime=None, store=None, tmpdir="tmpdir", check=0):
    scratch = tmp_path / tmpdir
    scratch.mkdir(parents=True, exist_ok=True)
    a, rt = sample(mini, runtime_of)
    r = run_prov("replay", "--archive", a, "--runtime", runtime or rt, "--upstream", upstream, "--json",
                 store=store or tmp_path / "store", env={"TMPDIR": str(scratch)})
    assert r.returncode == check, r.err
    assert os.listdir(scratch) == []
    return json.loads(r.out)["record"] if r.returncode == 0 else r


def test_a_git_checkout_is_stored_from_its_commit_with_lfs_resolved(tmp_path, mini):
    co = checkout(tmp_path, mini)
    (co / "untracked.py").write_text("never stored\n")
    out = prov_json("upstream", "add", co, "--ref", "upstream/mini", store=tmp_path / "store")
    assert out["commit"] == git(co, "rev-parse", "HEAD").strip()
    assert out["lfs"] == {rel: "resolved" for rel in LFS}
    assert "untracked.py" not in out["files"] and "evaluate.py" in out["files"]
    # the same evaluator as the plain folder: the same tree, byte for byte
    folder = prov_json("upstream", "add", mini / "upstream", store=tmp_path / "store")
    assert folder["sha256"] == out["sha256"] and folder["lfs"] == {}
    by_ref = replay(tmp_path, "upstream/mini", mini=mini)
    by_folder = replay(tmp_path, co, mini=mini)
    assert by_ref["grade"] == by_folder["grade"] == "A++"
    assert by_ref["result"] == by_folder["result"]
    assert by_folder["upstream"]["tree"]["sha256"] == out["sha256"]
    assert by_folder["upstream"]["commit"] == out["commit"]
    assert by_folder["upstream"]["lfs"] == out["lfs"]


def test_ground_truth_in_git_data_is_in_no_view(tmp_path, mini):
    """After `git lfs pull` the clip and the weights sit under .git/lfs/objects, and plain git keeps them
    as blobs: neither is stored, so no phase can read them."""
    co = checkout(tmp_path, mini)
    attack = (f'for d in "{co}/.git" /upstream/.git /upstream/videos "{co}"; do '
              f'[ -e "$d" ] && {{ echo "{MARK}: $d" >&2; exit 99; }}; done; '
              f'git -C /upstream cat-file --batch-all-objects --batch-check >/dev/null 2>&1 && '
              f'{{ echo "{MARK}: git" >&2; exit 99; }}; true')
    rt = tmp_path / "evil" / "runtime"
    shutil.copytree(sample(mini, "copy")[1], rt, symlinks=True)
    lines = (rt / "inflate.sh").read_text().splitlines()
    (rt / "inflate.sh").write_text("\n".join(lines[:-1] + [attack, lines[-1]]) + "\n")
    rec = replay(tmp_path, co, mini=mini, runtime=rt)
    assert rec["grade"] == "A++"


def _evil_pyc(source: Path) -> bytes:
    """Bytecode whose header names the source's mtime and size (so Python would trust it) and whose body
    is not the source's."""
    import importlib._bootstrap_external as be
    st = source.stat()
    code = compile("raise SystemExit('the stale .pyc ran')\n", str(source), "exec")
    return bytes(be._code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size))


def test_bytecode_and_a_shadowing_module_never_run(tmp_path, mini):
    import sys
    tag = sys.implementation.cache_tag
    pyc = _evil_pyc(mini / "upstream/scorers.py")
    co = checkout(tmp_path, mini, extra={
        f"__pycache__/scorers.{tag}.pyc": pyc,  # tracked, even: never stored
        "av.py": b"raise SystemExit('a module beside evaluate.py shadowed PyAV')\n",  # stored, in no view
        "extra.pth": b"import os; os._exit(7)\n"})
    honest = replay(tmp_path, mini / "upstream", mini=mini, store=tmp_path / "honest")
    rec = replay(tmp_path, co, mini=mini)
    assert rec["grade"] == "A++" and rec["result"] == honest["result"]
    assert "av.py" in rec["upstream"]["ignored"]
    assert f"__pycache__/scorers.{tag}.pyc" in rec["upstream"]["ignored"] and "extra.pth" in rec["upstream"]["ignored"]
    assert rec["upstream"]["tree"] != honest["upstream"]["tree"]  # the stored tree holds av.py: told apart
    # the pinned evaluator is the same, so the view evaluate saw is the same
    assert rec["sandbox"]["phases"]["evaluate"]["sees_sha256"] == honest["sandbox"]["phases"]["evaluate"]["sees_sha256"]


def test_a_modified_tracked_file_is_refused_and_a_named_commit_is_read_from_git(tmp_path, mini):
    co = checkout(tmp_path, mini)
    with open(co / "scorers.py", "a") as f:
        f.write("# edited\n")
    r = run_prov("upstream", "add", co, store=tmp_path / "store")
    assert r.returncode == 2 and "scorers.py" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    r = run_prov("replay", "--archive", sample(mini, "copy")[0], "--runtime", sample(mini, "copy")[1],
                 "--upstream", co, store=tmp_path / "store")
    assert r.returncode == 2 and "scorers.py" in r.err
    # the commit's blobs, whatever the worktree holds
    out = prov_json("upstream", "add", co, "--commit", "HEAD", store=tmp_path / "store")
    clean = prov_json("upstream", "add", mini / "upstream", store=tmp_path / "store")
    assert out["sha256"] == clean["sha256"]


def test_an_lfs_object_that_is_not_its_pointer_is_refused_and_a_missing_one_is_pointer_only(tmp_path, mini):
    co = checkout(tmp_path, mini)
    objs = sorted((co / ".git/lfs/objects").rglob("*"))
    files = [p for p in objs if p.is_file()]
    files[0].write_bytes(b"not the weights")
    r = run_prov("upstream", "add", co, store=tmp_path / "store")
    assert r.returncode == 1 and "git-LFS object" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    files[0].unlink()
    out = prov_json("upstream", "add", co, store=tmp_path / "store")
    assert sorted(out["lfs"].values()) == ["pointer only", "resolved", "resolved"]


def test_reports_are_byte_identical_across_scratch_places(tmp_path, mini):
    """Every phase sees fixed paths (/upstream/submissions/<name>), never the host's: two replays made
    in different places write the same report.txt."""
    a = replay(tmp_path, mini / "upstream", mini=mini, tmpdir="one")
    b = replay(tmp_path, mini / "upstream", mini=mini, tmpdir="two/deeper")
    assert a["report"]["sha256"] == b["report"]["sha256"]


def test_bad_upstream_specs_are_one_line(tmp_path, mini):
    a, rt = sample(mini, "copy")
    for spec in ("no-such-ref", "deadbeef", str(tmp_path / "missing")):
        r = run_prov("replay", "--archive", a, "--runtime", rt, "--upstream", spec, store=tmp_path / "store")
        assert r.returncode == 2 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_prov("upstream", "add", empty, store=tmp_path / "store")
    assert r.returncode == 2 and "no evaluate.py" in r.err


def test_the_python_environment_is_recorded(tmp_path, mini):
    import importlib.metadata
    rec = replay(tmp_path, mini / "upstream", mini=mini)
    env = rec["environment"]
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    assert env["packages"]["av"] == importlib.metadata.version("av")
    assert len(env["env_sha256"]) == 64
    # this lab's venv holds comma-lab itself (an editable install, by a .pth): the record says so
    assert "distribution comma-lab" in env["env_foreign"]
    again = replay(tmp_path, mini / "upstream", mini=mini, tmpdir="again")
    assert again["environment"]["env_sha256"] == env["env_sha256"]


def test_a_hard_coded_root_venv_python_is_the_sandboxs(tmp_path, mini):
    rt = tmp_path / "venv_user" / "runtime"
    shutil.copytree(sample(mini, "copy")[1], rt, symlinks=True)
    (rt / "inflate.sh").write_text('#!/usr/bin/env bash\nset -euo pipefail\nhere="$(cd "$(dirname "$0")" && pwd)"\n'
                                   'exec "$here/../../.venv/bin/python" "$here/inflate.py" "$@"\n')
    rec = replay(tmp_path, mini / "upstream", mini=mini, runtime=rt)
    assert rec["grade"] == "A++"


# -- a hostile checkout (review of #24): its tree, its config, its links --------------------------------

def test_a_tree_path_that_leaves_the_stage_is_refused(tmp_path, mini):
    co = checkout(tmp_path, mini)
    oid = subprocess.run(["git", "-C", str(co), "hash-object", "-w", "--stdin"], input=b"pwned\n",
                         capture_output=True, check=True).stdout.decode().strip()
    head_tree = git(co, "rev-parse", "HEAD^{tree}").strip()
    listing = git(co, "ls-tree", head_tree)
    evil = subprocess.run(["git", "-C", str(co), "mktree"], input=(listing + f"100644 blob {oid}\t..\n").encode(),
                          capture_output=True)
    if evil.returncode != 0:
        pytest.skip("this git refuses to write a tree entry named '..'")
    commit = git(co, "commit-tree", evil.stdout.decode().strip(), "-m", "evil").strip()
    r = run_prov("upstream", "add", co, "--commit", commit, store=tmp_path / "store")
    assert r.returncode == 2 and "'..'" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not list(tmp_path.glob("**/PWNED*")) and not (tmp_path / "..").resolve().joinpath("pwned").exists()


def test_the_checkouts_own_git_config_runs_nothing(tmp_path, mini):
    co = checkout(tmp_path, mini)
    marker = tmp_path / "fsmonitor-ran"
    git(co, "config", "core.fsmonitor", f"touch {marker}; false")
    git(co, "config", "core.hooksPath", str(tmp_path))
    out = prov_json("upstream", "add", co, store=tmp_path / "store")
    assert out["lfs"] and not marker.exists()
    (co / "scorers.py").write_text("# edited\n")  # the worktree check is ours, and still sees this
    r = run_prov("upstream", "add", co, store=tmp_path / "store")
    assert r.returncode == 2 and "scorers.py" in r.err and not marker.exists()


def test_an_allowed_name_that_is_a_link_shows_nothing(tmp_path, mini):
    """A stored upstream whose names file is a link to the clip: bwrap would bind the clip there; the
    view passes the link over, so inflate never reads the ground truth through it."""
    co = tmp_path / "linked"
    shutil.copytree(mini / "upstream", co)
    (co / "public_test_video_names.txt").unlink()
    os.symlink("videos/0.mkv", co / "public_test_video_names.txt")
    git(co, "init", "-q")
    git(co, "add", "-A")
    git(co, "commit", "-qm", "linked")
    from provenance.replay.sandbox import View
    up = tmp_path / "export"
    from provenance.replay import upstream as upstream_mod
    from provenance.store.objects import Store
    st = Store(tmp_path / "store", create=True)
    stored = upstream_mod.add(st, co)
    upstream_mod.export_read_only(st, stored.digest, up)
    assert View("inflate", upstream=("public_test_video_names.txt",)).seen(up) == []
    assert View("evaluate", upstream=("videos/0.mkv",)).seen(up) == ["videos/0.mkv"]


def test_keep_scratch_is_kept_out_of_the_sweep(tmp_path, mini):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    a, rt = sample(mini, "copy")
    r = run_prov("replay", "--archive", a, "--runtime", rt, "--upstream", mini / "upstream", "--keep-scratch",
                 "--json", store=tmp_path / "store", env={"TMPDIR": str(scratch)})
    assert r.returncode == 0, r.err
    rec = json.loads(r.out)["record"]
    assert rec["grade"] == "B"  # no filesystem of the cap: the record says the watchdog kept the writes
    kept = os.listdir(scratch)
    assert len(kept) == 1 and kept[0].startswith("prov-kept-")
    replay(tmp_path, mini / "upstream", mini=mini, tmpdir="tmpdir2")
    r2 = run_prov("replay", "--archive", a, "--runtime", rt, "--upstream", mini / "upstream", "--json",
                  store=tmp_path / "store", env={"TMPDIR": str(scratch)})
    assert r2.returncode == 0 and os.listdir(scratch) == kept  # the next replay left it alone
