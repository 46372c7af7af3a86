"""`prov site build`: the public bundle, generated from the store, sanitized as the last gate.

Everything is written into a temporary directory; the bundle appears at OUT only when the
hygiene scan finds nothing. Records are published as-is when they hold no machine path
(so a judge can check their digest) and as a redacted view otherwise."""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from provenance import contest
from provenance.lab import ledger
from provenance.core.errors import ProvError
from provenance.store.objects import Store
from provenance.core import sanitize
from provenance.core.parallel import call, fork_map
from provenance.lab.site import pages, plots
from provenance.lab.site.bundle import _Bundle, _carry_page, _previous
from provenance.lab.site.cache import _ViewCache
from provenance.lab.site.hygiene import HygieneError, _listing, _scan, _sha
from provenance.log.translog import checkpoints_of
from provenance.records.envelope import statement_bytes

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


# the index page stays bounded however long the ledger grows; everything else is paged
RECENT, BEST, PAGE, EVIDENCE_ON_INDEX = 50, 20, 500, 30
PARALLEL_RUNS = 500  # runs: from here the bundle is made by forked workers, one a core
EXACT, REDACTED = "exact canonical bytes", "redacted view: machine paths and secrets replaced"  # a record file's note
LAB_WIDE = "(the whole lab)"  # the run an evidence item that belongs to no one run names


def _frames(read, bundle: _Bundle, r: ledger.Run, evidence: list) -> list[dict]:
    """The run's PNG illustrations, published under their SHA-256 (same pixels, same file). Each is
    reported whether this run wrote it or found it written: the caller keeps the first report."""
    by_index: dict[str, dict] = {}
    for key, d in sorted((r.record.frames or {}).items()):
        video, kind, index = key.split("/")
        rel = f"evidence/frames/{d.sha256}.png"
        sha = bundle.write_once(rel, read(d))
        evidence.append({"kind": "frame", "path": rel, "sha256": sha, "run": sanitize.redact_text(pages.name_of(r)),
                         "note": f"{kind} of video {video}, frame {int(index)}"})
        by_index.setdefault(f"{video}/{index}", {"video": video, "index": int(index)})[kind] = rel
    return list(by_index.values())


def _turning_points(runs: list[ledger.Run]) -> tuple[list[tuple[str, float]], str]:
    promoted = [r for r in runs if r.verdict == "promote"]
    if promoted:
        return [(sanitize.redact_text(r.label or r.sha256[:8]), r.score) for r in promoted], "Frontier over promotions"
    return _best_so_far(runs)


def _branches(runs: list[ledger.Run], off: set[str]) -> list[tuple[str, float, float]]:
    """Rejected runs, placed after the turning point they were judged against (x = its order + 0.5);
    not the off-scale ones (`off`): they are named beside the plot, not stretching its axis."""
    order = {r.sha256: i for i, r in enumerate((r for r in runs if r.verdict == "promote"), 1)}
    return [(sanitize.redact_text(r.label or r.sha256[:8]), r.score, order[r.previous_frontier] + 0.5)
            for r in runs if r.verdict == "reject" and r.previous_frontier in order and r.sha256 not in off]


def _best_so_far(runs: list[ledger.Run]) -> tuple[list[tuple[str, float]], str]:
    pts, best = [], None
    for r in runs:
        if best is None or r.score < best:
            best = r.score
            pts.append((sanitize.redact_text(r.label or r.sha256[:8]), r.score))  # drawn as glyphs: unscannable
    return pts, "Best score so far, all grades (no promotion yet)"


def build_site(store: Store, out: str | Path, releases: str | Path | None = None,
               trust: str | Path | None = None, cache: bool = False) -> dict:
    """With `cache`, the ledger's rows and each run's redacted table row are kept in the store's
    index; without it the store is only read (a pipeline stage must not change its input)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "public_bundle_manifest.json").exists():
        raise ProvError(f"{out}: exists and is not a site bundle; refusing to replace it")
    work = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rules = hashlib.sha256(sanitize.RULES_FILE.read_bytes()).hexdigest()
    previous, published, listed = _previous(out, rules)  # what the last bundle published (and scanned), same rules
    bundle = _Bundle(work, published)
    gc_on = gc.isenabled()
    gc.disable()  # ten thousand runs' worth of live objects: each collection walks them all, freeing nothing
    try:
        runs = ledger.runs(store, write=cache)  # records are read only where a run's row changed
        cache = _ViewCache(store, rules, write=cache)
        evidence = []
        release_links = {}
        if releases:
            for d in sorted(Path(releases).iterdir()):
                if (d / "manifest.json").is_file():
                    from provenance.release.packet import FILES
                    for f in (*FILES, *sorted(p.name for p in d.glob("*.sig"))):  # the packet, as it stands alone
                        if (d / f).is_file():
                            rel = f"evidence/releases/{d.name}/{f}"
                            sha = bundle.write(rel, (d / f).read_bytes())
                            evidence.append({"kind": "release" if f == "manifest.json" else "release packet",
                                             "path": rel, "sha256": sha, "run": sanitize.redact_text(d.name),
                                             "note": f"release {d.name}: {f}"})
                    release_links[d.name] = f"evidence/releases/{d.name}/manifest.json"
        checkpoints = checkpoints_of(store)
        for size, note in checkpoints:
            rel = f"evidence/checkpoints/{size}.note"
            sha = bundle.write(rel, note.encode())
            evidence.append({"kind": "log checkpoint", "path": rel, "sha256": sha, "run": LAB_WIDE,
                             "note": f"the evidence log's signed checkpoint at size {size}"})
        identity, note_keys = "IDENTITY", []
        if trust:
            from provenance.core import sshsig
            from provenance.release.trust import allowed_signers, note_verifiers, read_trust_doc
            sha = bundle.write("evidence/trust.json", Path(trust).read_bytes())
            evidence.append({"kind": "trust policy", "path": "evidence/trust.json", "sha256": sha, "run": LAB_WIDE,
                             "note": "the keys and thresholds every release is checked against"})
            tdoc = read_trust_doc(trust)
            sha = bundle.write("evidence/allowed_signers", allowed_signers(tdoc).encode())
            evidence.append({"kind": "trust policy", "path": "evidence/allowed_signers", "sha256": sha, "run": LAB_WIDE,
                             "note": "OpenSSH allowed_signers of the release keys"})
            first = tdoc["keys"][tdoc["roles"]["release"]["keys"][0]]["keyid"]
            identity = sshsig.identity(first)
            note_keys = note_verifiers(tdoc)
        env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["j2", "html"]),
                          auto_reload=False)  # a template is read once a build, not stat()ed once a page
        run_page = env.get_template("run.html.j2")  # compiled once, before the workers fork
        releases_by_record = _releases_by_record(store, release_links)
        runs = sorted(runs, key=lambda r: r.created)  # in time, from the ledger rows: no record read
        front_b3 = store.get_ref(ledger.FRONTIER_REF)
        front = next((r for r in runs if r.blake3 == front_b3), None)
        off = pages.off_scale(runs)
        front_sha, branches = (front.sha256 if front else None), _branches(runs, {r.sha256 for r in off})
        pts, title = _turning_points(runs)
        # the plots are drawn by whichever worker takes them first, while the others render runs:
        # matplotlib is imported once, in that worker, and never competes with them in this process
        make = _RunPages(store, bundle, cache, runs, out, previous, published, releases_by_record, run_page)
        plot_score_bytes, plot_trajectory, *each = fork_map(call, [
            lambda: plots.score_vs_bytes(runs, front_sha), lambda: plots.trajectory(pts, title, branches),
            *(functools.partial(make, i) for i in range(len(runs)))], min_items=PARALLEL_RUNS)
        each = [made if made is not None else make(i) for i, made in enumerate(each)]
        entries, record_evidence, frame_evidence = [], [], []
        for r, (entry, row, key, rec_ev, frames, written) in zip(runs, each):
            bundle.merge(*written)
            if row is not None:
                cache.put(r.sha256, key, row)
            entries.append(entry)
            record_evidence.append(rec_ev)
            frame_evidence.append(frames)
        listed_paths = {e["path"] for e in evidence}
        for frames in frame_evidence:  # a frame shown by several runs is listed once, where it first appears
            for e in frames:
                if e["path"] not in listed_paths:
                    listed_paths.add(e["path"])
                    evidence.append(e)
        views = [e["view"] for e in entries]
        fview = None
        if front:
            fview = next(v for v in views if v["record"] == front.sha256)
            st = ledger.release_of(store, front.sha256)
            fview["release"] = st["predicate"]["name"] if st else None
            fview["release_href"] = release_links.get(fview["release"]) if st else None
            fview["environment"] = contest.get_profile(front.record.profile).official_environment
        best = min(views, key=lambda v: v["score"]) if views else None
        front_frames: dict = {}  # the frontier's frames on the index: original beside reconstruction
        for key, d in sorted((front.record.frames or {}).items() if front else ()):
            video, kind, index = key.split("/")
            front_frames.setdefault((video, index), {"video": video, "index": int(index)})[kind] = \
                f"evidence/frames/{d.sha256}.png"
        # what the story says is published text: redacted as every annotation is
        story = sanitize.redact({"outcome": pages.outcome(front, runs, fview["environment"] if fview else None),
                 "turning_points": pages.turning_points(runs), "tracks": pages.tracks(runs),
                 "off_scale": [{"name": pages.name_of(r), "href": pages.run_href(r.sha256), "score": r.score}
                               for r in off],
                 "rejected": [v for v in views if v["verdict"] == "reject"][-BEST:],
                 "packet": f"evidence/releases/{fview['release']}/" if fview and fview.get("release") else None})
        name = fview["release"] if fview and fview.get("release") else next(iter(release_links), "NAME")
        from provenance.release.packet import stock_commands
        verify_commands = [
            "# 1. Stock tools only (OpenSSH, coreutils or b3sum, any Python 3), no trust in our code.",
            f"#    Into one folder: archive.zip, runtime/ and evidence/releases/{name}/* (its README says the same)",
            *stock_commands([identity]),
            "",
            "# 2. With prov (pip install ./comma-lab from a clone, or pip install comma_lab-*.whl):",
            f"prov verify evidence/releases/{name}/manifest.json --trust evidence/trust.json "
            "--archive archive.zip --runtime runtime/",
            "sha256sum evidence/records/*.json   # each exact record's name is its sha256",
        ] + [f"# log checkpoints: Go note verifier key {k}" for k in note_keys] + ([
            "# the evidence log itself, as C2SP tlog-tiles under log/: recompute it, and remember what you saw",
            "prov log audit log/ --trust evidence/trust.json --state audit.state"] if checkpoints else [])
        generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        ledger_pages = [views[i:i + PAGE] for i in range(0, len(views), PAGE)]
        page_links = [{"href": f"ledger/{n}.html", "n": n, "first": i * PAGE + 1, "last": i * PAGE + len(pg)}
                      for n, pg in enumerate(ledger_pages, 1) for i in (n - 1,)]
        rec_ev = {e["path"]: e for e in record_evidence}
        ledger_page = env.get_template("ledger.html.j2")

        def written(rel: str, render):
            def job():
                b = bundle.child()
                b.write(rel, render().encode())
                return b.record()
            return job
        jobs = [written(f"ledger/{n}.html", lambda n=n, pg=pg: ledger_page.render(
            csp=CSP, root="../", runs=pg, page=n, pages=page_links, evidence=[rec_ev[v["href"]] for v in pg],
            generated=generated)) for n, pg in enumerate(ledger_pages, 1)] + [
            written("evidence.html", lambda: env.get_template("evidence.html.j2").render(
                csp=CSP, root="", generated=generated,  # grouped by run: a run's frames and release together
                evidence=sorted(evidence, key=lambda e: (e.get("run") or "", e["kind"], e["path"]))))]
        for rec in fork_map(call, jobs, min_items=1 if len(runs) >= PARALLEL_RUNS else len(jobs) + 1,
                            meanwhile=cache.save):
            bundle.merge(*rec)
        html = env.get_template("index.html.j2").render(
            csp=CSP, root="", frontier=fview, best=best, runs=views[-RECENT:][::-1],
            best_runs=sorted(views, key=lambda v: v["score"])[:BEST], pages=page_links, total=len(views),
            evidence=evidence[-EVIDENCE_ON_INDEX:], evidence_total=len(evidence), verify_commands=verify_commands,
            plot_score_bytes=plot_score_bytes, plot_trajectory=plot_trajectory, custody=pages.CUSTODY,
            comparisons=pages.comparisons(runs), neighbourhoods=pages.neighbourhoods(runs), story=story,
            frontier_frames=list(front_frames.values()),
            counts={"runs": len(runs), "promote": sum(r.verdict == "promote" for r in runs),
                    "reject": sum(r.verdict == "reject" for r in runs)},
            generated=generated)
        bundle.write("index.html", html.encode())
        if checkpoints:
            _publish_log(store, out / "log", work / "log")
        shutil.copyfile(HERE / "templates/style.css", work / "style.css")
        bundle.write("_headers", HEADERS.encode())
        files = []
        for rel in _listing(work):
            size = bundle.size.get(rel)
            files.append({"path": rel, "sha256": bundle.sha.get(rel) or _sha(work / rel),
                          "size": size if size is not None else (work / rel).stat().st_size})
        # one file a line: the manifest of 10k runs stays quick to scan and to diff (json.dumps' own
        # layout, keys sorted, written out: the same bytes)
        bundle.write("public_bundle_manifest.json",
               ('{"schema": "comma-lab/public-bundle/v1", "hygiene_rules_sha256": "%s", "files": [\n' % rules
                + ",\n".join('{"path": %s, "sha256": "%s", "size": %d}' % (json.dumps(f["path"]), f["sha256"], f["size"])
                              for f in files) + "\n]}\n").encode(), scan=False)
        skip = {f["path"] for f in files if published.get(f["path"]) == f["sha256"]} | bundle.scanned
        violations = sorted(bundle.violations + _scan(work, skip, listed), key=lambda v: (v.file, v.line, v.rule))
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
        if gc_on:
            gc.enable()
        shutil.rmtree(work, ignore_errors=True)


def _publish_log(store: Store, previous: Path, into: Path) -> None:
    """The evidence log as C2SP tlog-tiles under log/, for monitors and witnesses: the last bundle's tiles
    carried (hard links: published tiles are only ever replaced, never written in place), then only what
    the log grew by is written."""
    from provenance.log.publish import publish
    if previous.is_dir():
        shutil.copytree(previous, into, symlinks=True, copy_function=os.link)  # a link stays one: publish refuses it
    publish(store, str(into))


class _RunPages:
    """One run's share of the bundle: its table row (cached, or made), its record file and its page,
    each written, hashed and scanned here; in a forked worker when there are many runs (fork_map),
    so what it wrote comes back as a child bundle's record and the row to cache."""

    def __init__(self, store: Store, bundle: _Bundle, cache: "_ViewCache", runs: list[ledger.Run], out: Path,
                 previous: dict, published: dict, releases_by_record: dict, template):
        self.store, self.bundle, self.cache, self.runs, self.out = store, bundle, cache, runs, out
        self.previous, self.published, self.releases, self.template = previous, published, releases_by_record, template
        self.by_sha = {r.sha256: r for r in runs}
        self.pid = os.getpid()

    def __call__(self, i: int):
        """(row, row to cache as JSON or None, its key, record evidence, frame evidence, what was written);
        None from a worker for a run with a frame named by SHA-256 alone: its BLAKE3 is in the index,
        which only the parent process may read, so the parent makes that run itself."""
        r = self.runs[i]
        if os.getpid() != self.pid and any(d.blake3 is None for d in (r.record.frames or {}).values()):
            return None
        b = self.bundle.child()
        entry, fresh = self.cache.get(r)
        rec_ev = self._record(b, r)
        page_entry, frames = self._page(b, r, entry)
        changed = page_entry or (entry if fresh else None)
        return (entry, json.dumps(changed) if changed is not None else None, self.cache.key(r), rec_ev, frames,
                b.record())

    def _record(self, b: _Bundle, r: ledger.Run) -> dict:
        rel = f"evidence/records/{r.sha256}.json"
        kept = self.previous.get(rel)
        if kept is not None and b.keep(self.out, rel, kept):
            return {"kind": "record", "path": rel, "sha256": kept, "run": sanitize.redact_text(pages.name_of(r)),
                    "note": EXACT if kept == r.sha256 else REDACTED}
        data = r.record_bytes(self.store)
        clean = None  # a redacted view, where redaction changes something
        if not sanitize.json_untouched(data.decode("utf-8", "surrogateescape")):
            obj = r.record.to_json_obj()
            if (redacted := sanitize.redact(obj)) != obj:
                clean = (json.dumps(redacted, indent=2, sort_keys=True) + "\n").encode()
        sha = b.write(rel, data if clean is None else clean)  # exact bytes: their sha256 is the file's name
        return {"kind": "record", "path": rel, "sha256": sha, "run": sanitize.redact_text(pages.name_of(r)),
                "note": EXACT if clean is None else REDACTED}

    def _page(self, b: _Bundle, r: ledger.Run, entry: dict) -> tuple[dict | None, list[dict]]:
        v = entry["view"]
        rel = self.releases.get(r.sha256)
        parent = self.cache.get(self.by_sha[r.parent])[0]["view"] if r.parent in self.by_sha else None
        page_key = hashlib.sha256(json.dumps([self.cache.key(r), rel, parent], sort_keys=True).encode()).hexdigest()
        frames: list[dict] = []
        if _carry_page(self.out, b, entry, page_key, self.published, frames):
            return None, frames
        shown = _frames(self._frame_bytes, b, r, frames)
        page_sha = b.write(v["page"], self.template.render(
            csp=CSP, root="../", r=v, rec=r.record, frames=shown, release=rel, custody=pages.CUSTODY,
            parent=parent, environment=contest.get_profile(r.record.profile).official_environment,
            verify_commands=pages.verify_commands(rel["name"] if rel else None, r.sha256, r.record.profile),
            generated=None).encode())  # no timestamp: an unchanged run's page keeps its bytes
        return {**entry, "page_key": page_key, "page_sha": page_sha, "frame_evidence": frames}, frames

    def _frame_bytes(self, d) -> bytes:
        return self.store.read_bytes(d.blake3 or self.store.resolve(d.sha256).blake3)


def _releases_by_record(store: Store, release_links: dict) -> dict[str, dict]:
    """record sha256 -> its newest release, reading each release statement once (not once a run)."""
    newest: dict[str, dict] = {}
    for name, b3 in store.list_refs():
        if name.startswith("releases/"):
            p = statement_bytes(store.read_bytes(b3), name)["predicate"]
            sha = p["record"]["sha256"]
            if sha not in newest or p["version"] > newest[sha]["version"]:
                newest[sha] = {"name": p["name"], "version": p["version"], "href": release_links.get(p["name"]),
                               "issued_at": p["issued_at"]}
    return newest
