import json
import os
import re
import shutil
import socket
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import make_tree, prov_json, run_prov, RUNTIME_SPEC
from conftest import v1_record

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

LEAKS = ("/teamspace", "/home/", "/root/", "/work/", "hf_secret", "sys_argv", "env_vars", "/tmp/pytest")


def legacy(tmp_path, store, name, score_shift=0.0, gpu="Tesla T4"):
    rt = make_tree(tmp_path / f"rt-{name}", RUNTIME_SPEC)
    arch = tmp_path / f"{name}.zip"
    arch.write_bytes(os.urandom(178_981 + int(score_shift * 1000)))
    doc = v1_record(rt, arch)
    doc["provenance"]["gpu_model"] = gpu
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(doc))
    return prov_json("import-legacy", p, "--archive", arch, "--runtime", rt, store=store)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A store with two miniature replays and an imported v1 record full of machine paths."""
    from provenance.lab.miniature.build import build
    tmp = tmp_path_factory.mktemp("site")
    mini = build(tmp / "mini")
    store = tmp / "store"
    recs = {}
    for n in ("copy", "half"):
        sub = mini / "submissions" / n
        recs[n] = prov_json("replay", "--archive", sub / "archive.zip", "--runtime", sub / "runtime",
                            "--upstream", mini / "upstream", store=store)
    recs["legacy"] = legacy(tmp, store, "legacy")
    run_prov("ledger", "promote", recs["legacy"]["digest"]["sha256"], "--reason", "exact T4 replay", store=store,
             check=0)
    run_prov("ledger", "reject", recs["copy"]["digest"]["sha256"], "--reason", "rate near 1: no compression",
             store=store, check=0)
    run_prov("ledger", "annotate", recs["half"]["digest"]["sha256"], "--label", "half-res", "--track", "codec",
             "--notes", "x265 crf 36 at half resolution", store=store, check=0)
    run_prov("key", "generate", "--out", tmp / "k", check=0)
    run_prov("log", "checkpoint", "--key", tmp / "k/key.pem", store=store, check=0)
    site = tmp / "public"
    run_prov("site", "build", "--out", site, store=store, check=0)
    return {"tmp": tmp, "store": store, "site": site, "recs": recs}


def test_ledger_and_frontier(lab):
    st = lab["store"]
    rows = {r["record"]: r for r in prov_json("ledger", "show", store=st)}
    legacy_sha = lab["recs"]["legacy"]["digest"]["sha256"]
    assert rows[legacy_sha]["verdict"] == "promote"
    assert rows[lab["recs"]["copy"]["digest"]["sha256"]]["verdict"] == "reject"
    assert rows[lab["recs"]["half"]["digest"]["sha256"]]["label"] == "half-res"
    assert prov_json("frontier", store=st)["frontier"]["record"] == legacy_sha


def test_promotion_rule(lab, tmp_path):
    st = tmp_path / "store"
    shutil.copytree(lab["store"], st)
    cpu = lab["recs"]["half"]["digest"]["sha256"]  # A++ on the miniature, which does not compare with the contest
    r = run_prov("ledger", "promote", cpu, "--reason", "try", store=st)
    assert r.returncode == 1 and "scores do not compare" in r.err
    worse = legacy(tmp_path, st, "worse", score_shift=50)  # more bytes: a worse score
    r = run_prov("ledger", "promote", worse["digest"]["sha256"], "--reason", "try", store=st)
    assert r.returncode == 1 and "does not beat the frontier" in r.err
    better = legacy(tmp_path, st, "better", score_shift=-50, gpu="NVIDIA A100-SXM4-80GB")
    assert better["record"]["grade"] == "A"
    out = prov_json("ledger", "promote", better["digest"]["sha256"], "--reason", "smaller", store=st)
    assert out["flags"] == ["needs Tesla T4 confirmation"]
    assert prov_json("frontier", store=st)["frontier"]["record"] == better["digest"]["sha256"]
    assert run_prov("ledger", "reject", cpu, "--reason", "", store=st).returncode == 2


def test_bundle_is_clean_and_complete(lab):
    site = lab["site"]
    files = [p for p in site.rglob("*") if p.is_file()]
    for p in files:
        text = p.read_bytes().decode("utf-8", "replace")
        for leak in LEAKS:
            assert leak not in text, f"{p.relative_to(site)} leaks {leak}"
    assert run_prov("site", "check", site).returncode == 0
    man = json.loads((site / "public_bundle_manifest.json").read_text())
    assert {f["path"] for f in man["files"]} == {p.relative_to(site).as_posix() for p in files} - \
        {"public_bundle_manifest.json"}
    headers = (site / "_headers").read_text()
    assert "Content-Security-Policy: default-src 'none'" in headers
    html = (site / "index.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html), "external resource in the page"
    legacy_score = lab["recs"]["legacy"]["record"]["result"]["canonical_score"]
    assert repr(legacy_score) in html
    for n in ("copy", "half", "legacy"):
        assert (site / f"evidence/records/{lab['recs'][n]['digest']['sha256']}.json").is_file()
    assert list((site / "evidence/checkpoints").glob("*.note"))
    # exact records are published byte for byte: their name is their sha256
    import hashlib
    half = site / f"evidence/records/{lab['recs']['half']['digest']['sha256']}.json"
    assert hashlib.sha256(half.read_bytes()).hexdigest() == lab["recs"]["half"]["digest"]["sha256"]


def test_site_check_catches_tampering(lab, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(lab["site"], copy)
    (copy / "style.css").write_text("body{}")
    (copy / "extra.txt").write_text("/home/alice/secret")
    out = prov_json("site", "check", copy, check=1)
    text = "\n".join(out["problems"])
    assert "style.css: sha256 differs" in text and "extra.txt:1: local-path" in text


def test_secret_in_notes_is_redacted(lab, tmp_path):
    """Annotations are published, so they are redacted (issue 13); an unredactable leak fails the build
    (tests/lab/test_hygiene.py)."""
    st = tmp_path / "store"
    shutil.copytree(lab["store"], st)
    run_prov("ledger", "annotate", lab["recs"]["half"]["digest"]["sha256"], "--notes",
             "retry with OPENAI_API_KEY=sk-live0123456789abcdef", store=st, check=0)
    out = tmp_path / "public"
    run_prov("site", "build", "--out", out, store=st, check=0)
    html = (out / "index.html").read_text()
    assert "sk-live" not in html and "retry with OPENAI_API_KEY=${REDACTED_SECRET}" in html


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed (.ci/setup installs it)")
def test_rendered_in_headless_chromium(lab, tmp_path):
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            requests.append(self.path)

    port = _free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=str(lab["site"])))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}/index.html"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1100,3200"]  # the doors come first (#28)
    try:
        netlog = tmp_path / "net.json"
        dom = subprocess.run(base + [f"--log-net-log={netlog}", "--dump-dom", url], capture_output=True,
                             text=True, timeout=120).stdout
        shot = tmp_path / "shot.png"
        subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    finally:
        srv.shutdown()
    score = repr(lab["recs"]["legacy"]["record"]["result"]["canonical_score"])
    assert f'id="frontier-score">{score}<' in dom
    assert 'id="plot-score-bytes"><svg' in dom and 'id="plot-trajectory"><svg' in dom
    # plots visible: the promoted run's green star and the rejected run's red cross are on screen
    from PIL import Image
    img = Image.open(shot).convert("RGB")
    colors = {img.getpixel((x, y)) for x in range(0, img.width, 2) for y in range(0, img.height, 2)}
    near = lambda c, ref: all(abs(a - b) <= 12 for a, b in zip(c, ref))
    assert any(near(c, (0x2c, 0xa0, 0x2c)) for c in colors), "promoted marker not rendered"
    assert any(near(c, (0xd6, 0x27, 0x28)) for c in colors), "rejected marker not rendered"
    # every request the page made stayed on localhost (Chromium's own background traffic, which
    # carries no page origin, is the browser's business, not the bundle's)
    assert {"/index.html", "/style.css"} <= set(requests)
    origin = f"http://127.0.0.1:{port}"
    page = []
    for e in json.loads(netlog.read_text())["events"]:
        p = e.get("params", {})
        if "url" in p and (p.get("initiator") == origin or "127.0.0.1" in str(p.get("network_isolation_key"))):
            page.append(p["url"])
    assert any(u.endswith("/style.css") for u in page)
    outside = [u for u in page if not u.startswith((origin + "/", "data:"))]
    assert not outside, f"the page requested something outside localhost: {outside[:5]}"
