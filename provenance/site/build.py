"""`prov site build`: the public bundle, generated from the store, sanitized as the last gate.

Everything is written into a temporary directory; the bundle appears at OUT only when the
hygiene scan finds nothing. Records are published as-is when they hold no machine path
(so a judge can check their digest) and as a redacted view otherwise."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from .. import ledger
from ..errors import ProvError, VerificationFailed
from ..store import Store
from . import plots, sanitize

HERE = Path(__file__).parent
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
HEADERS = f"""/*
  Content-Security-Policy: {CSP}
  X-Content-Type-Options: nosniff
  Referrer-Policy: no-referrer
  X-Frame-Options: DENY
  Permissions-Policy: interest-cohort=()
"""


class HygieneError(VerificationFailed):
    """The bundle would publish something the hygiene rules forbid (exit 1)."""


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _write(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _view(r: ledger.Run, href: str) -> dict:
    res = r.record.result
    return {"record": r.sha256, "label": r.label, "track": r.track, "notes": r.notes, "grade": r.record.grade,
            "score": res.canonical_score, "score_repr": repr(res.canonical_score), "bytes": r.archive_bytes,
            "source": r.record.source, "verdict": r.verdict, "reason": r.reason, "flags": r.flags, "href": href,
            "samples": res.samples, "segnet": f"{res.segnet:.3g}", "posenet": f"{res.posenet:.3g}",
            "rate": f"{res.rate:.6g}", "archive": r.record.archive.sha256 if r.record.archive else None,
            "runtime": r.record.runtime.tree.sha256 if r.record.runtime.tree else
            r.record.runtime.legacy_v1_sha256}


def _turning_points(runs: list[ledger.Run]) -> tuple[list[tuple[str, float]], str]:
    promoted = [r for r in runs if r.verdict == "promote"]
    if promoted:
        return [(sanitize.redact_text(r.label or r.sha256[:8]), r.score) for r in promoted], "Frontier over promotions"
    pts, best = [], None
    for r in runs:
        if best is None or r.score < best:
            best = r.score
            pts.append((sanitize.redact_text(r.label or r.sha256[:8]), r.score))  # drawn as glyphs: unscannable
    return pts, "Best score so far, all grades (no promotion yet)"


def build_site(store: Store, out: str | Path, releases: str | Path | None = None,
               trust: str | Path | None = None) -> dict:
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "public_bundle_manifest.json").exists():
        raise ProvError(f"{out}: exists and is not a site bundle; refusing to replace it")
    work = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        runs = ledger.runs(store)
        runs.sort(key=lambda r: r.record.created_at)
        front = ledger.frontier(store)
        evidence = []
        views = []
        for r in runs:
            obj = r.record.to_json_obj()
            clean = sanitize.redact(obj)
            rel = f"evidence/records/{r.sha256}.json"
            if clean == obj:
                p = _write(work, rel, store.read_bytes(r.blake3))  # byte-exact: its sha256 is its name
                note = "exact canonical bytes"
            else:
                p = _write(work, rel, (json.dumps(clean, indent=2, sort_keys=True) + "\n").encode())
                note = "redacted view: machine paths and secrets replaced"
            evidence.append({"kind": "record", "path": rel, "sha256": _sha(p), "note": note})
            views.append(sanitize.redact(_view(r, rel)))  # annotations are published too
        release_links = {}
        if releases:
            for d in sorted(Path(releases).iterdir()):
                if (d / "manifest.json").is_file():
                    for f in ("manifest.json", "SHA256SUMS", "B3SUMS"):
                        if (d / f).is_file():
                            rel = f"evidence/releases/{d.name}/{f}"
                            p = _write(work, rel, (d / f).read_bytes())
                            evidence.append({"kind": "release" if f == "manifest.json" else "checksums",
                                             "path": rel, "sha256": _sha(p), "note": d.name})
                    release_links[d.name] = f"evidence/releases/{d.name}/manifest.json"
        for size, note in store.log.checkpoints():
            rel = f"evidence/checkpoints/{size}.note"
            p = _write(work, rel, note.encode())
            evidence.append({"kind": "log checkpoint", "path": rel, "sha256": _sha(p), "note": f"size {size}"})
        if trust:
            p = _write(work, "evidence/trust.json", Path(trust).read_bytes())
            evidence.append({"kind": "trust policy", "path": "evidence/trust.json", "sha256": _sha(p)})
        fview = None
        if front:
            fview = next(v for v in views if v["record"] == front.sha256)
            st = ledger.release_of(store, front.sha256)
            fview["release"] = st["predicate"]["name"] if st else None
            fview["release_href"] = release_links.get(fview["release"]) if st else None
        best = min(views, key=lambda v: v["score"]) if views else None
        pts, title = _turning_points(runs)
        name = fview["release"] if fview and fview.get("release") else next(iter(release_links), "NAME")
        verify_commands = [
            f"prov verify evidence/releases/{name}/manifest.json --trust evidence/trust.json "
            "--archive archive.zip --runtime runtime/",
            f"cd <dir holding archive.zip and runtime/> && sha256sum -c SHA256SUMS   "
            f"# from evidence/releases/{name}/",
            "b3sum -c B3SUMS",
            "sha256sum evidence/records/*.json   # each exact record's name is its sha256",
        ]
        env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["j2", "html"]))
        html = env.get_template("index.html.j2").render(
            csp=CSP, frontier=fview, best=best, runs=views, evidence=evidence, verify_commands=verify_commands,
            plot_score_bytes=plots.score_vs_bytes(runs, front.sha256 if front else None),
            plot_trajectory=plots.trajectory(pts, title),
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        _write(work, "index.html", html.encode())
        shutil.copyfile(HERE / "templates/style.css", work / "style.css")
        _write(work, "_headers", HEADERS.encode())
        files = [{"path": p.relative_to(work).as_posix(), "sha256": _sha(p), "size": p.stat().st_size}
                 for p in sorted(work.rglob("*")) if p.is_file()]
        _write(work, "public_bundle_manifest.json",
               (json.dumps({"schema": "comma-lab/public-bundle/v1", "files": files}, indent=2) + "\n").encode())
        violations = sanitize.scan_dir(work)
        if violations:
            raise HygieneError(f"refusing to publish: {violations[0]}"
                               + (f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(work, out)
            shutil.rmtree(old)
        else:
            os.rename(work, out)
        return {"out": str(out), "files": len(files) + 1, "runs": len(runs), "frontier": fview["score"] if fview else None}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_site(root: str | Path) -> list[str]:
    """Re-scan a bundle and re-check its manifest: every problem as one line."""
    root = Path(root)
    problems = [str(v) for v in sanitize.scan_dir(root)]
    man = root / "public_bundle_manifest.json"
    if not man.is_file():
        return problems + ["public_bundle_manifest.json: missing"]
    from .. import canonical
    doc = canonical.load_file(man, "public_bundle_manifest.json")
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str) for f in files):
        return problems + ["public_bundle_manifest.json: not a bundle manifest (files: [{path, sha256}])"]
    listed = {f["path"]: f["sha256"] for f in files}
    actual = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"public_bundle_manifest.json"}
    for path in sorted(actual | set(listed)):
        if path not in listed:
            problems.append(f"{path}: not listed in public_bundle_manifest.json")
        elif path not in actual:
            problems.append(f"{path}: listed but missing")
        elif _sha(root / path) != listed[path]:
            problems.append(f"{path}: sha256 differs from public_bundle_manifest.json")
    return problems
