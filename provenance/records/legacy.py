"""Import of comma-lab v1 evaluation records (contest_auth_eval.adjudicated.json; CONTEST.md).

Everything the v1 record claims is re-derived where it can be: the canonical score from its
components, its runtime_tree_sha256 from its own rows, and (given the files) every row's bytes
and the archive's SHA-256. Machine-local facts (absolute paths, argv, environment variables)
are left behind: the converted record carries digests, not locations.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from provenance.core import canonical
from provenance.contest import rules
from provenance.core.clock import now_rfc3339
from provenance.records.adjudicate import blob_model, runtime_information, save_record, tree_model
from provenance.core.checks import Check
from provenance.core.digest import Digest, hash_file
from provenance.core.errors import ProvError
from provenance.records.models import BlobDigest, CheckResult, Environment, EvalRecord, Result, Runtime, Upstream
from provenance.store.objects import Store

V1_MANIFEST = "contest_auth_eval_runtime_dependency_manifest_v1"


def _v1_digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _strip_key(obj, key: str):
    if isinstance(obj, dict):
        return {k: _strip_key(v, key) for k, v in obj.items() if k != key}
    if isinstance(obj, list):
        return [_strip_key(v, key) for v in obj]
    return obj


def v1_runtime_object(manifest: dict) -> dict:
    """The object whose compact sorted JSON the v1 runtime_tree_sha256 hashes (CONTEST.md)."""
    tac = manifest.get("repo_local_tac_import_manifest")
    obj = {"files": manifest.get("files"), "repo_local_tac_import_manifest": tac,
           "upstream_evaluate_py": manifest.get("upstream_evaluate_py"),
           "runtime_root_name": tac.get("runtime_root_name") if isinstance(tac, dict) else None}
    if "external_dependency_roots" in manifest:  # later v1 revisions
        obj["external_dependency_roots"] = manifest["external_dependency_roots"]
    return obj


def v1_runtime_digests(manifest: dict) -> tuple[str, str]:
    """(runtime_tree_sha256, location-free runtime_content_tree_sha256)."""
    obj = v1_runtime_object(manifest)
    return _v1_digest(obj), _v1_digest(_strip_key(obj, "runtime_root_name"))


def _num(d: dict, key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProvError(f"{where}: field {key!r} missing or not a finite number")
    return v


def _rel_ok(p: str) -> bool:
    return isinstance(p, str) and p != "" and not p.startswith("/") and ".." not in p.split("/")


def import_legacy(store: Store, path: str | Path, archive: str | Path | None = None,
                  runtime: str | Path | None = None,
                  profile: rules.Profile = rules.OFFICIAL) -> tuple[EvalRecord, Digest, list[Check]]:
    where = str(path)
    doc = canonical.load_file(path, where)
    if not isinstance(doc, dict) or not isinstance(doc.get("provenance"), dict):
        raise ProvError(f"{where}: not a comma-lab v1 record (no provenance object)")
    prov = doc["provenance"]
    posenet, segnet = _num(doc, "avg_posenet_dist", where), _num(doc, "avg_segnet_dist", where)
    rate, claimed = _num(doc, "rate_unscaled", where), _num(doc, "canonical_score", where)
    size = doc.get("archive_size_bytes")
    samples = doc.get("n_samples")
    if not isinstance(size, int) or not isinstance(samples, int):
        raise ProvError(f"{where}: archive_size_bytes and n_samples must be integers")
    if size < 0 or samples < 0 or min(posenet, segnet, rate) < 0:
        raise ProvError(f"{where}: negative distortion or rate")
    checks: list[Check] = []

    score = profile.score(posenet, segnet, rate)
    if not math.isfinite(score):
        raise ProvError(f"{where}: components give a non-finite score")
    checks.append(Check("canonical_score_recomputes", score == claimed,
                        f"recorded {claimed!r}, recomputed {score!r}"))
    for key, part in (("score_seg_contribution", 100 * segnet), ("score_pose_contribution", math.sqrt(posenet * 10)),
                      ("score_rate_contribution", 25 * rate)):
        if key in doc:
            checks.append(Check(key, doc[key] == part, f"recorded {doc[key]!r}, recomputed {part!r}"))
    canon_rate = size / profile.uncompressed_size
    checks.append(Check("rate_matches_size", abs(canon_rate - rate) <= 5e-9,
                        f"rate {rate!r}, {size:,}/{profile.uncompressed_size:,} = {canon_rate!r}", "flag"))
    checks.append(Check("samples", samples == profile.samples,
                        f"{samples} samples, profile expects {profile.samples}", "flag"))
    psize = prov.get("archive_size_bytes")
    checks.append(Check("archive_size_consistent", psize in (None, size),
                        f"top level says {size:,}, provenance says {psize}"))
    sha = prov.get("archive_sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ProvError(f"{where}: provenance.archive_sha256 missing or not a SHA-256")

    archive_model = BlobDigest(sha256=sha, size=size)
    children = []
    if archive is not None:
        ad = store.add_as(archive, "file", "archive")
        checks.append(Check("archive_sha256_matches", ad.sha256 == sha, f"record {sha}, file {ad.sha256}"))
        checks.append(Check("archive_size_matches", ad.size == size, f"record {size:,}, file {ad.size:,}"))
        if ad.sha256 == sha and ad.size == size:
            archive_model = blob_model(ad)
            children.append(ad.blake3)

    manifest = prov.get("inflate_runtime_manifest")
    runtime_model = Runtime()
    custody = False
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), list):
        rows = manifest["files"]
        if not all(isinstance(r, dict) for r in rows):
            raise ProvError(f"{where}: inflate_runtime_manifest.files must be a list of objects")
        v1, content = v1_runtime_digests(manifest)
        ok_v1 = v1 == manifest.get("runtime_tree_sha256")
        checks.append(Check("runtime_tree_v1_recomputes", ok_v1,
                            f"recorded {manifest.get('runtime_tree_sha256')}, recomputed from rows {v1}"))
        if "runtime_content_tree_sha256" in manifest:
            checks.append(Check("runtime_content_v1_recomputes", content == manifest["runtime_content_tree_sha256"],
                                f"recorded {manifest['runtime_content_tree_sha256']}, recomputed {content}"))
        if "runtime_file_count" in manifest:
            checks.append(Check("runtime_file_count", manifest["runtime_file_count"] == len(rows),
                                f"recorded {manifest['runtime_file_count']}, rows {len(rows)}"))
        bad_paths = [r.get("relative_path") for r in rows if not (isinstance(r, dict) and _rel_ok(r.get("relative_path")))]
        checks.append(Check("runtime_rows_relative", not bad_paths, f"rows with unsafe paths: {bad_paths[:5]}"
                            if bad_paths else f"{len(rows)} rows, all relative"))
        custody = ok_v1 and not bad_paths
        tree_d = None
        if runtime is not None and not bad_paths:
            tree_d = store.add_as(runtime, "tree", "runtime")
            checks.append(_compare_rows(Path(runtime), rows))
            children.append(tree_d.blake3)
        information = None
        if tree_d is not None:  # custody is a rule for imports too: the runtime's information, not its name
            information, contributors = runtime_information(store, tree_d.blake3, profile)
            checks.append(rules.custody_check(profile, information, contributors))
        runtime_model = Runtime(tree=tree_model(tree_d) if tree_d else None, legacy_v1_sha256=v1 if ok_v1 else None,
                                legacy_content_sha256=content if ok_v1 else None, file_count=len(rows),
                                information=information,
                                information_compressor=rules.CUSTODY_COMPRESSOR if information is not None else None)
    else:
        checks.append(Check("runtime_manifest_present", False, "no inflate_runtime_manifest: custody incomplete", "flag"))

    up_py = manifest.get("upstream_evaluate_py") if isinstance(manifest, dict) else None
    ev_sha = up_py.get("sha256") if isinstance(up_py, dict) else None
    upstream = Upstream(commit=prov.get("upstream_commit") if isinstance(prov.get("upstream_commit"), str) else None,
                        evaluate_sha256=ev_sha if isinstance(ev_sha, str) and len(ev_sha) == 64 else None)
    env = Environment(device=_str(prov.get("device")), gpu_model=_str(prov.get("gpu_model")),
                      torch=_str(prov.get("torch_version")), cuda=_str(prov.get("cuda_version")))
    contradicted = any(not c.ok and c.severity == "error" for c in checks)
    g, axis, use = rules.grade(
        profile, source="legacy-import", device=env.device, gpu_model=env.gpu_model, samples=samples,
        platform="linux-x86_64" if env.device and env.device.startswith("cuda") else None,
        custody_complete=custody, canonical_env=all(c.ok for c in checks if c.name == "rate_matches_size"),
        contradicted=contradicted, limits_kept=True,  # no replay here: no limits to keep
        custody_ok=all(c.ok for c in checks if c.name == "runtime_custody"))
    final = doc.get("final_score")
    record = EvalRecord(
        profile=profile.name, source="legacy-import", archive=archive_model, runtime=runtime_model,
        upstream=upstream, environment=env,
        result=Result(samples=samples, posenet=posenet, segnet=segnet, rate=rate, canonical_score=score,
                      printed_score=f"{final:.2f}" if isinstance(final, (int, float)) and math.isfinite(final) else None,
                      archive_size_reported=size),
        checks=[CheckResult(**c.as_dict()) for c in checks], grade=g, axis=axis,
        allowed_use=use, created_at=_str(prov.get("started_at_utc")) or now_rfc3339())
    record, checks = _without_machine_paths(record, checks)
    source = Path(path).read_bytes()
    children.append(store.put_bytes(source, "blob").blake3)  # the original, for the record (never published)
    return record, save_record(store, record, tuple(children)), checks


def _without_machine_paths(record: EvalRecord, checks: list[Check]) -> tuple[EvalRecord, list[Check]]:
    """Any field may carry a machine path or a secret (a device string, a commit field, an unsafe row in
    a check's detail): the hygiene rules redact them all, so the record can be published as it is."""
    from provenance.core import sanitize
    obj = record.to_json_obj()
    clean = sanitize.redact(obj)
    if clean == obj:
        return record, checks
    record = EvalRecord.model_validate(clean)
    return record, [Check(**c.model_dump()) for c in record.checks]


def _str(v) -> str | None:
    return v if isinstance(v, str) and v else None


def _compare_rows(root: Path, rows: list[dict]) -> Check:
    """Hash the real runtime files and name every row that differs, and every unrecorded file."""
    from provenance.core.tree import iter_files
    actual = {rel: full for rel, full in iter_files(os.fsencode(root))}
    differ = []
    for r in rows:
        rel = r["relative_path"]
        full = actual.pop(rel, None)
        if full is None:
            differ.append(f"{rel} (missing)")
            continue
        d = hash_file(full)
        if d.sha256 != r.get("sha256") or d.size != r.get("bytes"):
            differ.append(f"{rel} (sha256 {d.sha256[:12]}.. size {d.size}, recorded {str(r.get('sha256'))[:12]}.. "
                          f"size {r.get('bytes')})")
    differ += [f"{rel} (not in the record)" for rel in sorted(actual)]
    return Check("runtime_files_match_rows", not differ,
                 "; ".join(differ) if differ else f"all {len(rows)} rows match the files")
