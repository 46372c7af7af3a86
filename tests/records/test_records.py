import hashlib
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import REPORT, prov_json, report, run_prov, v1_record
from provenance.contest import rules
from provenance.contest.rules import OFFICIAL, ReportError, parse_report
from provenance.records.models import EvalRecord, json_schemas, load_record
from provenance.store.objects import Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def archive(tmp_path):
    p = tmp_path / "archive.zip"
    p.write_bytes(os.urandom(2_244_900))
    return p


def write(tmp_path, data: bytes, name="report.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_canonical_score_of_contest_example():
    r = parse_report(report())
    assert rules.canonical_score(OFFICIAL, r) == 4.391861338735286
    assert repr(rules.canonical_score(OFFICIAL, r)) == "4.391861338735286"


def test_adjudicate_clean_report(tmp_path, store, archive):
    out = prov_json("adjudicate", write(tmp_path, report()), "--archive", archive, store=store)
    rec = out["record"]
    assert rec["schema"] == "comma-lab/eval-record/v1" and rec["grade"] == "external"
    assert rec["result"]["canonical_score"] == 4.391861338735286
    assert all(c["ok"] for c in out["checks"])
    assert set(out["checks"][0]) == {"name", "ok", "detail"}
    # the digest names the stored canonical bytes
    s = Store(store)
    data = s.read_bytes(s.resolve(out["digest"]["sha256"]).blake3)
    assert hashlib.sha256(data).hexdigest() == out["digest"]["sha256"]
    assert load_record(data).to_json_obj() == rec


def check(out, name):
    return next(c for c in out["checks"] if c["name"] == name)


@pytest.mark.parametrize("over,name,rc", [
    (dict(size="2,244,901"), "archive_size_matches", 1),
    (dict(unc="37,545,490", rate="0.05979147"), "uncompressed_size_canonical", 0),
    (dict(samples=599), "samples", 0),
    (dict(score="4.40"), "printed_score_agrees", 0),
    (dict(rate="0.05979148"), "printed_rate_agrees", 0),
])
def test_each_flag(tmp_path, store, archive, over, name, rc):
    out = prov_json("adjudicate", write(tmp_path, report(**over)), "--archive", archive, store=store, check=rc)
    c = check(out, name)
    assert c["ok"] is False
    others = [x for x in out["checks"] if x["name"] != name and x["name"] != "printed_rate_agrees"]
    assert all(x["ok"] for x in others), others
    if name == "uncompressed_size_canonical":
        assert "rate moved by" in c["detail"] and "score by" in c["detail"]
        assert out["record"]["grade"] == "invalid"
    if name == "samples":
        assert out["record"]["grade"] == "invalid"


def test_size_contradiction_exit_1_and_human_output(tmp_path, store, archive):
    r = run_prov("adjudicate", write(tmp_path, report(size="1,000")), "--archive", archive, store=store)
    assert r.returncode == 1 and "[FAIL] archive_size_matches" in r.out


@pytest.mark.parametrize("data,needle", [
    (report(pose="nan"), "not a finite decimal"),
    (report(seg="inf"), "not a finite decimal"),
    (report(pose="abc"), "not a finite decimal"),
    (report(seg="-0.1"), "negative"),
    (report().replace(b"  Compression Rate: 0.05979147\n", b""), "missing result line(s): Compression Rate"),
    (report() + b"  batch_size: 16\n", "unexpected line in the results block"),
    (report() + b"=== Evaluation results over 600 samples ===\n", "appears 2 times"),
    (report().replace(b"  Average SegNet", b"  Average PoseNet Distortion: 0.1\n  Average SegNet"), "appears twice"),
    (b"\xff\xfe" + report(), "not UTF-8"),
    (b"x" * ((1 << 20) + 1), "larger than"),
    (b"hello", "no '=== Evaluation results"),
    (report(size="2,24,4900"), "badly grouped"),
])
def test_bad_reports_one_line_exit_2(tmp_path, store, archive, data, needle):
    r = run_prov("adjudicate", write(tmp_path, data), "--archive", archive, store=store)
    assert r.returncode == 2, r.out
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "report.txt" in lines[0], r.err


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_parser_only_raises_report_error(text):
    try:
        parse_report(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    except ReportError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(REPORT.encode().splitlines(keepends=True) + [b"Final score: 1\n", b"\n"]),
                max_size=30))
def test_parser_on_shuffled_report_lines(lines):
    try:
        parse_report(b"".join(lines))
    except ReportError:
        pass


eight = st.integers(min_value=0, max_value=10**9).map(lambda n: f"{n / 1e8:.8f}")


@settings(max_examples=300, deadline=None)
@given(eight, eight, eight)
def test_canonical_score_is_the_formula(pose, seg, rate):
    r = parse_report(report(pose=pose, seg=seg, rate=rate))
    expect = 100 * float(seg) + math.sqrt(float(pose) * 10) + 25 * float(rate)
    assert rules.canonical_score(OFFICIAL, r) == expect


def test_grade_table():
    g = lambda **kw: rules.grade(OFFICIAL, **{**dict(source="replay", device="cuda", gpu_model="Tesla T4",
                                                     samples=600, platform="linux-x86_64", custody_complete=True,
                                                     canonical_env=True), **kw})[0]
    assert g() == "A++"
    assert g(gpu_model="NVIDIA H100 80GB HBM3") == "A"
    assert g(custody_complete=False) == "B"
    assert g(sandboxed=False) == "B"
    assert g(device="cpu") == "contest-CPU"
    assert g(device="cpu", sandboxed=False) == "B"
    assert g(device="cpu", platform="darwin-arm64") == "invalid"
    assert g(device="mps") == "invalid"
    assert g(samples=599) == "invalid"
    assert g(canonical_env=False) == "invalid"
    assert g(source="imported-report") == "external"
    assert g(contradicted=True) == "invalid"


def test_schemas_do_not_drift():
    for name, schema in json_schemas().items():
        on_disk = json.loads((REPO / "schemas" / name).read_text())
        assert on_disk == schema, f"schemas/{name} is stale: run python -m provenance.records.models"


def test_record_round_trip_through_store(tmp_path, store, archive):
    out = prov_json("adjudicate", write(tmp_path, report()), "--archive", archive, store=store)
    rec = EvalRecord.model_validate(out["record"])
    s = Store(store)
    d = s.put_bytes(rec.canonical_bytes(), "record")
    again = load_record(s.read_bytes(d.blake3))
    assert again.digest() == d and d.sha256 == out["digest"]["sha256"]


# -- comma-lab v1 -----------------------------------------------------------------------------


@pytest.fixture
def legacy_case(tmp_path, runtime):
    arch = tmp_path / "small.zip"
    arch.write_bytes(os.urandom(178_981))
    return tmp_path, runtime, arch, v1_record(runtime, arch)


def dump(tmp_path, doc, name="contest_auth_eval.adjudicated.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_legacy_imports_cleanly_without_local_paths(legacy_case, store):
    tmp, rt, arch, doc = legacy_case
    out = prov_json("import-legacy", dump(tmp, doc), "--archive", arch, "--runtime", rt, store=store)
    assert all(c["ok"] for c in out["checks"]), out["checks"]
    rec = out["record"]
    assert rec["source"] == "legacy-import" and rec["grade"] == "A++"
    assert rec["result"]["canonical_score"] == doc["canonical_score"]
    assert rec["runtime"]["legacy_v1_sha256"] == doc["provenance"]["inflate_runtime_manifest"]["runtime_tree_sha256"]
    text = json.dumps(rec)
    for leak in ("/teamspace", "/home/", "/root", "hf_secret", "sys_argv"):
        assert leak not in text


@pytest.mark.parametrize("tamper,failing", [
    ("row_sha", {"runtime_tree_v1_recomputes", "runtime_files_match_rows"}),
    ("score", {"canonical_score_recomputes"}),
    ("archive_size", {"archive_size_matches", "archive_size_consistent"}),
])
def test_legacy_single_field_tamper_fails_its_check(legacy_case, store, tamper, failing):
    tmp, rt, arch, doc = legacy_case
    if tamper == "row_sha":
        doc["provenance"]["inflate_runtime_manifest"]["files"][0]["sha256"] = "00" * 32
    elif tamper == "score":
        doc["canonical_score"] = math.nextafter(doc["canonical_score"], 1.0)  # one ulp: bit-exact compare
    else:
        doc["archive_size_bytes"] += 1
    out = prov_json("import-legacy", dump(tmp, doc), "--archive", arch, "--runtime", rt, store=store, check=1)
    bad = {c["name"] for c in out["checks"] if not c["ok"]}
    assert failing <= bad, bad
    assert out["record"]["grade"] == "invalid"


def test_legacy_runtime_file_changed_names_the_row(legacy_case, store):
    tmp, rt, arch, doc = legacy_case
    (rt / "src" / "codec.py").write_bytes(b"tampered\n")
    out = prov_json("import-legacy", dump(tmp, doc), "--runtime", rt, store=store, check=1)
    c = check(out, "runtime_files_match_rows")
    assert not c["ok"] and "src/codec.py" in c["detail"] and "model.bin" not in c["detail"]


@pytest.mark.parametrize("content,needle", [
    (b"{not json", "not valid JSON"),
    (b'{"a": 1, "a": 2}', "duplicate JSON key"),
    (b'{"provenance": {}, "avg_posenet_dist": NaN}', "non-finite"),
    (b"[]", "not a comma-lab v1 record"),
])
def test_legacy_bad_input_exit_2(tmp_path, store, content, needle):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    r = run_prov("import-legacy", p, store=store)
    assert r.returncode == 2 and needle in r.err and len(r.err.strip().splitlines()) == 1, r.err
