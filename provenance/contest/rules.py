"""The contest's rules: profiles, the score formula, the report parser, and the grade table.

Facts from CONTEST.md. Every record names the profile it was judged under, so the same
code adjudicates the official contest and the project's miniature contest.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from provenance.contest import profiles
from provenance.core.checks import NOT_CHECKED, Check
from provenance.core.errors import ProvError

# profiles (and the LFS pointers their pins may arrive as) live in contest.profiles, which verify
# imports alone; the rules judge reports under them
Profile, OFFICIAL = profiles.Profile, profiles.OFFICIAL
MAX_REPORT_BYTES = 1 << 20


ARTIFACT_BYTES = 1 << 20  # a runtime file this large that is not source text is flagged (custody)


# -- report.txt -----------------------------------------------------------------------------

class ReportError(ProvError):
    """A report.txt that does not follow the official format."""


RESULTS_HEAD = re.compile(r"^=== Evaluation results over (\d+) samples ===$")
RESULT_LINES = {  # key -> (regex of the line, how to read the value)
    "posenet": (re.compile(r"^Average PoseNet Distortion: (\S+)$"), "decimal"),
    "segnet": (re.compile(r"^Average SegNet Distortion: (\S+)$"), "decimal"),
    "archive_size": (re.compile(r"^Submission file size: ([\d,]+) bytes$"), "int"),
    "uncompressed_size": (re.compile(r"^Original uncompressed size: ([\d,]+) bytes$"), "int"),
    "rate": (re.compile(r"^Compression Rate: (\S+)$"), "decimal"),
    # current evaluators print √(...), some older ones sqrt(...)
    "score": (re.compile(r"^Final score: 100\*segnet_dist \+ (?:√|sqrt)\(10\*posenet_dist\) \+ 25\*rate = (\S+)$"),
              "decimal"),
}
EXPECTED = {  # what each result line must look like, for the one-line refusal (CONTEST.md, every era)
    "posenet": "Average PoseNet Distortion: <decimal>",
    "segnet": "Average SegNet Distortion: <decimal>",
    "archive_size": "Submission file size: <integer, digit grouping optional> bytes",
    "uncompressed_size": "Original uncompressed size: <integer, digit grouping optional> bytes",
    "rate": "Compression Rate: <decimal>",
    "score": "Final score: 100*segnet_dist + √(10*posenet_dist) + 25*rate = <decimal>  (or sqrt(...))",
}
LABELS = {"posenet": "Average PoseNet Distortion", "segnet": "Average SegNet Distortion",
          "archive_size": "Submission file size", "uncompressed_size": "Original uncompressed size",
          "rate": "Compression Rate", "score": "Final score"}
DECIMAL = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
GROUPED_INT = re.compile(r"^\d{1,3}(,\d{3})*$|^\d+$")


@dataclass(frozen=True)
class Report:
    samples: int
    posenet: float
    segnet: float
    rate: float
    archive_size: int
    uncompressed_size: int
    printed_score: str  # as printed: 2 decimals (current evaluators) or 8 (older ones)
    printed: dict  # every result value exactly as printed
    config: dict  # the config block, tolerated as free key: value lines


def _decimal(text: str, label: str, where: str) -> float:
    if not DECIMAL.match(text):
        raise ReportError(f"{where}: {label}: not a finite decimal number ({text!r})")
    try:
        value = float(Decimal(text))
    except InvalidOperation:
        raise ReportError(f"{where}: {label}: not a number ({text!r})") from None
    if not math.isfinite(value):
        raise ReportError(f"{where}: {label}: not finite ({text!r})")
    return value


def parse_report(data: bytes, where: str = "report.txt") -> Report:
    """Strict about the results block, tolerant of the config block; ReportError on anything else."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"{where}: larger than {MAX_REPORT_BYTES} bytes; not a report")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReportError(f"{where}: not UTF-8 (byte {e.start})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    heads = [i for i, ln in enumerate(lines) if ln.startswith("=== Evaluation results")]
    if not heads:
        raise ReportError(f"{where}: no '=== Evaluation results over N samples ===' line")
    if len(heads) > 1:
        raise ReportError(f"{where}: results block appears {len(heads)} times")
    m = RESULTS_HEAD.match(lines[heads[0]])
    if not m:
        raise ReportError(f"{where}: line {heads[0] + 1}: malformed results header {lines[heads[0]][:120]!r}: "
                          "expected '=== Evaluation results over N samples ==='")
    samples = int(m.group(1))
    config: dict[str, str] = {}
    for ln in lines[:heads[0]]:
        if ":" in ln and not ln.startswith("==="):
            k, v = ln.split(":", 1)
            config[k.strip()] = v.strip()
    found: dict[str, str] = {}
    for n, ln in enumerate(lines[heads[0] + 1:], heads[0] + 2):
        if not ln:
            continue
        for key, (rx, _) in RESULT_LINES.items():
            if ln.startswith(LABELS[key]):
                mm = rx.match(ln)
                if not mm:
                    raise ReportError(f"{where}: line {n}: malformed line {ln[:120]!r}: expected {EXPECTED[key]!r}")
                if key in found:
                    raise ReportError(f"{where}: line {n}: '{LABELS[key]}' appears twice")
                found[key] = mm.group(1)
                break
        else:
            raise ReportError(f"{where}: line {n}: unexpected line in the results block: {ln[:120]!r}; "
                              f"expected one of: {', '.join(LABELS.values())}")
    missing = [LABELS[k] for k in RESULT_LINES if k not in found]
    if missing:
        raise ReportError(f"{where}: missing result line(s): {', '.join(missing)}")
    vals: dict[str, float | int] = {}
    for key, (_, kind) in RESULT_LINES.items():
        if kind == "int":
            if not GROUPED_INT.match(found[key]):
                raise ReportError(f"{where}: {LABELS[key]}: badly grouped integer {found[key]!r}")
            vals[key] = int(found[key].replace(",", ""))
        else:
            vals[key] = _decimal(found[key], LABELS[key], where)
    for key in ("posenet", "segnet", "rate"):
        if vals[key] < 0:
            raise ReportError(f"{where}: {LABELS[key]} is negative ({found[key]})")
    if vals["uncompressed_size"] == 0:
        raise ReportError(f"{where}: Original uncompressed size is zero")
    return Report(samples, vals["posenet"], vals["segnet"], vals["rate"], vals["archive_size"],
                  vals["uncompressed_size"], found["score"], dict(found), config)


def read_report(path: str | Path) -> tuple[bytes, Report]:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_REPORT_BYTES:
            raise ReportError(f"{p}: larger than {MAX_REPORT_BYTES} bytes; not a report")
        data = p.read_bytes()
    except OSError as e:
        raise ProvError(f"{p}: {e.strerror}") from None
    return data, parse_report(data, str(p))


# -- adjudication checks ----------------------------------------------------------------------

def canonical_score(profile: Profile, r: Report) -> float:
    """From the printed 8-decimal components, in the evaluator's order (CONTEST.md)."""
    return profile.score(r.posenet, r.segnet, r.rate)


# Denominators seen in the wild, each a non-canonical environment with a known cause (CONTEST.md).
KNOWN_DENOMINATORS = {
    "comma-official-v1": {37_533_786: "the video before the upstream's remux commit: an older checkout"},
}


def _half_unit(printed: str) -> Decimal:
    """Half a unit in the last printed place: how far the printed value may be from what was rounded."""
    exp = Decimal(printed).as_tuple().exponent
    return Decimal(5).scaleb(exp - 1)


def score_rounding_bound(r: Report) -> Decimal:
    """How far an honest printed score may sit from the canonical one (docs/FORMATS.md).

    The evaluator sums *unrounded* components and rounds the sum once; the canonical score sums the
    printed (rounded) ones. Each printed component is within half a unit of its true value, so the
    sums differ by at most 100*h_seg + 25*h_rate + the largest change of sqrt(10*p) over p +- h_pose
    (sqrt is steep near 0, so that is evaluated, not linearised), plus the printed score's own half
    unit, plus a few ulps for the two IEEE evaluations."""
    from decimal import localcontext
    with localcontext() as ctx:
        ctx.prec = 40
        p, hp = Decimal(r.printed["posenet"]), _half_unit(r.printed["posenet"])
        lo, hi = max(p - hp, Decimal(0)), p + hp
        root = (10 * p).sqrt()
        pose = max((10 * hi).sqrt() - root, root - (10 * lo).sqrt())
        ulps = 8 * Decimal(math.ulp(abs(Profile.score(r.posenet, r.segnet, r.rate)) or 1.0))
        return (100 * _half_unit(r.printed["segnet"]) + 25 * _half_unit(r.printed["rate"]) + pose
                + _half_unit(r.printed_score) + ulps)


def check_report(profile: Profile, r: Report, archive_size: int | None) -> list[Check]:
    """`archive_size` None: a claim without its archive; the archive check is recorded as not checked."""
    score = canonical_score(profile, r)
    checks = []
    if archive_size is not None:
        checks.append(Check("archive_size_matches", r.archive_size == archive_size,
                            f"report says {r.archive_size:,} bytes, archive.zip has {archive_size:,}"))
    else:
        checks.append(Check("archive_size_matches", False, f"not checked: no archive given (the report claims "
                                                           f"{r.archive_size:,} bytes)", NOT_CHECKED))
    denom_ok = r.uncompressed_size == profile.uncompressed_size
    if denom_ok:
        detail = f"{r.uncompressed_size:,} bytes (canonical)"
    else:
        size = archive_size if archive_size is not None else r.archive_size
        canon_rate = size / profile.uncompressed_size
        moved = r.rate - canon_rate
        extra = r.uncompressed_size - profile.uncompressed_size
        cause = KNOWN_DENOMINATORS.get(profile.name, {}).get(r.uncompressed_size) or (
            f"{extra:+,} bytes: a stray file under videos/ (the evaluator sums every file there)" if extra > 0
            else f"{extra:+,} bytes: a different or truncated video")
        detail = (f"{r.uncompressed_size:,} bytes, canonical is {profile.uncompressed_size:,}: "
                  f"non-canonical environment ({cause}); rate moved by {moved:+.8f}, score by {25 * moved:+.8f}")
    checks.append(Check("uncompressed_size_canonical", denom_ok, detail, "flag"))
    checks.append(Check("samples", r.samples == profile.samples,
                        f"{r.samples} samples, profile expects {profile.samples}", "flag"))
    bound = score_rounding_bound(r)
    diff = abs(Decimal(r.printed_score) - Decimal(score))
    checks.append(Check("printed_score_agrees", diff <= bound,
                        f"printed {r.printed_score}, canonical {score!r}: they differ by {float(diff):.3g}, "
                        f"{'within' if diff <= bound else 'beyond'} the rounding bound {float(bound):.3g} "
                        "of the printed values", "flag"))
    size = r.archive_size
    expect_rate = f"{size / r.uncompressed_size:.8f}"
    checks.append(Check("printed_rate_agrees", expect_rate == r.printed["rate"],
                        f"printed {r.printed['rate']}, {size:,}/{r.uncompressed_size:,} = {expect_rate}", "flag"))
    return checks


# -- grades: one table, one function ------------------------------------------------------------

GRADE_TABLE = {
    # grade: (axis, allowed_use)
    "A++": ("official-environment", "frontier"),
    "A": ("cuda", "score; needs confirmation on the official GPU to promote"),
    "contest-CPU": ("cpu", "authoritative for the CPU axis; cannot promote"),
    "B": ("diagnostic", "diagnostic only"),
    "external": ("claimed", "context: a quoted score, not replayed here"),
    "invalid": ("none", "none"),
}


def grade(profile: Profile, *, source: str, device: str | None, gpu_model: str | None,
          samples: int, platform: str | None, custody_complete: bool, canonical_env: bool,
          sandboxed: bool = True, contradicted: bool = False,
          evaluator_pinned: bool | None = None, limits_kept: bool = True,
          custody_ok: bool = True) -> tuple[str, str, str]:
    """(grade, axis, allowed_use) from the facts. The only place grades are decided.
    An evaluator that differs from the profile's pin produces a report, never a score-bearing grade;
    so does a replay whose limits no kernel kept (a watchdog can be outrun), and a runtime that carries
    more information than the profile allows (the ground truth can hide in it)."""
    def out(g: str) -> tuple[str, str, str]:
        if (evaluator_pinned is False or not limits_kept or not custody_ok) and g in ("A++", "A", "contest-CPU"):
            g = "B"
        return (g, *GRADE_TABLE[g])

    if contradicted or samples != profile.samples or not canonical_env:
        return out("invalid")
    if source == "imported-report":
        return out("external")
    dev = (device or "").lower()
    plat = (platform or "").lower()
    if dev == "mps" or plat.startswith(("darwin", "macos")):
        return out("invalid")
    if dev.startswith("cuda"):
        if not custody_complete or not sandboxed:  # an unsandboxed replay is capped below A
            return out("B")
        official = profile.official_device == "cuda" and gpu_model and profile.official_gpu.lower() in gpu_model.lower()
        return out("A++" if official else "A")
    if dev == "cpu":
        linux_x86 = plat.startswith("linux") and ("x86_64" in plat or "amd64" in plat)
        if custody_complete and linux_x86 and sandboxed:
            return out("A++" if profile.official_device == "cpu" else "contest-CPU")
        return out("B" if custody_complete else "invalid")
    return out("invalid")


# -- the evaluator's identity and the runtime's custody ----------------------------------------

def check_evaluator(profile: Profile, root: str | Path) -> Check:
    """`evaluator_pinned`: every file the profile pins, with expected and seen digests where they differ."""
    from provenance.core.digest import hash_file
    if not profile.evaluator:
        return Check("evaluator_pinned", False, f"profile {profile.name} pins no evaluator", "flag")
    root, bad = Path(root), []
    for rel, size, sha in profile.evaluator:
        p = root / rel
        if not p.is_file():
            bad.append(f"{rel}: missing (expected sha256 {sha})")
            continue
        if profiles.is_lfs_pointer_file(p):
            bad.append(f"{rel}: a git-LFS pointer, not the file (run `git lfs pull`)")
            continue
        seen = hash_file(p).sha256
        if seen != sha and rel in profile.stand_ins:
            bad.append(f"{rel}: stand-in: not the pinned oid {sha} (seen {seen})")
        elif seen != sha:
            bad.append(f"{rel}: expected sha256 {sha}, seen {seen}")
    detail = "; ".join(bad) if bad else f"{len(profile.evaluator)} files match the evaluator {profile.name} pins"
    return Check("evaluator_pinned", not bad, detail, "flag")


def check_runtime_artifacts(total: int, files: int, large_binaries: list[tuple[str, int]]) -> Check:
    """`runtime_artifacts`: the contest counts networks and other large artifacts toward the archive,
    so a large file in the runtime tree that is not source text is flagged for a judge to see."""
    head = f"runtime tree holds {total:,} bytes in {files} file(s)"
    if not large_binaries:
        return Check("runtime_artifacts", True, f"{head}; no non-text file over {ARTIFACT_BYTES:,} bytes", "flag")
    listed = ", ".join(f"{n} ({s:,} bytes)" for n, s in large_binaries[:10])
    more = f" and {len(large_binaries) - 10} more" if len(large_binaries) > 10 else ""
    return Check("runtime_artifacts", False,
                 f"{head}; non-text files over {ARTIFACT_BYTES:,} bytes: {listed}{more} "
                 "(large artifacts must ship inside the archive)", "flag")


CUSTODY_COMPRESSOR = "zlib-9"  # the one pinned compressor: zlib level 9, one stream over the whole tree


def custody_check(profile: Profile, information: int, contributors: list[tuple[str, int]]) -> Check:
    """`runtime_custody`: a runtime above the profile's allowance cannot bear a score (the grade is capped
    at B), whatever encoding hides its payload; the figure and the largest contributors are named."""
    head = (f"runtime information {information:,} bytes ({CUSTODY_COMPRESSOR} of its canonical listing and "
            f"bytes), allowance {profile.custody_allowance:,}")
    if information <= profile.custody_allowance:
        return Check("runtime_custody", True, head, "flag")
    top = ", ".join(f"{n} ({s:,})" for n, s in contributors[:5])
    return Check("runtime_custody", False, f"{head}: over it, grade capped at B; largest: {top}", "flag")


def custody_adjusted_rate(profile: Profile, archive_size: int, information: int, uncompressed: int) -> float:
    """(archive + the runtime's information past the free part) / uncompressed size: the allowance is
    not free score. The canonical score keeps the official formula; the lab promotes by this."""
    return (archive_size + max(0, information - profile.custody_free)) / uncompressed


def is_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a character cut at the end of the sample
    return True
