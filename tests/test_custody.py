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
    import dataclasses
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
    reviewed = dataclasses.replace(MINI, custody_tools=(hash_file(rt / "ffmpeg").sha256,))
    info, top = runtime_information(store, d.blake3, reviewed)
    assert info < 200 and [n for n, _ in top] == ["inflate.sh"]
    # any other binary counts like any file: a byte changed is no longer the reviewed tool
    (rt / "ffmpeg").write_bytes(b"x" + (rt / "ffmpeg").read_bytes()[1:])
    _, d2 = store.add(rt)
    assert runtime_information(store, d2.blake3, reviewed)[0] > 50_000
