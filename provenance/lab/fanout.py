"""`dvc repro` fans out: the replay stages of dvc.yaml (`prov lab replay`), run one by one by DVC,
with `engine: ray` start one Ray batch of every submission whose result is not at hand, keyed by the
digests of all a replay depends on, and each stage takes its own result."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from provenance.core.errors import ProvError
from provenance.core.files import remove_tree
from provenance.lab.batch import ReplayBatch, ReplayOutcome, collect, run
from provenance.lab.meeting import closure, dvc_remote, fetch, meeting, publish
from provenance.log.evidence import log_record
from provenance.store.objects import Store


def lab_replay(name: str, submissions: Path, upstream: Path, out: Path, metrics: Path, device: str,
               engine: str = "local", repo: Path = Path("."), fan_out: list[str] | None = None) -> dict:
    """The pipeline's replay step (`prov lab replay --engine`): `local` is pipeline.replay_one as
    ever; `ray` runs the same replay as a Ray task (on the cluster of RAY_ADDRESS, meeting through
    the repository's default DVC remote; else on an embedded Ray) and writes the same outputs.

    With `fan_out` (the names of every replay stage, from params.yaml), `ray` fans out: DVC runs
    its stages one at a time, so the first replay stage to run starts one Ray batch of every
    submission whose result is not already at hand, and each stage then takes its own result.
    Results are kept under .dvc/tmp/prov-fanout/, keyed by the digests of everything a replay
    depends on (archive, runtime tree, upstream tree, device, the provenance sources): a stage
    takes only what its own inputs would make."""
    from provenance.lab.pipeline import replay_one
    if engine == "local":
        return replay_one(name, submissions, upstream, out, metrics, device)
    if fan_out:
        return _from_fan_out(name, submissions, upstream, out, metrics, device, repo, fan_out)
    return _ray_replay(name, submissions, upstream, out, metrics, device, repo)


def _ray_replay(name: str, submissions: Path, upstream: Path, out: Path, metrics: Path, device: str,
                repo: Path) -> dict:
    from provenance.core.files import write_atomic
    from provenance.replay.run import ReplayFailed
    meet = _stage_meeting(repo)
    if out.exists():
        shutil.rmtree(out)
    store = Store(out / "store", create=True)
    try:
        b = ReplayBatch(store, collect(submissions, [name]), upstream.resolve(), device, meeting=meet)
        _, (o,) = run(b, "ray")
        if not o.ok:
            raise (ReplayFailed if o.exit_code == 1 else ProvError)(f"{name}: {o.reason}")
        write_atomic(out / "record.json", store.read_bytes(o.record_b3))
    finally:
        store.close()
    return _stage_metrics(name, out, metrics)


def _stage_metrics(name: str, out: Path, metrics: Path) -> dict:
    from provenance.lab.pipeline import stage_metrics
    from provenance.records.models import load_record
    data = (out / "record.json").read_bytes()
    return stage_metrics(name, load_record(data, name), data, metrics)


def _stage_meeting(repo: Path) -> dict | None:
    """A replay stage's meeting point: the repository's default DVC remote when it joins the
    cluster of RAY_ADDRESS; on an embedded Ray, a scratch directory (None)."""
    return {"kind": "dvc", "conf": dvc_remote(repo, None)} if os.environ.get("RAY_ADDRESS") else None


def fan_out_keys(names: list[str], submissions: Path, upstream: Path, device: str) -> dict[str, str]:
    """{name: what its replay's result depends on, as one digest}: its archive and runtime tree,
    the upstream tree, the device, and the provenance sources that replay (every file of the
    package). What all names share is hashed once."""
    import hashlib
    from provenance.core.tree import hash_path
    shared = hashlib.sha256(b"prov-fanout-v1\0" + device.encode() + b"\0")
    shared.update(hash_path(upstream)[1].sha256.encode() + b"\0")
    pkg = Path(__file__).resolve().parent.parent
    for f in sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        shared.update(f.relative_to(pkg).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    keys = {}
    for n in names:
        h = shared.copy()
        for part in (submissions / n / "archive.zip", submissions / n / "runtime"):
            h.update(hash_path(part)[1].sha256.encode() + b"\0")
        keys[n] = h.hexdigest()
    return keys


def _from_fan_out(name: str, submissions: Path, upstream: Path, out: Path, metrics: Path, device: str,
                  repo: Path, names: list[str]) -> dict:
    from provenance.replay.run import ReplayFailed
    if name not in names:
        names = [*names, name]
    cache = repo / ".dvc" / "tmp" / "prov-fanout"
    keys = fan_out_keys(names, submissions, upstream, device)
    entry = cache / keys[name]
    if not entry.is_dir():
        todo = [n for n in names if not (cache / keys[n]).is_dir()]
        print(f"fan-out: {len(todo)} replay(s) as Ray tasks at once: {', '.join(todo)}", file=sys.stderr)
        failures = _fan_out(todo, keys, submissions, upstream, device, repo, cache)
        if name in failures:
            o = failures[name]
            raise (ReplayFailed if o.exit_code == 1 else ProvError)(f"{name}: {o.reason}")
    else:
        print(f"{name}: taken from the fan-out ({entry.name[:16]})", file=sys.stderr)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(entry / "out", out, symlinks=True)
    return _stage_metrics(name, out, metrics)


def _fan_out(todo: list[str], keys: dict[str, str], submissions: Path, upstream: Path, device: str, repo: Path,
             cache: Path) -> dict[str, "ReplayOutcome"]:
    """One Ray batch of `todo`; each result becomes cache/KEY/out/ (its own store, logged, and
    record.json), exactly what a replay stage writes. Returns the failures."""
    from provenance.core.files import write_atomic
    cache.mkdir(parents=True, exist_ok=True)
    meet = _stage_meeting(repo)
    work_dir = Path(tempfile.mkdtemp(prefix="fanout-", dir=cache))
    failures = {}
    try:
        head = Store(work_dir / "head", create=True)
        try:
            b = ReplayBatch(head, collect(submissions, todo), upstream.resolve(), device, meeting=meet)
            _, outcomes = run(b, "ray")
            hand = meeting({"kind": "dir", "path": str(work_dir / "hand")})
            for o in outcomes:
                if not o.ok:  # its own stage replays it again, and fails there if it fails again
                    failures[o.name] = o
                    print(f"fan-out: {o.name} failed: {o.reason}", file=sys.stderr)
                    continue
                tmp = work_dir / o.name
                store = Store(tmp / "out" / "store", create=True)
                try:  # what a one-submission batch leaves in its stage's store: inputs, results, the log
                    sub = next(s for s in b.submissions if s.name == o.name)
                    inputs = [head.add_as(p, k, w).blake3 for p, k, w in  # stat-cache hits: nothing re-read
                              ((upstream.resolve(), "tree", "upstream"), (sub.archive, "file", "archive"),
                               (sub.runtime, "tree", "runtime"))]
                    rows = closure(head, [*inputs, o.record_b3])
                    publish(head, rows, hand)
                    fetch(store, rows, hand)
                    log_record(store, o.record_b3)
                    write_atomic(tmp / "out" / "record.json", store.read_bytes(o.record_b3))
                finally:
                    store.close()
                final = cache / keys[o.name]
                if final.exists():
                    shutil.rmtree(final)
                os.rename(tmp, final)  # whole or not at all
        finally:
            head.close()
    finally:
        remove_tree(work_dir)
    return failures
