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

from .errors import ProvError

MAX_REPORT_BYTES = 1 << 20


@dataclass(frozen=True)
class Profile:
    name: str
    uncompressed_size: int  # canonical denominator of the rate
    samples: int
    official_gpu: str  # the GPU whose CUDA replays may set the frontier
    frames: int
    width: int
    height: int
    # the environment whose exact, sandboxed replay is the top grade: "cuda" (on official_gpu) for the
    # real contest; "cpu" (Linux x86_64) for a profile meant to be replayed on any lab machine
    official_device: str = "cuda"
    preview_frames: tuple[int, ...] = (0, 600, 1199)  # frames a replay keeps as PNG illustrations

    @property
    def official_environment(self) -> str:
        return f"CUDA on a {self.official_gpu}" if self.official_device == "cuda" else "CPU on Linux x86_64"

    @staticmethod
    def score(posenet: float, segnet: float, rate: float) -> float:
        # exactly evaluate.py's expression and order, in IEEE doubles
        return 100 * segnet + math.sqrt(posenet * 10) + 25 * rate


OFFICIAL = Profile("comma-official-v1", 37_545_489, 600, "Tesla T4", 1200, 1164, 874)
PROFILES = {OFFICIAL.name: OFFICIAL}


def register(profile: Profile) -> Profile:
    PROFILES[profile.name] = profile
    return profile


def get_profile(name: str) -> Profile:
    if name not in PROFILES and name.startswith("comma-miniature"):
        from . import miniature  # noqa: F401  (registers its profile; light: no torch or av)
    try:
        return PROFILES[name]
    except KeyError:
        raise ProvError(f"unknown contest profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None


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
    "score": (re.compile(r"^Final score: 100\*segnet_dist \+ √\(10\*posenet_dist\) \+ 25\*rate = (\S+)$"), "decimal"),
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
    printed_score: str  # as printed (2 decimals)
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
        raise ReportError(f"{where}: malformed results header: {lines[heads[0]]!r}")
    samples = int(m.group(1))
    config: dict[str, str] = {}
    for ln in lines[:heads[0]]:
        if ":" in ln and not ln.startswith("==="):
            k, v = ln.split(":", 1)
            config[k.strip()] = v.strip()
    found: dict[str, str] = {}
    for ln in lines[heads[0] + 1:]:
        if not ln:
            continue
        for key, (rx, _) in RESULT_LINES.items():
            if ln.startswith(LABELS[key]):
                mm = rx.match(ln)
                if not mm:
                    raise ReportError(f"{where}: malformed line: {ln!r}")
                if key in found:
                    raise ReportError(f"{where}: '{LABELS[key]}' appears twice")
                found[key] = mm.group(1)
                break
        else:
            raise ReportError(f"{where}: unexpected line in the results block: {ln!r}")
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

@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    severity: str = "error"  # "error": contradicts the evidence; "flag": a softer finding

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "severity": self.severity}


def canonical_score(profile: Profile, r: Report) -> float:
    """From the printed 8-decimal components, in the evaluator's order (CONTEST.md)."""
    return profile.score(r.posenet, r.segnet, r.rate)


def check_report(profile: Profile, r: Report, archive_size: int | None) -> list[Check]:
    score = canonical_score(profile, r)
    checks = []
    if archive_size is not None:
        checks.append(Check("archive_size_matches", r.archive_size == archive_size,
                            f"report says {r.archive_size:,} bytes, archive.zip has {archive_size:,}"))
    denom_ok = r.uncompressed_size == profile.uncompressed_size
    if denom_ok:
        detail = f"{r.uncompressed_size:,} bytes (canonical)"
    else:
        size = archive_size if archive_size is not None else r.archive_size
        canon_rate = size / profile.uncompressed_size
        moved = r.rate - canon_rate
        detail = (f"{r.uncompressed_size:,} bytes, canonical is {profile.uncompressed_size:,}: "
                  f"non-canonical environment; rate moved by {moved:+.8f}, score by {25 * moved:+.8f}")
    checks.append(Check("uncompressed_size_canonical", denom_ok, detail, "flag"))
    checks.append(Check("samples", r.samples == profile.samples,
                        f"{r.samples} samples, profile expects {profile.samples}", "flag"))
    shown = f"{score:.2f}"
    checks.append(Check("printed_score_agrees", shown == r.printed_score,
                        f"printed {r.printed_score}, canonical {score!r} shows as {shown}", "flag"))
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
          sandboxed: bool = True, contradicted: bool = False) -> tuple[str, str, str]:
    """(grade, axis, allowed_use) from the facts. The only place grades are decided."""
    def out(g: str) -> tuple[str, str, str]:
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
