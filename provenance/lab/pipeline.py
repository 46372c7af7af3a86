"""The lab pipeline's steps, as dvc.yaml runs them (`prov lab ...`): replay one submission into
its own store, then merge, log, release and verify. Each step reads and writes only the paths
dvc.yaml declares for it, so DVC knows exactly what to re-run."""

from __future__ import annotations

import csv
import io
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from provenance.core.clock import format_time
from provenance.core.files import write_atomic, write_json
from provenance.store.objects import Store
from provenance.log.evidence import log_record


def replay_one(name: str, submissions: Path, upstream: Path, out: Path, metrics: Path, device: str) -> dict:
    from provenance.log.evidence import replay
    sub = submissions / name
    if out.exists():
        shutil.rmtree(out)
    store = Store(out / "store", create=True)
    res = replay(store, sub / "archive.zip", sub / "runtime", upstream, name=name, device=device)
    data = store.read_bytes(res.digest.blake3)
    write_atomic(out / "record.json", data)
    store.close()
    return stage_metrics(name, res.record, data, metrics)


def stage_metrics(name: str, rec, data: bytes, metrics: Path) -> dict:
    """A replay stage's metrics file (DVC metrics) and its summary row, from its record (`data`, its
    bytes): one home for the local and the Ray engines."""
    import hashlib
    r = rec.result
    m = {"canonical_score": r.canonical_score, "posenet": r.posenet, "segnet": r.segnet, "rate": r.rate,
         "samples": r.samples, "archive_bytes": rec.archive.size, "grade": rec.grade}
    write_json(metrics, m)
    return {"name": name, "record": hashlib.sha256(data).hexdigest(), **m}


def _ensure_key(path: Path) -> Path:
    from provenance.core.signing import generate_key
    if not (path / "key.pem").exists():
        generate_key(path)
    return path


def _trust(keys: Path, trust: Path) -> None:
    """Keep the committed policy when it already names our keys; otherwise (a fresh clone makes
    its own lab keys) write a policy for them."""
    from provenance.release.trust import read_trust_doc, trust_policy
    from provenance.core.signing import keyid, load_public
    release_pub, log_pub = keys / "release/key.pub.pem", keys / "log/key.pub.pem"
    if trust.exists():
        doc = read_trust_doc(trust)
        have = {k["keyid"] for k in doc.get("keys", {}).values()}
        if {keyid(load_public(release_pub)), keyid(load_public(log_pub))} <= have:
            return
    expires = format_time(datetime.now(timezone.utc) + timedelta(days=365))
    policy = trust_policy([str(release_pub)], 1, [str(log_pub)], expires)
    write_json(trust, policy.model_dump(mode="json", by_alias=True, exclude_none=True))


def release_all(names: list[str], replays: Path, submissions: Path, store_dir: Path, out: Path,
                trust: Path, keys: Path, plot: Path, sweep: dict | None = None) -> list[dict]:
    from provenance.records.envelope import statement_of
    from provenance.release.create import create_release
    from provenance.release.packet import write_packet
    _ensure_key(keys / "release")
    _ensure_key(keys / "log")
    _trust(keys, trust)
    for p in (store_dir, out):
        if p.exists():
            shutil.rmtree(p)
    store = Store(store_dir, create=True)
    rows = []
    for name in names:
        src = Store(replays / name / "store")
        store.merge_from(src)
        src.close()
    for name in names:  # records first, in params order, so the log reads like the lab notebook
        from provenance.records.models import load_record
        rec = load_record((replays / name / "record.json").read_bytes(), name)
        log_record(store, rec.digest().blake3)
    if sweep is not None:  # annotate parents and axes, then judge every run by the promotion rule
        from provenance.lab.sweep import judge
        judge(store, names, sweep, replays)
    for name in names:
        sub = submissions / name
        env, stmt = create_release(store, str(replays / name / "record.json"), sub / "archive.zip", sub / "runtime",
                                   name, keys / "release/key.pem", log_key_path=keys / "log/key.pem")
        dest = out / name
        dest.mkdir(parents=True)
        shutil.copyfile(replays / name / "record.json", dest / "record.json")  # before the packet: its README names it
        write_packet(env, sub / "runtime", dest, sub / "archive.zip", trust=trust)
        pred = statement_of(env)["predicate"]
        rows.append({"name": name, "archive_bytes": pred["archive_size"], "canonical_score": pred["score"]["canonical"],
                     "grade": pred["grade"], "statement": stmt.sha256})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["name", "archive_bytes", "canonical_score", "grade"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in ("name", "archive_bytes", "canonical_score", "grade")})
    write_atomic(plot, buf.getvalue().encode())
    write_atomic(plot.with_suffix(".svg"), _score_plot(store).encode())
    store.close()
    return rows


def _score_plot(store: Store) -> str:
    """The site's score-against-bytes scatter, for `dvc plots show`: an image renders offline, where
    DVC's vega template fetches its renderer from a CDN."""
    from provenance.lab import ledger
    from provenance.lab.site import plots
    runs = ledger.runs(store)
    front = store.get_ref(ledger.FRONTIER_REF)
    return plots.score_vs_bytes(runs, store.info(front).sha256 if front else None)


def verify_all(names: list[str], releases: Path, submissions: Path, trust: Path, out: Path) -> bool:
    from provenance.release.verify import verify_manifest
    from provenance.release.chain import load_trust
    t = load_trust(str(trust), None)
    results, ok = {}, True
    for name in names:
        sub, rel = submissions / name, releases / name
        o = verify_manifest(rel / "manifest.json", t, str(sub / "archive.zip"), str(sub / "runtime"),
                            str(rel / "record.json"))
        results[name] = {"ok": o.ok, "checks": [c.brief() for c in o.checks]}
        ok &= o.ok
    write_json(out, {"ok": ok, "releases": results})
    return ok
