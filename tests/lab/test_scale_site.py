"""Issue 15: the site pages (a bounded index page, ledger pages), and a rebuild after one new run
reads one record and re-scans only what changed."""

import json
import re

import pytest

from conftest import run_prov
from conftest import record_bytes
from provenance.lab import ledger, ledgerindex
from provenance.store.objects import Store

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")


def test_site_pages_and_rebuilds_incrementally(tmp_path, monkeypatch):
    from provenance.core import sanitize
    from provenance.lab.site import build, plots
    monkeypatch.setattr(build, "PAGE", 10)
    monkeypatch.setattr(build, "RECENT", 5)
    monkeypatch.setattr(build, "BEST", 3)
    monkeypatch.setattr(plots, "DENSE", 8)  # past this many runs, the plot draws a density
    s = Store(tmp_path / "store", create=True)
    shas = [s.put_bytes(record_bytes(i, 3.0 - i / 100), "record").sha256 for i in range(27)]
    ledger.annotate(s, shas[4], "four", None, "first notes")
    ledger.verdict(s, shas[20], "promote", "best so far")
    out = tmp_path / "public"
    build.build_site(s, out, cache=True)
    index = (out / "index.html").read_text()
    linked = set(re.findall(r"evidence/records/([0-9a-f]{64})\.json", index))
    assert linked == set(shas[-5:]) | set(shas[-3:]) | {shas[20]}  # recent, best, frontier: not all 27
    pages = sorted((out / "ledger").glob("*.html"))
    assert [p.name for p in pages] == ["1.html", "2.html", "3.html"]
    on_pages = [re.findall(r'href="\.\./evidence/records/([0-9a-f]{64})\.json"', p.read_text()) for p in pages]
    assert [len(x) for x in on_pages] == [10, 10, 7] and sum(on_pages, []) == shas
    assert 'href="ledger/3.html"' in index and "first notes" in (out / "ledger/1.html").read_text()
    assert "<image" in index  # the density, rasterized into the SVG
    assert run_prov("site", "check", out).returncode == 0
    # one new run: its record (and the frontier's) the only ones read, only the files that changed scanned
    shas.append(s.put_bytes(record_bytes(99, 0.5), "record").sha256)
    reads, scanned = [], []
    real_load, real_scan = ledger.load_record, sanitize.scan_text
    monkeypatch.setattr(ledger, "load_record", lambda data, where: reads.append(where) or real_load(data, where))
    monkeypatch.setattr(sanitize, "scan_text", lambda name, text: scanned.append(name) or real_scan(name, text))
    pages_before = {p.name: p.read_bytes() for p in pages}
    build.build_site(s, out, cache=True)
    assert shas[-1] in reads and set(reads) <= {shas[-1], shas[20]}  # the new run's, and the frontier card's
    assert f"evidence/records/{shas[-1]}.json" in scanned and "ledger/1.html" not in scanned
    assert not any(n.startswith("evidence/records/") and shas[-1] not in n for n in scanned)
    assert (out / "ledger/1.html").read_bytes() == pages_before["1.html"]
    assert shas[-1] in (out / "ledger/3.html").read_text()
    man = json.loads((out / "public_bundle_manifest.json").read_text())
    assert len([f for f in man["files"] if f["path"].startswith("evidence/records/")]) == 28
    assert run_prov("site", "check", out).returncode == 0
    # without --cache the store is only read: a pipeline stage must not change its input
    idx = tmp_path / "store" / "index.sqlite"
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = (idx.read_bytes(), s.db.total_changes)
    s.put_bytes(record_bytes(100, 0.4), "record")
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = (idx.read_bytes(), s.db.total_changes)
    build.build_site(s, out)
    assert (idx.read_bytes(), s.db.total_changes) == before
    assert len(list((out / "evidence/records").iterdir())) == 29
    s.close()


def test_fork_map_is_the_loop_and_a_dead_worker_fails_it(monkeypatch):
    """fork_map returns what the plain loop returns, in order, raises what it raises, and a worker
    that dies (killed, or a crash in native code) fails it with one line instead of a hang."""
    import os
    from provenance.core import parallel
    from provenance.core.errors import ProvError
    monkeypatch.setattr(parallel, "cpus", lambda: 2)
    seen = []
    assert parallel.fork_map(lambda x: x * x, range(100), min_items=1, meanwhile=lambda: seen.append(1)) == \
        [x * x for x in range(100)] and seen == [1]
    with pytest.raises(ZeroDivisionError):
        parallel.fork_map(lambda x: 1 / (x - 50), range(100), min_items=1)
    with pytest.raises(ProvError, match="a worker process died"):
        parallel.fork_map(lambda x: os._exit(9) if x == 50 else x, range(100), min_items=1)
    assert parallel.fork_map(lambda x: parallel.fork_map(lambda y: y, range(x), min_items=1), range(3),
                             min_items=1) == [[], [0], [0, 1]]  # nested: the inner loop runs in the worker


def test_runs_are_in_time_order_from_the_ledger_rows(tmp_path, monkeypatch):
    """The site orders runs by their records' created_at, taken from the ledger rows before any record
    is read (so the plots are drawn beside the run pages): stored newest first, the ledger pages
    and the best-so-far trajectory still run oldest first, and rows of the layout before `created`
    are rebuilt, not read as missing times."""
    from provenance.lab.site import build
    from provenance.records.models import EvalRecord
    monkeypatch.setattr(build, "PARALLEL_RUNS", 1)  # through the forked workers
    s = Store(tmp_path / "store", create=True)
    shas = []
    for i in range(12):  # stored newest first; the scores improve with time
        doc = json.loads(record_bytes(i, 1.0 + i / 10))
        doc["created_at"] = f"2026-01-{12 - i:02d}T00:00:00Z"
        shas.append(s.put_bytes(EvalRecord.model_validate(doc).canonical_bytes(), "record").sha256)
    oldest_first = shas[::-1]

    def listed(out):
        text = (out / "ledger/1.html").read_text()
        return re.findall(r'href="\.\./evidence/records/([0-9a-f]{64})\.json"', text)

    build.build_site(s, tmp_path / "a", cache=True)
    assert listed(tmp_path / "a") == oldest_first
    assert [r.created for r in ledger.runs(s)] == [f"2026-01-{12 - i:02d}T00:00:00Z" for i in range(12)]
    traj = (tmp_path / "a/index.html").read_text()
    assert "Best score so far" in traj and traj.count('id="tp-') == 12  # every run beat all before it
    lab = ledgerindex.lab_db(s, True)  # the ledger's rows live beside the index
    lab.execute("ALTER TABLE ledger_run DROP COLUMN created")  # the rows as the previous prov left them
    build.build_site(s, tmp_path / "b", cache=True)
    assert listed(tmp_path / "b") == oldest_first
    assert "created" in [r[1] for r in lab.execute("PRAGMA table_info(ledger_run)")]
    # a row that an older prov wrote into this layout names no time: its record's is used
    lab.execute("UPDATE ledger_run SET created = NULL WHERE id % 3 = 0")
    build.build_site(s, tmp_path / "c")
    assert listed(tmp_path / "c") == oldest_first
    s.close()


def test_rows_of_the_earlier_layout_are_dropped(tmp_path):
    """site_view (WITHOUT ROWID: each ~1 KB row spilled to an overflow page of its own) is a cache: a
    build that may write drops it and keeps its rows in site_rows, which the next build reads."""
    from provenance.lab.site import build
    s = Store(tmp_path / "store", create=True)
    for i in range(3):
        s.put_bytes(record_bytes(i, 2.0 + i), "record")
    s.db.execute("CREATE TABLE site_view(sha BLOB PRIMARY KEY, key TEXT NOT NULL, entry TEXT NOT NULL) WITHOUT ROWID")
    s.db.execute("INSERT INTO site_view VALUES(x'00', 'k', '{}')")
    build.build_site(s, tmp_path / "a", cache=True)
    lab = ledgerindex.lab_db(s, False)  # the site's rows live in the lab's database beside the index
    tables = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "site_view" not in tables and lab.execute("SELECT count(*) FROM site_rows").fetchone()[0] == 3
    assert not lab.execute("SELECT 1 FROM sqlite_master WHERE name='site_rows' AND sql LIKE '%WITHOUT ROWID%'"
                           ).fetchone()
    s.close()


def test_a_read_only_store_that_never_kept_a_log_builds(tmp_path):
    """Records stored without a log: a store the user may not write still builds its site (reading
    the log's checkpoints must not create the log's tables)."""
    from provenance.lab.site import build
    root = tmp_path / "store"
    s = Store(root, create=True)
    for i in range(3):
        s.put_bytes(record_bytes(i, 2.0 + i), "record")
    s.close()
    ro = Store(root, readonly=True)
    try:
        got = build.build_site(ro, tmp_path / "site")
    finally:
        ro.close()
    assert got["runs"] == 3 and (tmp_path / "site/index.html").exists()
