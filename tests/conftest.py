import base64
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PROV = str(Path(sys.executable).parent / "prov")
REPO = Path(__file__).resolve().parent.parent
# fixtures by what they need: the miniature contest (torch, PyAV), DVC in a clone of the working tree
pytest_plugins = ["needs.miniature", "needs.dvc"]


def run_prov(*args, store=None, check=None, input=None, env=None, **kw):
    e = dict(os.environ)
    e.pop("PROV_STORE", None)
    if store is not None:
        e["PROV_STORE"] = str(store)
    if env:
        e.update(env)
    r = subprocess.run([PROV, *map(str, args)], capture_output=True, env=e, input=input, **kw)
    r.out = r.stdout.decode("utf-8", "replace")
    r.err = r.stderr.decode("utf-8", "replace")
    if check is not None:
        assert r.returncode == check, f"prov {' '.join(map(str, args))} -> {r.returncode}\n{r.out}\n{r.err}"
    return r


def inproc(*args, store=None, check=0):
    """Set-up steps in this process (CliRunner): the same commands without a Python start-up each."""
    from click.testing import CliRunner
    from provenance.cli.app import cli
    env = {"PROV_STORE": str(store)} if store else {}
    r = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    assert check is None or r.exit_code == check, (args, r.exit_code, r.output)
    return r


def prov_json(*args, **kw):
    r = run_prov(*args, "--json", check=kw.pop("check", 0), **kw)
    return json.loads(r.out)


def make_tree(root: Path, spec: dict) -> Path:
    """spec: name -> bytes (file) | ('exec', bytes) | ('link', target) | dict (subdir)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, v in spec.items():
        p = root / name
        if isinstance(v, dict):
            make_tree(p, v)
        elif isinstance(v, tuple) and v[0] == "link":
            os.symlink(v[1], p)
        elif isinstance(v, tuple) and v[0] == "exec":
            p.write_bytes(v[1])
            p.chmod(0o755)
        else:
            p.write_bytes(v)
            p.chmod(0o644)
    return root


RUNTIME_SPEC = {
    "inflate.sh": ("exec", b"#!/bin/sh\necho inflate\n"),
    "model.bin": bytes(range(256)) * 40,
    "lib": {"libSvtAv1Enc.so.2.3.0": b"\x7fELF fake", "libSvtAv1Enc.so.2": ("link", "libSvtAv1Enc.so.2.3.0")},
    "empty": {},
    "src": {"codec.py": b"print('x')\n", "deep": {"up.txt": ("link", "../codec.py")}},
}


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def runtime(tmp_path):
    return make_tree(tmp_path / "runtime", RUNTIME_SPEC)


# -- reports and records ------------------------------------------------------------------------

REPORT = """=== Evaluation config ===
  batch_size: 16
  device: cuda
  num_threads: 2
  prefetch_queue_depth: 4
  report: submissions/x/report.txt
  seed: 1234
  submission_dir: submissions/x
  uncompressed_dir: videos
  video_names_file: public_test_video_names.txt
=== Evaluation results over {samples} samples ===
  Average PoseNet Distortion: {pose}
  Average SegNet Distortion: {seg}
  Submission file size: {size} bytes
  Original uncompressed size: {unc} bytes
  Compression Rate: {rate}
  Final score: 100*segnet_dist + √(10*posenet_dist) + 25*rate = {score}
"""
GOOD = dict(samples=600, pose="0.38042614", seg="0.00946623", size="2,244,900", unc="37,545,489",
            rate="0.05979147", score="4.39")


def report(**over) -> bytes:
    return REPORT.format(**{**GOOD, **over}).encode()


def v1_record(runtime: Path, archive: Path) -> dict:
    from provenance.records import legacy
    rows = []
    for p in sorted(runtime.rglob("*")):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            rows.append({"relative_path": p.relative_to(runtime).as_posix(), "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()})
    tac = {"runtime_root_name": "submissions/apogee", "files": [], "root": "/teamspace/studios/this_studio/x"}
    up = {"relative_path": "evaluate.py", "bytes": 1234, "sha256": "ab" * 32}
    manifest = {"schema": legacy.V1_MANIFEST, "runtime_root": "/teamspace/studios/this_studio/runtime",
                "runtime_file_count": len(rows), "files": rows, "repo_local_tac_import_manifest": tac,
                "upstream_evaluate_py": up}
    manifest["runtime_tree_sha256"] = hashlib.sha256(json.dumps(
        {"files": rows, "repo_local_tac_import_manifest": tac, "upstream_evaluate_py": up,
         "runtime_root_name": "submissions/apogee"}, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    data = archive.read_bytes()
    pose, seg = 0.00017231, 0.00067591
    rate = len(data) / 37_545_489
    return {"archive_size_bytes": len(data), "avg_posenet_dist": pose, "avg_segnet_dist": seg,
            "rate_unscaled": rate, "n_samples": 600,
            "canonical_score": 100 * seg + math.sqrt(pose * 10) + 25 * rate,
            "canonical_score_source": "recomputed", "final_score": round(100 * seg + math.sqrt(pose * 10) + 25 * rate, 2),
            "score_seg_contribution": 100 * seg, "score_pose_contribution": math.sqrt(pose * 10),
            "score_rate_contribution": 25 * rate,
            "report_path": "/teamspace/studios/this_studio/work/report.txt", "work_dir": "/home/alice/work",
            "provenance": {"archive_sha256": hashlib.sha256(data).hexdigest(), "archive_size_bytes": len(data),
                           "device": "cuda", "gpu_model": "Tesla T4", "gpu_t4_match": True,
                           "torch_version": "2.5.1", "cuda_version": "12.4", "upstream_commit": "deadbeef",
                           "started_at_utc": "2026-05-04T12:13:00Z",
                           "sys_argv": ["/home/alice/venv/bin/python", "eval.py"],
                           "env_vars": {"HOME": "/root", "HF_TOKEN": "hf_secret"},
                           "inflate_runtime_manifest": manifest}}


def record_bytes(i: int, score: float, grade: str = "A++") -> bytes:
    """A small valid EvalRecord's canonical bytes, for ledgers of many runs."""
    from provenance.records.models import EvalRecord
    doc = {"schema": "comma-lab/eval-record/v1", "profile": "comma-official-v1", "source": "replay",
           "archive": {"sha256": f"{i:064x}", "size": 1000 + i},
           "result": {"samples": 1, "posenet": 0.0, "segnet": 0.0, "rate": 0.5, "canonical_score": score},
           "grade": grade, "axis": "test", "allowed_use": "test", "created_at": "2026-01-01T00:00:00Z"}
    return EvalRecord.model_validate(doc).canonical_bytes()


# -- a signed release, and a world of valid inputs for the fuzzers -------------------------------

@pytest.fixture
def lab(tmp_path):
    """Three keys, a 1-of-1 trust policy on key a, a record and a signed release."""
    store = tmp_path / "store"
    for k in "abc":
        run_prov("key", "generate", "--out", tmp_path / k, check=0)
    rt = make_tree(tmp_path / "runtime", RUNTIME_SPEC)
    archive = tmp_path / "archive.zip"
    archive.write_bytes(os.urandom(2_244_900))
    rep = tmp_path / "report.txt"
    rep.write_bytes(report())
    rec = prov_json("adjudicate", rep, "--archive", archive, "--runtime", rt, store=store)
    trust = tmp_path / "trust.json"
    run_prov("trust", "init", "--release-key", tmp_path / "a/key.pub.pem", "--expires", "2099-01-01T00:00:00Z",
             "--out", trust, check=0)
    manifest = tmp_path / "manifest.json"
    run_prov("release", "create", "--record", rec["digest"]["sha256"], "--archive", archive, "--runtime", rt,
             "--name", "demo", "--key", tmp_path / "a/key.pem", "--out", manifest, store=store, check=0)
    return dict(dir=tmp_path, store=store, rt=rt, archive=archive, trust=trust, manifest=manifest,
                record=rec, key=lambda k: tmp_path / k / "key.pem", pub=lambda k: tmp_path / k / "key.pub.pem")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Keys, a trust policy naming a log key, a record, a checkpoint, a release with log proofs,
    a legacy v1 record, a verifier state file and a tiny public bundle: each verified clean."""
    from fuzzkit import invoke
    from provenance.core import signing
    tmp = tmp_path_factory.mktemp("fuzz")
    fast = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp / "fast"
    store = fast / "store"
    (fast / "cases").mkdir(parents=True)

    def ok(*args):
        res = invoke(["--store", store, *args])
        assert res.exit_code == 0, (args, res.output)
        return res

    for k in ("a", "log"):
        ok("key", "generate", "--out", tmp / k)
    rt = make_tree(tmp / "runtime", RUNTIME_SPEC)
    archive = tmp / "archive.zip"
    archive.write_bytes(os.urandom(2_244_900))
    (tmp / "report.txt").write_bytes(report())
    rec = json.loads(ok("adjudicate", tmp / "report.txt", "--archive", archive, "--runtime", rt, "--json").stdout)
    trust = tmp / "trust.json"
    ok("trust", "init", "--release-key", tmp / "a/key.pub.pem", "--log-key", tmp / "log/key.pub.pem",
       "--expires", "2099-01-01T00:00:00Z", "--out", trust)
    ok("log", "checkpoint", "--key", tmp / "log/key.pem", "--out", tmp / "cp1.note")
    manifest = tmp / "manifest.json"
    ok("release", "create", "--record", rec["digest"]["sha256"], "--archive", archive, "--runtime", rt,
       "--name", "demo", "--key", tmp / "a/key.pem", "--log-key", tmp / "log/key.pem", "--out", manifest)
    state = tmp / "state.json"
    ok("verify", "--no-files", manifest, "--trust", trust, "--since", tmp / "cp1.note", "--state", state)
    legacy_arch = tmp / "legacy.zip"
    legacy_arch.write_bytes(os.urandom(178_981))
    legacy_doc = v1_record(rt, legacy_arch)
    (tmp / "legacy.json").write_text(json.dumps(legacy_doc))
    ok("import-legacy", tmp / "legacy.json")
    site = tmp / "site"
    (site / "evidence").mkdir(parents=True)  # small: every case re-runs the hygiene scan over it
    (site / "index.html").write_text("<!doctype html><title>lab</title><p>score 4.39</p>\n")
    (site / "evidence" / "SHA256SUMS").write_text(f"{'ab' * 32}  archive.zip\n")
    import hashlib
    files = [{"path": p, "sha256": hashlib.sha256((site / p).read_bytes()).hexdigest()}
             for p in ("index.html", "evidence/SHA256SUMS")]
    site_manifest = {"files": files}
    (site / "public_bundle_manifest.json").write_text(json.dumps(site_manifest))
    ok("site", "check", site)
    env = json.loads(manifest.read_bytes())
    yield dict(tmp=tmp, fast=fast, store=store, rt=rt, archive=archive, trust=trust, manifest=manifest, env=env,
               statement=json.loads(base64.b64decode(env["payload"])), state=state, cp1=tmp / "cp1.note",
               legacy=legacy_doc, site=site, site_manifest=site_manifest, key=signing.load_private(tmp / "a/key.pem"))
    shutil.rmtree(fast, ignore_errors=True)
