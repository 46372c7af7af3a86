"""Reports of every era (CONTEST.md, "Reports in the wild"), written the way each evaluator wrote them,
plus doctored ones; and claims recorded without their archive."""

import json
import math
import os
import random
from decimal import Decimal

import pytest

from conftest import prov_json, run_prov
from provenance.contest import rules
from provenance.contest.rules import OFFICIAL, check_report, parse_report, score_rounding_bound

CONFIG = """=== Evaluation config ===
  batch_size: 16
  device: {device}
  num_threads: 2
  prefetch_queue_depth: 4
  report: /content/comma_video_compression_challenge/submissions/x/report.txt
  seed: 1234
  submission_dir: /workspace/comma_video_compression_challenge/submissions/x
  uncompressed_dir: /home/user/comma_video_compression_challenge/videos
  video_names_file: public_test_video_names.txt
"""


def evaluator_report(pose: float, seg: float, size: int, *, unc: int = 37_545_489, decimals: int = 2,
                     grouped: bool = True, root: str = "√", samples: int = 600, device: str = "cuda") -> bytes:
    """What an evaluator prints: components to 8 decimals, and a score summed from the *unrounded*
    components, in evaluate.py's order, printed to `decimals`."""
    rate = size / unc
    score = 100 * seg + math.sqrt(pose * 10) + 25 * rate
    n = (lambda v: f"{v:,}") if grouped else str
    return (CONFIG.format(device=device) + f"""=== Evaluation results over {samples} samples ===
  Average PoseNet Distortion: {pose:.8f}
  Average SegNet Distortion: {seg:.8f}
  Submission file size: {n(size)} bytes
  Original uncompressed size: {n(unc)} bytes
  Compression Rate: {rate:.8f}
  Final score: 100*segnet_dist + {root}(10*posenet_dist) + 25*rate = {score:.{decimals}f}
""").encode()


def checks_of(data: bytes, archive_size=None) -> dict:
    r = parse_report(data)
    return {c.name: c for c in check_report(OFFICIAL, r, archive_size)}


ERAS = {  # name -> keyword arguments of evaluator_report
    "current": dict(),
    "ungrouped": dict(grouped=False),
    "eight-decimals": dict(decimals=8),
    "sqrt": dict(root="sqrt"),
    "old-evaluator": dict(decimals=8, grouped=False, root="sqrt"),
    "cpu": dict(device="cpu"),
}


@pytest.mark.parametrize("era", sorted(ERAS))
def test_honest_reports_of_every_era_are_parsed_and_not_flagged(era):
    rnd = random.Random(era)
    for _ in range(300):
        pose = rnd.choice([rnd.uniform(0, 2), rnd.uniform(0, 1e-6), rnd.uniform(0, 1e-8)])
        seg, size = rnd.uniform(0, 0.05), rnd.randrange(1, 40_000_000)
        data = evaluator_report(pose, seg, size, **ERAS[era])
        c = checks_of(data, size)
        assert all(x.ok for x in c.values()), (era, pose, seg, size, [x.detail for x in c.values() if not x.ok])


def test_contest_example_in_each_integer_form():
    for size in ("2,244,900", "2244900"):
        text = (CONFIG.format(device="cuda") + f"""=== Evaluation results over 600 samples ===
  Average PoseNet Distortion: 0.38042614
  Average SegNet Distortion: 0.00946623
  Submission file size: {size} bytes
  Original uncompressed size: {"37,545,489" if "," in size else "37545489"} bytes
  Compression Rate: 0.05979147
  Final score: 100*segnet_dist + √(10*posenet_dist) + 25*rate = 4.39
""").encode()
        r = parse_report(text)
        assert r.archive_size == 2_244_900 and r.uncompressed_size == 37_545_489
        assert repr(rules.canonical_score(OFFICIAL, r)) == "4.391861338735286"


def test_sqrt_line_parses_like_the_root_sign():
    a = parse_report(evaluator_report(0.38, 0.0094, 2_244_900, root="√"))
    b = parse_report(evaluator_report(0.38, 0.0094, 2_244_900, root="sqrt"))
    assert (a.posenet, a.segnet, a.rate, a.printed_score) == (b.posenet, b.segnet, b.rate, b.printed_score)


def test_eight_decimal_score_was_flagged_before_and_is_exact_now():
    """The case from the issue: an 8-decimal print of a score summed from unrounded components."""
    pose, seg, size = 0.380426144999, 0.009466234999, 2_244_900
    data = evaluator_report(pose, seg, size, decimals=8)
    r = parse_report(data)
    canon = rules.canonical_score(OFFICIAL, r)
    assert f"{canon:.8f}" != r.printed_score  # an exact string compare would flag it
    assert checks_of(data, size)["printed_score_agrees"].ok


def test_two_decimal_score_on_a_rounding_boundary_is_not_flagged():
    """True score just under x.xx5 prints down; the canonical one, from rounded-up components, lands just
    over it and shows the other way. Honest: within the bound."""
    found = 0
    rnd = random.Random(7)
    for _ in range(20000):
        if found >= 5:
            break
        seg, size = 0.00946623, 2_244_900
        target = Decimal(rnd.randrange(300, 600)) / 100 + Decimal("0.005") - Decimal("1e-9")
        pose = (float(target) - 100 * seg - 25 * size / OFFICIAL.uncompressed_size) ** 2 / 10
        data = evaluator_report(pose, seg, size)
        r = parse_report(data)
        if f"{rules.canonical_score(OFFICIAL, r):.2f}" != r.printed_score:
            found += 1
            assert checks_of(data, size)["printed_score_agrees"].ok, r.printed
    assert found > 0, "no boundary case constructed"


def test_worst_case_rounding_is_inside_the_bound():
    """Every printed component rounded as far as it may go, all in the same direction."""
    h = 5e-9 * (1 - 1e-6)
    for p, s, rate in ((0.38042614, 0.00946623, 0.05979147), (1e-8, 0.0, 0.001), (0.0, 0.02, 0.5)):
        for sign in (1, -1):
            tp, ts, tr = max(p + sign * h, 0), max(s + sign * h, 0), rate + sign * h
            true = 100 * ts + math.sqrt(tp * 10) + 25 * tr
            for decimals in (8, 2):
                text = f"""=== Evaluation results over 600 samples ===
  Average PoseNet Distortion: {p:.8f}
  Average SegNet Distortion: {s:.8f}
  Submission file size: 1 bytes
  Original uncompressed size: 37,545,489 bytes
  Compression Rate: {rate:.8f}
  Final score: 100*segnet_dist + √(10*posenet_dist) + 25*rate = {true:.{decimals}f}
"""
                assert checks_of(text.encode())["printed_score_agrees"].ok, (p, s, rate, sign, decimals)


def test_bound_is_the_documented_formula():
    r = parse_report(evaluator_report(0.38042614, 0.00946623, 2_244_900, decimals=8))
    b = float(score_rounding_bound(r))
    p = 0.38042614
    sqrt_term = math.sqrt(10 * p) - math.sqrt(10 * (p - 5e-9))
    expect = 100 * 5e-9 + 25 * 5e-9 + sqrt_term + 5e-9
    assert expect <= b < expect + 1e-13 and 6e-7 < b < 7e-7  # "a few times 1e-7"
    r2 = parse_report(evaluator_report(0.38042614, 0.00946623, 2_244_900, decimals=2))
    assert 0.005 < float(score_rounding_bound(r2)) < 0.005 + 1e-6
    # sqrt is steep at 0: the change over [0, 5e-9] is evaluated, not a derivative (infinite there)
    r0 = parse_report(evaluator_report(0.0, 0.00946623, 2_244_900, decimals=8))
    assert float(score_rounding_bound(r0)) >= math.sqrt(10 * 5e-9)


@pytest.mark.parametrize("decimals,delta", [(8, 1e-6), (8, -1e-6), (8, 1e-4), (2, 0.01), (2, -0.01), (2, 0.03)])
def test_doctored_printed_score_is_flagged(decimals, delta):
    pose, seg, size = 0.38042614, 0.00946623, 2_244_900
    honest = evaluator_report(pose, seg, size, decimals=decimals).decode()
    line = next(ln for ln in honest.splitlines() if ln.strip().startswith("Final score"))
    value = line.rsplit("= ", 1)[1]
    doctored = honest.replace(line, line.replace(value, f"{float(value) + delta:.{decimals}f}")).encode()
    c = checks_of(doctored, size)["printed_score_agrees"]
    assert not c.ok and "beyond the rounding bound" in c.detail


def test_doctored_component_is_flagged():
    """A lowered PoseNet distortion with the honest score left in place."""
    honest = evaluator_report(0.38042614, 0.00946623, 2_244_900, decimals=8).decode()
    doctored = honest.replace("Average PoseNet Distortion: 0.38042614", "Average PoseNet Distortion: 0.30042614")
    assert not checks_of(doctored.encode(), 2_244_900)["printed_score_agrees"].ok


@pytest.mark.parametrize("unc,cause", [(37_533_786, "remux"), (37_545_507, "stray file under videos/")])
def test_non_canonical_denominators_are_parsed_flagged_and_explained(unc, cause):
    size = 2_244_900
    c = checks_of(evaluator_report(0.38, 0.0094, size, unc=unc, decimals=8, grouped=False), size)
    d = c["uncompressed_size_canonical"]
    assert not d.ok and d.severity == "flag" and cause in d.detail and "rate moved by" in d.detail
    assert c["printed_score_agrees"].ok and c["printed_rate_agrees"].ok  # honest, just another environment


@pytest.mark.parametrize("prefix,bad,line_no,expected", [
    ("Final score", "Final score: 100*segnet_dist + cbrt(10*posenet_dist) + 25*rate = 4.39", 17, "sqrt(...)"),
    ("Submission file size", "Submission file size: 2.244.900 bytes", 14, "digit grouping optional"),
    ("Average PoseNet", "Average PoseNet Distortion 0.38", 12, "Average PoseNet Distortion: <decimal>"),
    ("=== Evaluation results", "=== Evaluation results over six hundred samples ===", 11, "over N samples"),
    ("Compression Rate", "Compression ratio: 0.05979147", 16, "expected one of"),
])
def test_unknown_variant_is_one_line_naming_the_line_and_the_expectation(tmp_path, store, prefix, bad, line_no,
                                                                          expected):
    text = evaluator_report(0.38042614, 0.00946623, 2_244_900).decode().splitlines()
    i = next(i for i, ln in enumerate(text) if ln.strip().startswith(prefix))
    assert i + 1 == line_no
    text[i] = "  " + bad
    p = tmp_path / "report.txt"
    p.write_text("\n".join(text) + "\n")
    r = run_prov("adjudicate", p, store=store)
    lines = r.err.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.err
    assert f"line {line_no}" in lines[0] and expected in lines[0], lines[0]


def test_every_era_through_the_cli(tmp_path, store):
    archive = tmp_path / "archive.zip"
    archive.write_bytes(os.urandom(2_244_900))
    for era in ("current", "old-evaluator"):
        kw = ERAS[era]
        p = tmp_path / f"{era}.txt"
        p.write_bytes(evaluator_report(0.38042614499, 0.00946623499, 2_244_900, **kw))
        out = prov_json("adjudicate", p, "--archive", archive, store=store)
        assert all(c["ok"] for c in out["checks"]), (era, out["checks"])
        assert out["record"]["grade"] == "external"


# -- claims without bytes ---------------------------------------------------------------------------------

def test_claim_without_archive_is_recorded_external_with_archive_not_checked(tmp_path, store):
    p = tmp_path / "report.txt"
    p.write_bytes(evaluator_report(0.38042614, 0.00946623, 2_244_900))
    out = prov_json("adjudicate", p, store=store)
    rec = out["record"]
    assert rec["grade"] == "external" and rec["source"] == "imported-report" and "archive" not in rec
    arch = next(c for c in rec["checks"] if c["name"] == "archive_size_matches")
    assert arch["ok"] is False and arch["severity"] == "not-checked" and arch["detail"].startswith("not checked")
    assert "2,244,900" in arch["detail"]
    assert next(c for c in out["checks"] if c["name"] == "printed_score_agrees")["ok"]
    human = run_prov("adjudicate", p, store=store, check=0).out
    assert "[not checked] archive_size_matches" in human
    # the stored record reads back, and the ledger shows the claimed size
    rows = prov_json("ledger", "show", store=store)
    assert [r["archive_bytes"] for r in rows if r["record"] == out["digest"]["sha256"]] == [2_244_900]


def test_claim_without_archive_of_a_bad_run_is_invalid(tmp_path, store):
    p = tmp_path / "report.txt"
    p.write_bytes(evaluator_report(0.38, 0.0094, 2_244_900, samples=599))
    assert prov_json("adjudicate", p, store=store)["record"]["grade"] == "invalid"


def test_claim_without_archive_cannot_be_released(tmp_path, store):
    p = tmp_path / "report.txt"
    p.write_bytes(evaluator_report(0.38, 0.0094, 2_244_900))
    rec = prov_json("adjudicate", p, store=store)
    run_prov("key", "generate", "--out", tmp_path / "k", check=0)
    (tmp_path / "rt").mkdir()
    (tmp_path / "rt/inflate.sh").write_text("#!/bin/sh\n")
    a = tmp_path / "a.zip"
    a.write_bytes(b"x")
    r = run_prov("release", "create", "--record", rec["digest"]["sha256"], "--archive", a, "--runtime",
                 tmp_path / "rt", "--name", "claim", "--key", tmp_path / "k/key.pem", "--out", tmp_path / "m.json",
                 store=store)
    assert r.returncode == 1 and len(r.err.strip().splitlines()) == 1 and "not bound to an archive" in r.err


def test_schema_says_a_claim_has_no_archive_explicitly():
    from provenance.records.models import SCHEMA_DIR
    s = json.loads((SCHEMA_DIR / "eval-record.v1.json").read_text())
    assert "archive" not in s["required"]
    assert "not bound to an archive" in s["properties"]["archive"]["description"]
    assert s["if"] == {"not": {"required": ["archive"]}}
    assert s["then"]["properties"]["grade"] == {"enum": ["external", "invalid"]}
    assert "not-checked" in json.dumps(s["$defs"]["CheckResult"])


def test_model_refuses_an_archiveless_record_with_a_score_grade(tmp_path, store):
    from pydantic import ValidationError
    from provenance.records.models import EvalRecord
    p = tmp_path / "report.txt"
    p.write_bytes(evaluator_report(0.38, 0.0094, 2_244_900))
    rec = prov_json("adjudicate", p, store=store)["record"]
    for change in ({"grade": "A++"}, {"source": "replay"}):
        with pytest.raises(ValidationError, match="without an archive"):
            EvalRecord.model_validate({**rec, **change})


def test_claim_without_archive_can_be_the_expectation_of_a_replay(tmp_path, store):
    from provenance.replay.claims import expected_from
    p = tmp_path / "report.txt"
    p.write_bytes(evaluator_report(0.38042614, 0.00946623, 2_244_900))
    rec = prov_json("adjudicate", p, store=store)["record"]
    f = tmp_path / "claim.json"
    f.write_text(json.dumps(rec))
    exp = expected_from(f)
    assert exp["archive_sha256"] is None and exp["canonical_score"] == rec["result"]["canonical_score"]
