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

from provenance.core import canonical
from provenance import contest
from provenance.lab import ledger
from provenance.core.errors import ProvError, VerificationFailed
from provenance.store.objects import Store, _write_all
from provenance.core import sanitize
from provenance.core.parallel import call, fork_map
from provenance.lab.site import pages, plots
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


class HygieneError(VerificationFailed):
    """The bundle would publish something the hygiene rules forbid (exit 1)."""


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _create(path: str, data: bytes) -> None:
    """A new file holding data: three system calls (open() adds an fstat, an isatty ioctl and a
    seek, each paid 20k times over by a site of 10k runs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        _write_all(fd, memoryview(data))
    finally:
        os.close(fd)


class _Bundle:
    """The bundle being built, in its temporary directory. Each file is hashed and hygiene-scanned
    from the very bytes written (not read back), unless the last bundle (`published`, built under
    the same rules) published those bytes at that path; what arrives otherwise (copied) is hashed
    and scanned by the final pass over the directory. A forked worker writes through a `child()`
    whose record the parent `merge()`s."""

    def __init__(self, root: Path, published: dict[str, str]):
        self.root, self.published, self.sha, self.scanned, self.violations = root, published, {}, set(), []
        self.size: dict[str, int] = {}
        self._dirs: set[str] = set()

    def child(self) -> "_Bundle":
        b = _Bundle(self.root, self.published)
        b._dirs = self._dirs
        return b

    def record(self) -> tuple:
        """What this bundle wrote, for its parent's merge()."""
        return self.sha, self.size, self.scanned, self.violations

    def merge(self, sha: dict[str, str], size: dict[str, int], scanned: set[str], violations: list) -> None:
        self.sha.update(sha)
        self.size.update(size)
        self.scanned |= scanned
        self.violations += violations

    def _parent_dir(self, rel: str) -> str:
        path = os.path.join(self.root, rel)
        d = os.path.dirname(path)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)
        return path

    def write(self, rel: str, data: bytes, scan: bool = True) -> str:
        path = self._parent_dir(rel)
        try:
            _create(path, data)
        except FileExistsError:  # a hard link to the last bundle's file, maybe: never written through
            os.unlink(path)
            _create(path, data)
        return self._wrote(rel, data, scan)

    def write_once(self, rel: str, data: bytes) -> str:
        """write() a content-addressed file unless it is there (another worker's, or carried over):
        the bytes are the same, and it is scanned once, by whoever wrote it."""
        try:
            _create(self._parent_dir(rel), data)
        except FileExistsError:
            return hashlib.sha256(data).hexdigest()
        return self._wrote(rel, data, True)

    def _wrote(self, rel: str, data: bytes, scan: bool) -> str:
        self.sha[rel] = sha = hashlib.sha256(data).hexdigest()
        self.size[rel] = len(data)
        if scan:
            if self.published.get(rel) != sha:
                self.violations += _scan_bytes(rel, data)
            self.scanned.add(rel)
        return sha

    def keep(self, old_root: Path, rel: str, sha: str) -> bool:
        """Carry a published file over (a hard link) when its bytes are still the ones the last bundle
        listed: the caller skips its scan only because that bundle published (and scanned) those bytes."""
        try:
            old = os.path.join(old_root, rel)
            with open(old, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != sha:
                return False
            os.link(old, self._parent_dir(rel))
        except OSError:
            return False
        self.sha[rel], self.size[rel] = sha, len(data)
        return True


def _view(r: ledger.Run, href: str) -> dict:
    res = r.record.result
    return {"record": r.sha256, "label": r.label, "track": r.track, "notes": r.notes, "grade": r.record.grade,
            "score": res.canonical_score, "score_repr": repr(res.canonical_score), "bytes": r.archive_bytes,
            "source": r.record.source, "verdict": r.verdict, "reason": r.reason, "flags": r.flags, "href": href,
            "samples": res.samples, "segnet": f"{res.segnet:.3g}", "posenet": f"{res.posenet:.3g}",
            "segnet_exact": res.printed.get("segnet", repr(res.segnet)),
            "posenet_exact": res.printed.get("posenet", repr(res.posenet)),
            "rate": f"{res.rate:.6g}", "archive": r.record.archive.sha256 if r.record.archive else None,
            "runtime": r.record.runtime.tree.sha256 if r.record.runtime.tree else
            r.record.runtime.legacy_v1_sha256, "page": pages.run_href(r.sha256), "name": pages.name_of(r),
            "axis": r.axis, "profile": r.record.profile, "device": r.record.environment.device,
            "platform": r.record.environment.platform, "gpu": r.record.environment.gpu_model}


def _frames(read, bundle: _Bundle, r: ledger.Run, evidence: list) -> list[dict]:
    """The run's PNG illustrations, published under their SHA-256 (same pixels, same file). Each is
    reported whether this run wrote it or found it written: the caller keeps the first report."""
    by_index: dict[str, dict] = {}
    for key, d in sorted((r.record.frames or {}).items()):
        video, kind, index = key.split("/")
        rel = f"evidence/frames/{d.sha256}.png"
        sha = bundle.write_once(rel, read(d))
        evidence.append({"kind": "frame", "path": rel, "sha256": sha, "note": f"{kind} {video} frame {int(index)}"})
        by_index.setdefault(f"{video}/{index}", {"video": video, "index": int(index)})[kind] = rel
    return list(by_index.values())


def _turning_points(runs: list[ledger.Run]) -> tuple[list[tuple[str, float]], str]:
    promoted = [r for r in runs if r.verdict == "promote"]
    if promoted:
        return [(sanitize.redact_text(r.label or r.sha256[:8]), r.score) for r in promoted], "Frontier over promotions"
    return _best_so_far(runs)


def _branches(runs: list[ledger.Run]) -> list[tuple[str, float, float]]:
    """Rejected runs, placed after the turning point they were judged against (x = its order + 0.5)."""
    order = {r.sha256: i for i, r in enumerate((r for r in runs if r.verdict == "promote"), 1)}
    return [(sanitize.redact_text(r.label or r.sha256[:8]), r.score, order[r.previous_frontier] + 0.5)
            for r in runs if r.verdict == "reject" and r.previous_frontier in order]


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
                            evidence.append({"kind": "release" if f == "manifest.json" else "checksums",
                                             "path": rel, "sha256": sha, "note": d.name})
                    release_links[d.name] = f"evidence/releases/{d.name}/manifest.json"
        for size, note in checkpoints_of(store):
            rel = f"evidence/checkpoints/{size}.note"
            sha = bundle.write(rel, note.encode())
            evidence.append({"kind": "log checkpoint", "path": rel, "sha256": sha, "note": f"size {size}"})
        identity, note_keys = "IDENTITY", []
        if trust:
            from provenance.core import sshsig
            from provenance.release.trust import allowed_signers, read_trust_doc
            sha = bundle.write("evidence/trust.json", Path(trust).read_bytes())
            evidence.append({"kind": "trust policy", "path": "evidence/trust.json", "sha256": sha})
            tdoc = read_trust_doc(trust)
            sha = bundle.write("evidence/allowed_signers", allowed_signers(tdoc).encode())
            evidence.append({"kind": "trust policy", "path": "evidence/allowed_signers", "sha256": sha,
                             "note": "OpenSSH allowed_signers of the release keys"})
            first = tdoc["keys"][tdoc["roles"]["release"]["keys"][0]]["keyid"]
            identity = sshsig.identity(first)
            note_keys = [k["note_verifier"] for k in tdoc["keys"].values() if k.get("note_verifier")]
        env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["j2", "html"]),
                          auto_reload=False)  # a template is read once a build, not stat()ed once a page
        run_page = env.get_template("run.html.j2")  # compiled once, before the workers fork
        releases_by_record = _releases_by_record(store, release_links)
        runs = sorted(runs, key=lambda r: r.created)  # in time, from the ledger rows: no record read
        front_b3 = store.get_ref(ledger.FRONTIER_REF)
        front = next((r for r in runs if r.blake3 == front_b3), None)
        front_sha, branches = (front.sha256 if front else None), _branches(runs)
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
        ] + [f"# log checkpoints: Go note verifier key {k}" for k in note_keys]
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
                csp=CSP, root="", evidence=evidence, generated=generated))]
        for rec in fork_map(call, jobs, min_items=1 if len(runs) >= PARALLEL_RUNS else len(jobs) + 1,
                            meanwhile=cache.save):
            bundle.merge(*rec)
        html = env.get_template("index.html.j2").render(
            csp=CSP, root="", frontier=fview, best=best, runs=views[-RECENT:][::-1],
            best_runs=sorted(views, key=lambda v: v["score"])[:BEST], pages=page_links, total=len(views),
            evidence=evidence[-EVIDENCE_ON_INDEX:], evidence_total=len(evidence), verify_commands=verify_commands,
            plot_score_bytes=plot_score_bytes, plot_trajectory=plot_trajectory, custody=pages.CUSTODY,
            comparisons=pages.comparisons(runs), neighbourhoods=pages.neighbourhoods(runs),
            counts={"runs": len(runs), "promote": sum(r.verdict == "promote" for r in runs),
                    "reject": sum(r.verdict == "reject" for r in runs)},
            generated=generated)
        bundle.write("index.html", html.encode())
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
            return {"kind": "record", "path": rel, "sha256": kept, "note": EXACT if kept == r.sha256 else REDACTED}
        data = r.record_bytes(self.store)
        clean = None  # a redacted view, where redaction changes something
        if not sanitize.json_untouched(data.decode("utf-8", "surrogateescape")):
            obj = r.record.to_json_obj()
            if (redacted := sanitize.redact(obj)) != obj:
                clean = (json.dumps(redacted, indent=2, sort_keys=True) + "\n").encode()
        sha = b.write(rel, data if clean is None else clean)  # exact bytes: their sha256 is the file's name
        return {"kind": "record", "path": rel, "sha256": sha, "note": EXACT if clean is None else REDACTED}

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


VIEW_VERSION = 2  # bumped whenever _view's fields change: cached rows of another shape are remade


class _ViewCache:
    """Each run's redacted table row, kept in the store's index (never published) under what it was
    made from: the run's annotations and verdict, and the hygiene rules. A rebuild reads and redacts
    only the runs whose row would change; with the row, what its run page was made from, so an
    unchanged page (and its frames) is carried over from the last bundle."""

    def __init__(self, store: Store, rules: str, write: bool):
        import sqlite3
        self.store, self.rules, self.dirty = store, rules, {}
        self.write = write and not getattr(store, "readonly", False)
        if self.write:
            # a rowid table: a row (~1 KB of JSON) is past what a WITHOUT ROWID page keeps in place, and
            # each would spill to an overflow page of its own (site_view, the earlier layout: 4x the bytes)
            store.db.execute("DROP TABLE IF EXISTS site_view")
            store.db.execute("CREATE TABLE IF NOT EXISTS site_rows(sha BLOB PRIMARY KEY, key TEXT NOT NULL, "
                             "entry TEXT NOT NULL)")
        try:
            self.rows = {sha.hex(): (key, entry) for sha, key, entry in store.db.execute("SELECT * FROM site_rows")}
        except sqlite3.OperationalError:  # never cached
            self.rows = {}
        self.keys: dict[str, str] = {}
        self.made: dict[str, dict] = {}  # rows made in this process (a parent's row, asked for twice)

    def key(self, r: ledger.Run) -> str:
        """What the run's row is made from: its annotations and verdict, and the hygiene rules."""
        key = self.keys.get(r.sha256)
        if key is None:
            key = self.keys[r.sha256] = hashlib.sha256(json.dumps(
                [VIEW_VERSION, self.rules, r.label, r.track, r.notes, r.verdict, r.reason, r.flags, r.parent,
                 r.axis]).encode()).hexdigest()
        return key

    def get(self, r: ledger.Run) -> tuple[dict, bool]:
        """The run's row, and whether it was made now (not cached)."""
        key = self.key(r)
        hit = self.rows.get(r.sha256)
        if hit is not None and hit[0] == key:
            return json.loads(hit[1]), False
        made = self.made.get(r.sha256)
        if made is None:
            made = self.made[r.sha256] = {
                "created": r.record.created_at, "profile": r.record.profile,
                "view": sanitize.redact(_view(r, f"evidence/records/{r.sha256}.json"))}  # annotations are published
        return made, True

    def put(self, sha: str, key: str, row: str) -> None:
        """A run's row (JSON) to keep, made from `key`."""
        self.dirty[sha] = (key, row)

    def save(self) -> None:
        if self.dirty and self.write:
            with self.store.transaction() as db:
                db.executemany("INSERT OR REPLACE INTO site_rows VALUES(?,?,?)",
                               [(bytes.fromhex(sha), key, row) for sha, (key, row) in sorted(self.dirty.items())])


def _carry_page(out: Path, bundle: _Bundle, entry: dict, page_key: str, published: dict, evidence: list) -> bool:
    """Link the last bundle's page for this run (and its frames) when it was made from the same inputs."""
    page = entry["view"]["page"]
    if entry.get("page_key") != page_key or published.get(page) != entry.get("page_sha"):
        return False
    for e in entry.get("frame_evidence", []):
        if not (bundle.root / e["path"]).exists() and not bundle.keep(out, e["path"], e["sha256"]):
            return False
    if not bundle.keep(out, page, entry["page_sha"]):
        return False
    evidence.extend(e for e in entry.get("frame_evidence", []) if e not in evidence)
    return True


def _previous(out: Path, rules: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """The record files and all files (path -> sha256) of the bundle at `out`, if it was built under
    the same hygiene rules: a file published then, with the same bytes now, was scanned then."""
    try:
        from provenance.core import canonical
        doc = canonical.load_file(out / "public_bundle_manifest.json", "public_bundle_manifest.json")
        listed = set((out / "public_bundle_manifest.json").read_text(encoding="utf-8").splitlines())
    except (ProvError, OSError, UnicodeDecodeError):
        return {}, {}, set()
    if not isinstance(doc, dict) or doc.get("hygiene_rules_sha256") != rules or not isinstance(doc.get("files"), list):
        return {}, {}, set()
    files = {e["path"]: e["sha256"] for e in doc["files"]
             if isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str)}
    return {p: sha for p, sha in files.items() if p.startswith("evidence/records/")}, files, listed


def _listing(root: Path) -> list[str]:
    """Every file under root as a relative POSIX path, sorted (os.walk: 20k files, no pathlib per entry)."""
    out = []
    base = len(str(root)) + 1
    for dirpath, _dirs, names in os.walk(root):
        out.extend(os.path.join(dirpath, n)[base:] for n in names)
    return sorted(out)


def _pixels_only(data: bytes) -> bool:
    """A PNG of nothing but its header, pixel data and end (IHDR, IDAT, IEND): no text chunk to leak."""
    import struct
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    pos = 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind not in (b"IHDR", b"IDAT", b"IEND"):
            return False
        pos += 12 + length
        if kind == b"IEND":
            return pos == len(data)
    return False


def _scan_bytes(rel: str, data: bytes, listed: set[str] = frozenset()) -> list:
    if rel.endswith(".png") and _pixels_only(data):
        return []  # pixels carry no text: the scan would read compressed bytes as words
    text = data.decode("utf-8", "replace")
    if rel == "public_bundle_manifest.json" and listed:
        text = "\n".join("" if ln in listed else ln for ln in text.split("\n"))  # line numbers kept
    return sanitize.scan_text(rel, text)


def _scan(root: Path, skip: set[str], listed: set[str]) -> list:
    """The hygiene scan, once per published file; a file the last bundle published with the same
    bytes (scanned then, under the same rules) is not scanned again, nor a line of the file
    manifest that the last manifest held (one file a line: only the new files' lines are read)."""
    out = []
    for rel in _listing(root):
        if rel in skip or not (root / rel).is_file():
            continue
        out += _scan_bytes(rel, (root / rel).read_bytes(), listed)
    return out


def check_site(root: str | Path) -> list[str]:
    """Re-scan a bundle and re-check its manifest: every problem as one line."""
    root = Path(root)
    problems = [str(v) for v in _scan(root, set(), set())]  # the same scan the build ran
    man = root / "public_bundle_manifest.json"
    if not man.is_file():
        return problems + ["public_bundle_manifest.json: missing"]
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
