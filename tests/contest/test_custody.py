"""Custody's allowance, calibrated on the 35 real runtimes of the official repository (shared/official):
every honest runtime is within it, and the miniature's bundled ones within the miniature's."""

import tarfile
from pathlib import Path

import pytest

from conftest import REPO

from provenance.contest import rules
from provenance.contest.miniature import PROFILE as MINI
from provenance.records.adjudicate import runtime_information
from provenance.store.objects import Store

OFFICIAL_TAR = REPO.parent / "shared" / "official" / "official-d0013db.tar.gz"


@pytest.mark.skipif(not OFFICIAL_TAR.exists(), reason="needs shared/official")
def test_every_real_runtime_is_within_the_official_allowance(tmp_path):
    with tarfile.open(OFFICIAL_TAR) as t:
        t.extractall(tmp_path / "official", filter="tar")
    store = Store(tmp_path / "store", create=True)
    figures = {}
    for sub in sorted((tmp_path / "official" / "submissions").iterdir()):
        if sub.is_dir():
            _, d = store.add(sub)
            figures[sub.name], _ = runtime_information(store, d.blake3, rules.OFFICIAL)
    assert len(figures) >= 34  # every entry directory the tree holds
    largest = max(figures, key=figures.get)
    assert largest == "jas0xf_adversarial_neural_representation"
    assert 30_000 < figures[largest] <= rules.OFFICIAL.custody_allowance  # about 33 KB of 64 KiB
    assert rules.custody_check(rules.OFFICIAL, figures[largest], []).ok


def test_the_bundled_miniature_runtimes_are_within_its_allowance(tmp_path):
    store = Store(tmp_path / "store", create=True)
    for rt in sorted((REPO / "submissions").glob("*/runtime")):
        _, d = store.add(rt)
        info, contributors = runtime_information(store, d.blake3, MINI)
        assert info <= MINI.custody_allowance, (rt, info)
        assert rules.custody_adjusted_rate(MINI, 1000, info, MINI.uncompressed_size) == 1000 / MINI.uncompressed_size


def test_a_reviewed_tool_is_exempt_by_digest_alone(tmp_path):
    import os
    rt = tmp_path / "rt"
    rt.mkdir()
    (rt / "inflate.sh").write_text("#!/bin/sh\n")
    (rt / "ffmpeg").write_bytes(os.urandom(50_000))
    store = Store(tmp_path / "store", create=True)
    _, d = store.add(rt)
    info, top = runtime_information(store, d.blake3, MINI)
    assert info > 50_000 and top[0][0] == "ffmpeg"
    from provenance.core.digest import hash_file
    reviewed = MINI.replace(custody_tools=(hash_file(rt / "ffmpeg").sha256,))
    info, top = runtime_information(store, d.blake3, reviewed)
    assert info < 200 and [n for n, _ in top] == ["inflate.sh"]
    # any other binary counts like any file: a byte changed is no longer the reviewed tool
    (rt / "ffmpeg").write_bytes(b"x" + (rt / "ffmpeg").read_bytes()[1:])
    _, d2 = store.add(rt)
    assert runtime_information(store, d2.blake3, reviewed)[0] > 50_000


def test_an_imported_record_is_held_to_custody_too(tmp_path):
    """import-legacy of a runtime that carries 2 MB of incompressible bytes: no A++ (it was before)."""
    import json
    import os
    from conftest import RUNTIME_SPEC, make_tree, prov_json, v1_record
    rt = make_tree(tmp_path / "runtime", RUNTIME_SPEC)
    arch = tmp_path / "archive.zip"
    arch.write_bytes(b"PK\x05\x06" + bytes(18))
    honest = tmp_path / "honest.json"
    honest.write_text(json.dumps(v1_record(rt, arch)))
    out = prov_json("import-legacy", honest, "--archive", arch, "--runtime", rt, store=tmp_path / "s1")
    assert out["record"]["grade"] == "A++"
    (rt / "weights.bin").write_bytes(os.urandom(2 << 20))
    heavy = tmp_path / "heavy.json"
    heavy.write_text(json.dumps(v1_record(rt, arch)))
    out = prov_json("import-legacy", heavy, "--archive", arch, "--runtime", rt, store=tmp_path / "s2")
    custody = next(c for c in out["checks"] if c["name"] == "runtime_custody")
    assert not custody["ok"] and out["record"]["grade"] == "B"


@pytest.mark.skipif(not OFFICIAL_TAR.exists(), reason="needs shared/official")
def test_the_table_of_real_runtimes_in_docs_is_current():
    """docs/OFFICIAL_RUNTIMES.md is what scripts/official_runtimes.py makes: each runtime stored, its digest,
    bytes, custody figure and binaries."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("official_runtimes", REPO / "scripts/official_runtimes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    table = mod.rows(OFFICIAL_TAR)
    assert len(table) >= 34 and all(len(r["sha256"]) == 64 for r in table)
    assert any("(dangling)" in b for r in table for b in r["binaries"]), "the absent SVT-AV1 library is named"
    assert (REPO / "docs/OFFICIAL_RUNTIMES.md").read_text() == mod.markdown(OFFICIAL_TAR, table), \
        "docs/OFFICIAL_RUNTIMES.md is stale: run .venv/bin/python scripts/official_runtimes.py"
