"""The hygiene gate: every leak form of issue 13 is caught, redacted where it can be (records,
annotations, import-legacy) and fails the build where it cannot (signed files)."""

import json
import os

import pytest

from conftest import run_prov
from provenance.core import sanitize
from conftest import report, v1_record

# name -> (text as it would be published, a fragment that must not survive)
LEAKS = {
    "path-workspace": ("ran in /workspace/alice/job", "/workspace/"),
    "path-content": ("colab at /content/drive/MyDrive/alice", "/content/"),
    "path-mnt": ("data on /mnt/nvme0/alice", "/mnt/"),
    "path-opt": ("venv /opt/alice/venv/bin/python", "/opt/"),
    "path-srv": ("served from /srv/alice/www", "/srv/"),
    "path-file-url": ("open file:///home/alice/report.txt", "file:///"),
    "path-windows": ("copied to C:\\Users\\alice\\Downloads", "Users\\alice"),
    "path-windows-json": ("C:\\\\Users\\\\alice\\\\x", "Users\\\\alice"),
    "path-tilde": ("see ~/comma/alice/run", "~/"),
    "path-home": ("old /home/alice/x", "/home/"),
    "token-github-pat": ("github_pat_11AAAAAAA0123456789_abcdefghijklmnopqrstuvwxyzABCDEFG", "github_pat_"),
    "token-aws": ("key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    "token-bare-api-key": ("API_KEY=alicesecret42", "alicesecret42"),
    "token-openai": ("sk-proj0123456789abcdefXYZ", "sk-proj"),
    "private-key-header": ("-----BEGIN OPENSSH PRIVATE KEY-----", "BEGIN OPENSSH"),
    "private-key-body-ed25519": ("MC4CAQAwBQYDK2VwBCIEIHPgq1R4sVh8o2hOVm0gqDJ3S1mBrx5X0yVKMKm4T1Xr", "MC4CAQAw"),
    "private-key-body-rsa": ("MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC7", "MIIEvAIBAD"),
    "private-key-body-openssh": ("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB", "b3BlbnNzaC1rZXktdjE"),
    "private-key-body-wrapped": ("Zm9vYmFyYmF6cXV4" * 4 + "\n" + "cXV1eGNvcmdlZ3JhdWx0" * 3 + "cXV1\n" + "Zm9vYmFy==",
                                 "Zm9vYmFyYmF6cXV4"),
    "ssh-command": ("ssh -p 40022 root@203.0.113.7", "203.0.113.7"),
    "ssh-command-flags": ("ssh -i key.pem -p 2222 alice@gpu.example.net", "gpu.example.net"),
    "encoded-json-slash": ("\\/home\\/alice\\/x", "alice"),
    "encoded-url": ("%2Fhome%2Falice%2Fx", "alice"),
    "encoded-url-double": ("%252Fteamspace%252Falice", "alice"),
    "encoded-u-escape": ("\\u002fhome\\u002falice", "alice"),
    "encoded-html-entity": ("&#47;root&#47;alice", "alice"),
    "zero-width": ("/ho\u200bme/alice/x and gh\u200dp_ABCDEFGHIJKLMNOPQRSTUV", "alice"),
    "split-token": ("token ghp_ABCDEFGH\nIJKLMNOPQRSTUVWX", "ghp_"),
    "split-token-backslash": ("hf_ABCDEFGHIJ\\\nKLMNOPQRSTUV", "hf_"),
}


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_scan_catches_each_form(name):
    text, _ = LEAKS[name]
    assert sanitize.scan_text("f", text), name


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_redaction_removes_each_form(name):
    text, needle = LEAKS[name]
    out = sanitize.redact_text(text)
    assert needle not in sanitize.normalize(out) and not sanitize.scan_text("f", out), (name, out)


def test_every_gate_holds_on_the_leaks_its_rule_matches():
    """A rule's `requires` literals only skip work: each match of the rule, on every leak form
    above (as scanned: normalised, and each pair of lines joined), holds one of them."""
    checked = 0
    for text, _ in LEAKS.values():
        lines = [sanitize.normalize(ln) for ln in text.splitlines()]
        pieces = lines + [lines[n].rstrip().removesuffix("\\") + lines[n + 1].lstrip() for n in range(len(lines) - 1)]
        for r in sanitize._rules():
            for piece in (pieces if r.scope == "line" else ["\n".join(lines)]):
                for m in r.rx.finditer(piece):
                    checked += 1
                    assert not r.requires or any(lit in m.group(0) for lit in r.requires), (r.name, m.group(0))
    assert checked >= len(LEAKS)
    assert all(not any(c.isspace() for c in lit) for r in sanitize._rules() for lit in r.requires)


@pytest.mark.parametrize("text", [
    "token s\nk-proj0123456789abcdefXYZ",  # the gate's own literal split across two lines
    "key AK\\\n   IAIOSFODNN7EXAMPLE",
    "at /ho\nme/alice/x",
])
def test_a_gate_literal_split_across_lines_is_still_scanned(text):
    assert [v.rule for v in sanitize.scan_text("f", text)][-1].endswith("(split across lines)")


@pytest.mark.parametrize("text", [
    "https://github.com/commaai/comma_video_compression_challenge/tree/main/submissions/x",
    "evidence/records/0123abcd.json",
    "API_KEY=${API_KEY} and ${ARCHIVE_ZIP_URL}",
    '"public_key": "-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VwAyEA4NG8m61QbLuKDGMHZt9JwMTd9O5bGbNqKPpMFN8Z3Uk=\\n"',
    "a" * 64 + "\n" + "b" * 64,  # hex digests on their own lines are not a key body
    "100*segnet_dist + sqrt(10*posenet_dist) + 25*rate = 4.39  50% smaller, 10%2",
    "prov verify manifest.json --key release.pub.pem",
    "the ssh key is pinned",
])
def test_clean_text_is_not_flagged(text):
    assert sanitize.scan_text("f", text) == []
    assert sanitize.redact_text(text) == text


def test_build_error_does_not_echo_the_secret():
    v = sanitize.scan_text("f", "AKIAIOSFODNN7EXAMPLE")[0]
    assert "AKIAIOSFODNN7EXAMPLE" not in str(v)


def test_planted_leak_site(tmp_path):
    """Every form planted in records and annotations: the bundle publishes none of them; one more in a
    signed release file (which cannot be redacted) fails the build, leaving nothing behind."""
    from provenance.lab import ledger
    from provenance.records.adjudicate import adjudicate_report
    from provenance.lab.site.build import build_site
    from provenance.store.objects import Store
    pytest.importorskip("matplotlib")
    pytest.importorskip("jinja2")
    store_dir = tmp_path / "store"
    store = Store(store_dir, create=True)
    rep = tmp_path / "report.txt"
    rep.write_bytes(report())
    for name, (text, _) in sorted(LEAKS.items()):
        _, d, _ = adjudicate_report(store, rep, None, label=text)
        ledger.annotate(store, d.sha256, label=text, track=name, notes=f"notes: {text}")
    out = tmp_path / "public"
    build_site(store, out)
    assert sanitize.scan_dir(out) == []
    for p in out.rglob("*"):
        if p.is_file():
            published = sanitize.normalize(p.read_bytes().decode("utf-8", "replace"))
            for name, (_, needle) in LEAKS.items():
                assert needle not in published, f"{p.relative_to(out)} publishes {name}"
    notes = [e for e in json.loads((out / "public_bundle_manifest.json").read_text())["files"]
             if e["path"].startswith("evidence/records/")]
    assert len(notes) == len(LEAKS)
    store.close()
    # the rest: a leak in a signed file cannot be redacted, so the build fails and names it
    rel = tmp_path / "releases" / "demo"
    rel.mkdir(parents=True)
    (rel / "manifest.json").write_text(json.dumps({"payload": "x", "note": "built in /workspace/alice"}))
    out2 = tmp_path / "public2"
    r = run_prov("site", "build", "--out", out2, "--releases", tmp_path / "releases", store=store_dir)
    lines = r.err.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.err
    assert "evidence/releases/demo/manifest.json:1: local-path" in lines[0]
    assert not out2.exists() and not list(tmp_path.glob(".public2*")), "nothing half-written"


def test_import_legacy_leaves_no_machine_path_in_any_field(tmp_path, runtime, store):
    arch = tmp_path / "small.zip"
    arch.write_bytes(os.urandom(178_981))
    doc = v1_record(runtime, arch)
    prov = doc["provenance"]
    prov["device"] = "cuda:0 (/workspace/alice/venv)"
    prov["gpu_model"] = "Tesla T4 at file:///home/alice/gpu"
    prov["torch_version"] = "2.5.1+cu124 /opt/conda/lib/python3.11"
    prov["cuda_version"] = "12.4 C:\\Users\\alice\\cuda"
    prov["upstream_commit"] = "deadbeef ~/comma/upstream"
    rows = prov["inflate_runtime_manifest"]["files"]
    rows.append({"relative_path": "/content/alice/inflate.sh", "bytes": 1, "sha256": "00" * 32})
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(doc))
    r = run_prov("import-legacy", p, "--archive", arch, "--json", store=store)
    assert r.returncode in (0, 1), r.err
    out = json.loads(r.out)
    text = json.dumps(out)
    assert sanitize.scan_text("record", text) == [], sanitize.scan_text("record", text)
    for needle in ("alice", "/workspace", "/opt/", "file://", "Users", "~/", "/content"):
        assert needle not in text, needle
    assert out["record"]["environment"]["device"].startswith("cuda:0 (${LOCAL_PATH}")
    unsafe = next(c for c in out["checks"] if c["name"] == "runtime_rows_relative")
    assert not unsafe["ok"] and "${LOCAL_PATH}" in unsafe["detail"]


def test_png_pixels_are_not_scanned_but_png_text_is(tmp_path):
    """Frame images are pixels: noise that happens to read '~/' is no leak; a text chunk is text."""
    import struct
    import zlib
    from provenance.core import sanitize

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, 8, 0, 0, 0, 0))
    noisy = chunk(b"IDAT", b"~/8ppN\x00\x01~/home/x")  # not deflate: the scanner must not read it
    clean = sanitize.PNG_SIGNATURE + ihdr + noisy + chunk(b"IEND", b"")
    (tmp_path / "frame.png").write_bytes(clean)
    assert sanitize.scan_dir(tmp_path) == []
    leaky = sanitize.PNG_SIGNATURE + ihdr + chunk(b"tEXt", b"Comment\x00/home/alice/run") + chunk(b"IEND", b"")
    (tmp_path / "frame.png").write_bytes(leaky)
    assert sanitize.scan_dir(tmp_path)


def test_the_quick_line_normalisation_is_normalize():
    """scan_text's shortcut for lines whose only trigger is '&' decodes exactly as normalize()
    does, double and mixed encodings included (20k random lines of entity and escape pieces)."""
    import random
    rnd = random.Random(15)
    pieces = ["&", "amp;", "#", "37;", "47;", "92;", "x5c;", "lt;", "%", "2F", "25", "\\", "u002f", "/",
              "\u200b", "a", ";", "u0026", "#8203;", "#10;"]
    lines = ["&amp;#47;home", "&#37;2Fhome", "&#8203;x", "a &lt; b", "&#92;u002f", "x&#10;y", "&#x5c;/"]
    lines += ["".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 12))) for _ in range(20_000)]
    assert [ln for ln in lines if sanitize._normalize_line(ln) != sanitize.normalize(ln)] == []


def test_redaction_shortcut_changes_nothing_it_would_not():
    """redact_text returns a string untouched without the full pass only where that pass would
    return it untouched too (random strings of leak and near-leak pieces)."""
    import random
    rnd = random.Random(151)
    pieces = ["/", "home", "/home/", "alice", "sk-", "proj0123456789abc", "AKIA", "IOSFODNN7EXAMPLE", "~/", "C:",
              "\\", "Users", "%2F", "&#47;", "\n", "\r", "ssh ", "root@host", "x", " ", "=", "TOKEN", "run 7", "A++",
              "evidence/records/", "ab" * 32, "hf_", "ABCDEFGHIJKLMNOPQ", "\u2028", "MC4CAQAw" + "A" * 20]
    for _ in range(5_000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 8)))
        assert sanitize.redact_text.__wrapped__(text) == sanitize._redact_text(text), text


def _reference_scan(name, text):
    """scan_text as written first: every line normalised on its own, lines glued by the regex, and
    no gate (every rule searched everywhere)."""
    out = {}

    def hit(n, rule, s, how=""):
        shown = s if rule.startswith("local-path") else s[:6] + "..."
        out.setdefault((n, rule), sanitize.Violation(name, n, rule + how, sanitize._excerpt(shown)))

    lines = [sanitize.normalize(ln) for ln in text.splitlines()]
    whole = "\n".join(lines)
    rules = sanitize._rules()
    for n, line in enumerate(lines, 1):
        for r in rules:
            if r.scope == "line" and (m := r.rx.search(line)):
                hit(n, r.name, m.group(0))
    for n in range(len(lines) - 1):
        a = lines[n].rstrip()
        a = a[:-1] if a.endswith("\\") else a
        joined = a + lines[n + 1].lstrip()
        for r in rules:
            if r.scope == "line":
                for m in r.rx.finditer(joined):
                    if m.start() < len(a) < m.end():
                        hit(n + 1, r.name, m.group(0), " (split across lines)")
                        break
    for r in rules:
        if r.scope == "text":
            for m in r.rx.finditer(whole):
                hit(whole.count("\n", 0, m.start()) + 1, r.name, m.group(0))
    return sorted(out.values(), key=lambda v: (v.line, v.rule))


def test_the_gated_scan_finds_what_the_plain_scan_finds():
    """Every shortcut of scan_text (literal gates, RE2's any-literal pass, the base64-line gate,
    one unescape for the whole text, lines glued without the regex) only skips work: on random
    texts of leak pieces, entities, escapes, blanks and line breaks it reports what the plain scan
    reports, with and without RE2."""
    import random
    rnd = random.Random(1515)
    pieces = ["/", "home", "/home/", "/ho", "me/", "alice", "sk-", "proj0123456789abc", "AKIA", "IOSFODNN7EXAMPLE",
              "~/", "C:", "\\", "Users", "%2F", "&#47;", "&amp;", "&lt;", "&#10;", "\n", "\r\n", "  ", "\t", " \\\n",
              "hf_", "ABCDEFGHIJKLMNOPQRST", "ghp_", "x", "=", "TOKEN", "<a href=\"runs/1.html\">", "\u2028", "\x1c",
              "\u200b", "MC4CAQAw", "Zm9vYmFyYmF6cXV4" * 4, "Zm9vYmFy==", "a" * 64, "ssh -p 22 root@10.0.0.1",
              "-----BEGIN", " PRIVATE KEY-----", "file://", "%252F", "\\u002f", "\\/", "\u00a0",
              "%E9", "\\ud83d\\ude80", "\\ud800", "\u00e9", "\U0001f680"]  # lone surrogates, once decoded
    texts = [t for t, _ in LEAKS.values()]
    texts += ["".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 30))) for _ in range(6_000)]
    breaks = ["\n", " \\\n  ", "\\\n", "  \n\t", "\\ \n", "\n \n", "&#10;", "\r\n"]
    for text, _ in list(LEAKS.values()) * 60:  # each leak split at a random place
        at = rnd.randrange(len(text) + 1)
        texts.append(rnd.choice(["", "x ", "  "]) + text[:at] + rnd.choice(breaks) + text[at:])
    any_literal = sanitize._any_literal
    try:
        for fast in (True, False):
            if not fast:
                sanitize._any_literal = lambda: None
            bad = [t for t in texts if sanitize.scan_text("f", t) != _reference_scan("f", t)]
            assert bad == [], bad[:3]
    finally:
        sanitize._any_literal = any_literal
    assert sum(bool(_reference_scan("f", t)) for t in texts) > 1_000  # the texts do leak, often


def test_json_untouched_is_redaction_changing_nothing():
    """json_untouched(text) says True only where redacting the parsed value changes nothing, and
    says it wherever that is so and the text has no escape (random canonical JSON of leak pieces)."""
    import random
    from provenance.core import canonical
    rnd = random.Random(1516)
    pieces = ["run", "A++", "/home/alice", "comma-lab/eval-record/v1", "sk-proj0123456789abcdef", "x/y", "/a/b",
              "%2Fhome", "&#47;", "\n", "\"", "\\", "é", "\u2028", "ghp_ABCDEFGHIJKLMNOPQRST", "~/x", "C:\\Users\\a",
              "ok", "evidence/records/ab.json", "1.5", "TOKEN=abc", "", "caf%E9", "\U0001f680"]

    def value(depth=0):
        k = rnd.random()
        if depth < 3 and k < 0.3:
            return {"".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 2))): value(depth + 1)
                    for _ in range(rnd.randint(0, 4))}
        if depth < 3 and k < 0.45:
            return [value(depth + 1) for _ in range(rnd.randint(0, 3))]
        if k < 0.55:
            return rnd.randint(-5, 5)
        return "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 3)))

    seen = {True: 0, False: 0}
    for _ in range(4_000):
        obj = value()
        text = canonical.dumps(obj).decode()
        same = sanitize.redact(obj) == obj
        assert sanitize.json_untouched(text) == (same and "\\" not in text), text
        seen[same] += 1
    assert min(seen.values()) > 500


def test_hash_tiles_are_hashes_not_text():
    """The published log's hash tiles are SHA-256 outputs: random bytes that once read as a home path ('~/')
    and stopped a site. Exactly a tile's path and size is exempt; a bundle, a wrong size or a near name is not."""
    from provenance.lab.site.hygiene import _scan_bytes
    leak = b"~/alice/notes "
    tile = leak + bytes(32 - len(leak))
    assert _scan_bytes("log/tile/0/000.p/1", tile) == []
    assert _scan_bytes("log/tile/1/x001/234", tile * 256) == []
    for rel, data in (("log/tile/0/000.p/2", tile), ("log/tile/0/0000.p/1", tile), ("log/tile/entries/000.p/1", tile),
                      ("tile/0/000.p/1", tile), ("log/tile/0/000.p/1", tile + b"\n")):
        assert _scan_bytes(rel, data), rel
