"""Replay: recompute the score from the exact stored bytes, in a sandbox.

intake -> inflate -> check every .raw -> evaluate -> parse -> adjudicate -> EvalRecord.
The runtime tree and archive are exported from the store, so what runs is exactly what was
hashed, whatever happens to the originals meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import contest, intake
from .adjudicate import adjudicate_report
from .contest import Check
from .digest import Digest, hash_file
from .errors import ProvError, VerificationFailed
from .models import EvalRecord, Environment
from .sandbox import Layout, Limits, PhaseResult, Sandbox
from .store import Store

NAMES_FILE = "public_test_video_names.txt"
PROFILE_MARKER = "comma_lab_profile"  # the miniature names its profile; a real checkout has none

PROBE = r"""
import json, platform, shutil, subprocess, sys
out = {"python": platform.python_version(), "platform": platform.system().lower() + "-" + platform.machine()}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    if sys.argv[1] == "cuda" and torch.cuda.is_available():
        out["gpu_model"] = torch.cuda.get_device_name(0)
except Exception as e:
    out["torch_error"] = repr(e)
if sys.argv[1] == "cuda" and shutil.which("nvidia-smi"):
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        name, driver = [x.strip() for x in r.stdout.splitlines()[0].split(",")[:2]]
        out.update(gpu_model=name, driver=driver)
print(json.dumps(out))
"""


class ReplayFailed(VerificationFailed):
    """The submission did not produce a score: a phase failed, timed out or left no output."""


@dataclass
class ReplayResult:
    record: EvalRecord
    digest: Digest
    checks: list[Check]
    phases: list[PhaseResult] = field(default_factory=list)


def detect_profile(upstream: Path) -> contest.Profile:
    marker = upstream / PROFILE_MARKER
    return contest.get_profile(marker.read_text().strip()) if marker.is_file() else contest.OFFICIAL


def default_name(runtime: Path) -> str:
    p = runtime.resolve()
    return p.parent.name if p.name == "runtime" else p.name


def _scratch_layout(scratch: Path, upstream: Path, name: str, sandboxed: bool) -> Layout:
    if sandboxed:
        return Layout(upstream=upstream, name=name, runtime_copy=scratch / "sub", out=scratch / "out")
    view = scratch / "upstream"  # no mount namespace: build the same layout from symlinks
    (view / "submissions").mkdir(parents=True)
    for e in os.listdir(upstream):
        if e != "submissions":
            os.symlink(upstream / e, view / e)
    if (upstream / "submissions").is_dir():
        for f in (upstream / "submissions").iterdir():
            if f.is_file():
                os.symlink(f, view / "submissions" / f.name)
    return Layout(upstream=view, name=name, runtime_copy=view / "submissions" / name, out=scratch / "out")


def replay(store: Store, archive: str | Path, runtime: str | Path, upstream: str | Path, name: str | None = None,
           device: str = "cpu", sandboxed: bool = True, limits: Limits = Limits(),
           progress: Callable[[str], None] | None = None, scratch_base: str | None = None,
           keep_scratch: bool = False) -> ReplayResult:
    say = progress or (lambda msg: None)
    upstream, runtime = Path(upstream).resolve(), Path(runtime)
    if not (upstream / "evaluate.py").is_file():
        raise ProvError(f"{upstream}: not an upstream checkout (no evaluate.py)")
    names_file = upstream / NAMES_FILE
    if not names_file.is_file():
        raise ProvError(f"{upstream}: no {NAMES_FILE}")
    if device not in ("cpu", "cuda"):
        raise ProvError(f"--device {device}: must be cpu or cuda")
    name = name or default_name(runtime)
    if not name.isidentifier():
        raise ProvError(f"--name {name!r}: must be a Python identifier (it becomes submissions.<name>)")
    profile = detect_profile(upstream)
    say(f"hashing archive and runtime into {store.root}")
    archive_d = store.add_as(archive, "file", "archive")
    runtime_d = store.add_as(runtime, "tree", "runtime")

    scratch = Path(tempfile.mkdtemp(prefix="prov-replay-", dir=scratch_base))
    try:
        layout = _scratch_layout(scratch, upstream, name, sandboxed)
        store.export(runtime_d.blake3, layout.runtime_copy)
        for reserved in ("archive", "inflated", "archive.zip"):
            if os.path.lexists(layout.runtime_copy / reserved):
                raise ProvError(f"{runtime}: runtime tree ships {reserved!r}, which the evaluator writes")
        say("intake: unzipping archive.zip safely")
        intake.extract(store.path_of(archive_d.blake3), layout.runtime_copy / "archive", label=str(archive))
        shutil.copyfile(store.path_of(archive_d.blake3), layout.runtime_copy / "archive.zip")
        (layout.runtime_copy / "inflated").mkdir()
        layout.out.mkdir()
        logs_dir = scratch / "logs"
        logs_dir.mkdir()
        box = Sandbox(layout, device, limits, sandboxed)
        sub, up = str(layout.submission), str(layout.upstream)
        phases: list[PhaseResult] = []

        def phase(label: str, argv: list[str]) -> PhaseResult:
            say(f"{label}: running{' in the sandbox' if sandboxed else ' WITHOUT a sandbox'}")
            r = box.run(label, argv, logs_dir)
            phases.append(r)
            say(f"{label}: {'done' if r.ok else 'FAILED'} in {r.wall:.1f} s")
            if not r.ok:
                last = (r.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:300]
                raise ReplayFailed(f"{label}: {r.reason}" + (f": {last}" if last else ""))
            return r

        probe = phase("probe", [sys.executable, "-c", PROBE, device])
        env_seen = json.loads(probe.stdout.decode().strip().splitlines()[-1])
        phase("inflate", ["bash", f"{sub}/inflate.sh", f"{sub}/archive", f"{sub}/inflated", f"{up}/{NAMES_FILE}"])
        names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
        want = profile.frames * profile.height * profile.width * 3
        for n in names:
            raw = layout.runtime_copy / "inflated" / (os.path.splitext(n)[0] + ".raw")
            if not raw.is_file():
                raise ReplayFailed(f"inflate: produced no inflated/{raw.name}")
            if raw.stat().st_size != want:
                raise ReplayFailed(f"inflate: inflated/{raw.name} has {raw.stat().st_size:,} bytes, expected "
                                   f"{want:,} ({profile.frames} frames x {profile.height} x {profile.width} x 3)")
        raw_check = Check("inflated_outputs", True, f"{len(names)} .raw file(s) of {want:,} bytes")
        phase("evaluate", [sys.executable, "evaluate.py", "--submission-dir", sub,
                           "--uncompressed-dir", f"{up}/videos", "--report", f"{box.out_inside}/report.txt",
                           "--video-names-file", f"{up}/{NAMES_FILE}", "--device", device])
        report = layout.out / "report.txt"
        if not report.is_file():
            raise ReplayFailed("evaluate: wrote no report.txt")
        from . import tree as treemod
        inflated = treemod.walk(layout.runtime_copy / "inflated", lambda p, s: hash_file(p))
        log_blobs = {}
        with store.batch() as b:
            for r in phases:
                log_blobs[f"{r.name}.stdout"] = b.put_bytes(r.stdout, "blob")
                log_blobs[f"{r.name}.stderr"] = b.put_bytes(r.stderr, "blob")
        env = Environment(device=device, gpu_model=env_seen.get("gpu_model"), driver=env_seen.get("driver"),
                          cuda=env_seen.get("cuda"), torch=env_seen.get("torch"), python=env_seen.get("python"),
                          platform=env_seen.get("platform"), sandboxed=sandboxed,
                          # the allow-list as used, with this machine's Python location left out
                          sandbox_env={k: v.replace(box.python_bin, "${PYTHON_BIN}") for k, v in box.env.items()})
        say("adjudicating")
        record, digest, checks = adjudicate_report(
            store, report, archive_d, runtime_d, upstream, profile, source="replay", environment=env,
            timings={r.name: round(r.wall, 3) for r in phases}, inflated=inflated, label=name,
            extra_checks=[raw_check] + ([] if sandboxed else [Check("sandboxed", False,
                                                                    "replayed with --no-sandbox: grade capped below A",
                                                                    "flag")]),
            logs=log_blobs)
        return ReplayResult(record, digest, checks, phases)
    finally:
        if not keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


# -- comparison -----------------------------------------------------------------------------

FIELDS = ("canonical_score", "posenet", "segnet", "rate", "samples", "archive_sha256", "runtime_sha256")


def expected_from(path: str | Path) -> dict:
    """The claim to compare with: a release manifest (its statement) or an EvalRecord."""
    from . import canonical, signing
    doc = canonical.load_file(path)
    if isinstance(doc, dict) and "payload" in doc:
        st = canonical.loads(signing.b64d(doc["payload"], f"{path}: payload"), f"{path}: payload")
        p, subj = st["predicate"], {s["name"]: s["digest"] for s in st["subject"]}
        return {"canonical_score": p["score"]["canonical"], "posenet": p["score"]["posenet"],
                "segnet": p["score"]["segnet"], "rate": p["score"]["rate"], "samples": p["score"]["samples"],
                "archive_sha256": subj["archive.zip"]["sha256"], "runtime_sha256": subj["runtime/"].get("prov-tree-v1-sha256", subj["runtime/"].get("sha256"))}
    if isinstance(doc, dict) and doc.get("schema") == "comma-lab/eval-record/v1":
        r = doc["result"]
        return {"canonical_score": r["canonical_score"], "posenet": r["posenet"], "segnet": r["segnet"],
                "rate": r["rate"], "samples": r["samples"], "archive_sha256": doc["archive"]["sha256"],
                "runtime_sha256": (doc.get("runtime", {}).get("tree") or {}).get("sha256")}
    raise ProvError(f"{path}: neither a release manifest nor an EvalRecord")


def compare(record: EvalRecord, expected: dict) -> list[dict]:
    got = {"canonical_score": record.result.canonical_score, "posenet": record.result.posenet,
           "segnet": record.result.segnet, "rate": record.result.rate, "samples": record.result.samples,
           "archive_sha256": record.archive.sha256,
           "runtime_sha256": record.runtime.tree.sha256 if record.runtime.tree else None}
    return [{"field": f, "expected": expected.get(f), "replayed": got[f], "same": expected.get(f) == got[f]}
            for f in FIELDS]
