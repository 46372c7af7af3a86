"""Turn evidence (a report, an archive, a runtime tree, an upstream checkout) into an EvalRecord."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from provenance.contest import rules
from provenance.core.clock import now_rfc3339
from provenance.contest.rules import Profile
from provenance.core.checks import Check
from provenance.core.digest import Digest, hash_file
from provenance.core.errors import ProvError
from provenance.records.models import (BlobDigest, CheckResult, Environment, EvalRecord, Result, Runtime, SandboxRecord,
                     TreeDigest, Upstream)
from provenance.store.objects import Store


def tree_model(d: Digest) -> TreeDigest:
    return TreeDigest(sha256=d.sha256, blake3=d.blake3, size=d.size)


def blob_model(d: Digest) -> BlobDigest:
    return BlobDigest(sha256=d.sha256, blake3=d.blake3, size=d.size)


def upstream_identity(root: str | Path, store: Store | None = None) -> Upstream:
    """What pins an upstream checkout: commit, evaluate entry point, scorer weights, videos."""
    from provenance.core import tree as treemod
    root = Path(root)
    evaluate = root / "evaluate.py"
    if not evaluate.is_file():
        raise ProvError(f"{root}: not an upstream checkout (no evaluate.py)")
    commit = None
    if (root / ".git").exists():
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = r.stdout.strip() if r.returncode == 0 else None
    weights = {}
    models = root / "models"
    for f in sorted(models.iterdir()) if models.is_dir() else ():
        if f.is_file() and not f.name.startswith("."):
            weights[f.name] = hash_file(f).sha256
    videos = root / "videos"
    vtree = usize = None
    if videos.is_dir():
        # the official evaluate.py sums *every* file under videos/: so do we
        usize = sum(os.lstat(p).st_size for _, p in treemod.iter_files(os.fsencode(videos)))
        vtree = tree_model(store.add(videos)[1] if store else treemod.walk(videos, lambda p, s: hash_file(p)))
    return Upstream(commit=commit, evaluate_sha256=hash_file(evaluate).sha256, scorer_weights=weights,
                    videos_tree=vtree, uncompressed_size=usize)


def save_record(store: Store, record: EvalRecord, children: tuple[str, ...] = ()) -> Digest:
    """Store a record's canonical bytes, linked to the evidence it names so gc keeps them together.
    Logging it is the caller's next step (provenance.log.translog.log_object)."""
    return store.put_bytes(record.canonical_bytes(), "record", tuple(c for c in children if c))


def _stored(store: Store, x, kind: str, what: str) -> Digest:
    """A path to add, or a Digest of something already stored (what replay ran)."""
    return x if isinstance(x, Digest) else store.add_as(x, kind, what)


def runtime_artifacts(store: Store, tree_b3: str) -> Check:
    """Walk a stored runtime tree for its size and its large non-text files."""
    total = files = 0
    large: list[tuple[str, int]] = []
    for kind, path, size, child in store.walk_tree(tree_b3):
        if kind == "tree":
            continue
        total += size
        if kind == "link":
            continue
        files += 1
        if size > rules.ARTIFACT_BYTES:
            with store.open(child) as f:
                if not rules.is_text(f.read(8192)):
                    large.append((path, size))
    return rules.check_runtime_artifacts(total, files, sorted(large))


def runtime_information(store: Store, tree_b3: str, profile: Profile) -> tuple[int, list[tuple[str, int]]]:
    """(information, largest contributors) of a stored runtime tree: one zlib-9 stream over its
    canonical listing (kind, path, link target, in Store.walk_tree's order) and then every file's bytes,
    except the profile's reviewed tools (by sha256). Each file's own compressed size ranks the
    contributors."""
    import zlib
    listing, files = [], []
    for kind, path, size, child in store.walk_tree(tree_b3):
        if kind == "link":
            listing.append(f"link {path} -> {store.read_bytes(child).decode('utf-8', 'replace')}")
        else:
            listing.append(f"{kind} {path}")
            if kind != "tree":
                files.append((path, child))
    z = zlib.compressobj(9)
    total = len(z.compress("\n".join(listing).encode() + b"\n"))
    contributors = []
    for path, b3 in files:
        if store.info(b3).sha256 in profile.custody_tools:
            continue
        own, alone = zlib.compressobj(9), 0
        with store.open(b3) as f:
            while chunk := f.read(1 << 20):
                total += len(z.compress(chunk))
                alone += len(own.compress(chunk))
        contributors.append((path, alone + len(own.flush())))
    total += len(z.flush())
    return total, sorted(contributors, key=lambda c: -c[1])


def adjudicate_report(store: Store, report_path: str | Path | bytes, archive: str | Path | Digest | None,
                      runtime: str | Path | Digest | None = None, upstream: str | Path | None = None,
                      profile: Profile = rules.OFFICIAL, source: str = "imported-report",
                      environment: Environment | None = None, timings: dict | None = None,
                      inflated: Digest | None = None, label: str | None = None,
                      extra_checks: list[Check] = (), logs: dict[str, Digest] | None = None,
                      sandbox: SandboxRecord | None = None, frames: dict[str, Digest] | None = None,
                      upstream_facts: dict | None = None
                      ) -> tuple[EvalRecord, Digest, list[Check]]:
    """`report_path` is a path, or the report's bytes as a replay read them. `archive` None records a
    claim not bound to an archive: graded external at best, archive checks 'not checked' (the schema
    says so)."""
    if archive is None and source != "imported-report":
        raise ProvError("only an imported report may be recorded without its archive")
    if isinstance(report_path, bytes):
        report_bytes, rep = report_path, rules.parse_report(report_path)
    else:
        report_bytes, rep = rules.read_report(report_path)
    archive_d = _stored(store, archive, "file", "archive") if archive is not None else None
    children = [archive_d.blake3] if archive_d else []
    runtime_d = None
    if runtime is not None:
        runtime_d = _stored(store, runtime, "tree", "runtime")
        children.append(runtime_d.blake3)
    up = upstream_identity(upstream, store) if upstream is not None else Upstream()
    if upstream_facts:  # what a replay knows of the stored upstream it exported (commit, tree, LFS, ignored)
        facts = {k: v for k, v in upstream_facts.items() if v is not None or k != "commit"}
        up = Upstream.model_validate({**up.model_dump(), **facts})
    report_d = store.put_bytes(report_bytes, "blob")
    children.append(report_d.blake3)
    if up.videos_tree:
        children.append(up.videos_tree.blake3)
    children += [d.blake3 for d in (logs or {}).values()]
    children += [d.blake3 for d in (frames or {}).values()]

    checks = rules.check_report(profile, rep, archive_d.size if archive_d else None) + list(extra_checks)
    information = None
    if runtime_d is not None:
        checks.append(runtime_artifacts(store, runtime_d.blake3))
        information, contributors = runtime_information(store, runtime_d.blake3, profile)
        checks.append(rules.custody_check(profile, information, contributors))
    pinned = None
    if upstream is not None:
        pin = rules.check_evaluator(profile, upstream)
        checks.append(pin)
        pinned = pin.ok
    if up.uncompressed_size is not None:
        checks.append(Check("upstream_videos_size", up.uncompressed_size == rep.uncompressed_size,
                            f"videos/ holds {up.uncompressed_size:,} bytes, report says {rep.uncompressed_size:,}"))
    contradicted = any(not c.ok and c.severity == "error" for c in checks)
    env = environment or Environment(device=rep.config.get("device"))
    by_name = {c.name: c for c in checks}
    g, axis, use = rules.grade(
        profile, source=source, device=env.device, gpu_model=env.gpu_model, samples=rep.samples,
        platform=env.platform, custody_complete=runtime_d is not None,
        canonical_env=by_name["uncompressed_size_canonical"].ok, sandboxed=env.sandboxed is not False,
        contradicted=contradicted, evaluator_pinned=pinned,
        limits_kept=by_name["kernel_limits"].ok if "kernel_limits" in by_name else True,
        custody_ok=by_name["runtime_custody"].ok if "runtime_custody" in by_name else True)
    record = EvalRecord(
        profile=profile.name, source=source, archive=blob_model(archive_d) if archive_d else None,
        runtime=Runtime(tree=tree_model(runtime_d), information=information,
                        information_compressor=rules.CUSTODY_COMPRESSOR) if runtime_d else Runtime(),
        upstream=up, environment=env,
        result=Result(samples=rep.samples, posenet=rep.posenet, segnet=rep.segnet, rate=rep.rate,
                      canonical_score=rules.canonical_score(profile, rep), printed_score=rep.printed_score,
                      printed=rep.printed, archive_size_reported=rep.archive_size,
                      uncompressed_size_reported=rep.uncompressed_size,
                      custody_adjusted_rate=rules.custody_adjusted_rate(
                          profile, archive_d.size, information, profile.uncompressed_size)
                      if archive_d is not None and information is not None else None),
        report=blob_model(report_d), inflated=tree_model(inflated) if inflated else None,
        logs={k: blob_model(v) for k, v in (logs or {}).items()},
        timings=timings or {}, sandbox=sandbox, checks=[CheckResult(**c.as_dict()) for c in checks],
        frames={k: blob_model(v) for k, v in frames.items()} if frames else None,
        grade=g, axis=axis, allowed_use=use, label=label, created_at=now_rfc3339())
    return record, save_record(store, record, tuple(children)), checks
