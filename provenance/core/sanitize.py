"""The last gate of the public bundle: hygiene rules kept as data (hygiene.json), a redaction of
what can be redacted (records, annotations, import-legacy's fields), and a scan that names file,
line and rule and fails the build on the rest.

Leaks hide in encodings, so text is normalised before it is judged: zero-width characters go,
and HTML entities, \\uXXXX, JSON \\/ and URL %XX escapes are decoded; a token split across two
lines is seen by joining adjacent lines."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

RULES_FILE = Path(__file__).parent / "hygiene.json"
WITHHELD = "${REDACTED}"  # a string whose leak survives per-rule redaction (e.g. split across lines)

ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"))
_U_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    rule: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.excerpt}"


@dataclass(frozen=True)
class Rule:
    name: str
    rx: re.Pattern
    placeholder: str
    scope: str  # "line" or "text"
    requires: tuple[str, ...]  # every match holds one of these (empty: no gate)
    base64_line: int = 0  # every match holds a line that ends (before spaces, tabs) in this many base64 chars


@lru_cache(maxsize=None)
def rules() -> tuple[list[tuple[str, re.Pattern]], re.Pattern, str]:
    doc = json.loads(RULES_FILE.read_text())
    compiled = [(r["name"], re.compile(r["pattern"])) for r in doc["rules"]]
    return compiled, re.compile(doc["redact"]["pattern"]), doc["redact"]["placeholder"]


@lru_cache(maxsize=None)
def _rules() -> tuple[Rule, ...]:
    doc = json.loads(RULES_FILE.read_text())
    return tuple(Rule(r["name"], re.compile(r["pattern"]), r.get("redact", WITHHELD), r.get("scope", "line"),
                      tuple(r.get("requires", ())), r.get("requires_base64_line", 0)) for r in doc["rules"])


@lru_cache(maxsize=None)
def _literals() -> frozenset[str]:
    return frozenset(lit for r in _rules() for lit in r.requires)


@lru_cache(maxsize=None)
def _any_literal():
    """One pass that says whether any gate literal occurs (RE2 runs a DFA: ten times quicker than
    a `in` per literal on a page; only where none occurs is the per-literal check skipped)."""
    try:
        import re2
    except ImportError:  # the same result, a literal at a time
        return None
    return re2.compile(b"|".join(re.escape(lit.encode("utf-8", "surrogatepass")) for lit in sorted(_literals())))


@lru_cache(maxsize=None)
def _literal_rx() -> re.Pattern:
    """Whether a short string holds a gate literal: one alternation (4x a `in` per literal there)."""
    return re.compile("|".join(re.escape(lit) for lit in sorted(_literals())))


def _found_literals(hay: str) -> set[str]:
    rx = _any_literal()  # on bytes: normalised text can hold lone surrogates (%E9, \ud800), which RE2's str refuses
    if rx is not None and rx.search(hay.encode("utf-8", "surrogatepass")) is None:
        return set()
    return {lit for lit in _literals() if lit in hay}


# base64 characters become 'a' and a newline stays, any other byte '.'; spaces and tabs go: a line
# ending in n base64 characters shows as n 'a's and a newline (the gate of `requires_base64_line`).
# Bytes: str.translate leaves its fast path on the first non-ASCII character.
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_MAP = bytes(b"a"[0] if c in _B64 else c if c == 10 else b"."[0] for c in range(256))


def _may_match(r: Rule, found: set[str], whole: str, mapped: list[bytes]) -> bool:
    """False only where the rule cannot match: none of its literals, or no base64 line it needs."""
    if r.requires and not found.intersection(r.requires):
        return False
    if r.base64_line:
        if not mapped:
            mapped.append(whole.encode("utf-8", "surrogatepass").translate(_B64_MAP, b" \t"))
        return b"a" * r.base64_line + b"\n" in mapped[0]
    return True


# normalize() changes text only through '&' and these: a line without them is its own normal form
_DECODES = "%\\\\" + "".join(map(chr, ZERO_WIDTH))
_NOT_ENTITY = re.compile(f"[{_DECODES}]")


def _decodes(s: str, entities: bool = True) -> bool:
    """Whether s holds '&' (unless not `entities`) or a character of _DECODES, at memchr speed:
    every zero-width character is outside ASCII, and isascii() is free."""
    return ((entities and "&" in s) or "%" in s or "\\" in s
            or (not s.isascii() and _NOT_ENTITY.search(s) is not None))
# a string without these holds one line (for splitlines()) and decodes to itself
_MAY_CHANGE = re.compile(f"[&{_DECODES}\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# where two adjacent lines meet when joined (scan_text's split check): gates look across these
_LINE_JOIN = re.compile(r"\\?\s*\n\s*")


def normalize(text: str) -> str:
    """Decode the forms that hide a leak from a plain pattern (to a fixpoint: double encodings too)."""
    for _ in range(4):
        before = text
        text = text.translate(ZERO_WIDTH)
        text = _U_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
        text = text.replace("\\/", "/")
        if "&" in text:
            text = html.unescape(text)
        if "%" in text:
            text = unquote(text, errors="surrogateescape")
        if text == before:
            break
    return text.translate(ZERO_WIDTH)


def _normalize_line(line: str) -> str:
    """normalize(line), quicker for a line whose only trigger is '&' (HTML entities, in every page):
    when one unescape leaves no trigger, normalize's next round would change nothing."""
    if not _decodes(line, entities=False):
        text = html.unescape(line)
        if not _decodes(text):
            return text
    return normalize(line)


def _normal_lines(text: str) -> list[str]:
    """The text's lines, each normalised: in one unescape of the whole text where '&' is its only
    trigger and a second would change nothing (entities never span a line: the same as line by line)."""
    lines = text.splitlines()
    if not _decodes(text):
        return lines
    if not _decodes(text, entities=False):
        whole = html.unescape("\n".join(lines))
        if (not _decodes(whole, entities=False) and whole.count("\n") == len(lines) - 1
                and ("&" not in whole or html.unescape(whole) == whole)):  # normalize's fixpoint
            return whole.split("\n")
    return [_normalize_line(ln) if _decodes(ln) else ln for ln in lines]


def _glued(whole: str, lines: list[str]) -> str:
    """_LINE_JOIN.sub("", whole), from the lines: each loses the whitespace where it meets the next
    (and a backslash right before it). A line that normalisation split again takes the regex."""
    if len(lines) < 2 or whole.count("\n") != len(lines) - 1:
        return _LINE_JOIN.sub("", whole)
    parts = [ln.strip() for ln in lines]
    parts[0], parts[-1] = lines[0].rstrip(), lines[-1].lstrip()
    if "\\" in whole:
        parts[:-1] = [p[:-1] if p.endswith("\\") else p for p in parts[:-1]]
    return "".join(parts)


def _excerpt(s: str) -> str:
    return s[:60].encode("unicode_escape").decode("ascii")


def scan_text(name: str, text: str) -> list[Violation]:
    out: dict[tuple[int, str], Violation] = {}

    def hit(n: int, rule: str, s: str, how: str = "") -> None:
        shown = s if rule.startswith("local-path") else s[:6] + "..."  # never echo a secret into a build log
        out.setdefault((n, rule), Violation(name, n, rule + how, _excerpt(shown)))

    lines = _normal_lines(text)
    whole = "\n".join(lines)
    found = _found_literals(whole + "\0" + _glued(whole, lines))  # lines as they are, and glued where they meet
    mapped: list[bytes] = []
    active = [r for r in _rules() if _may_match(r, found, whole, mapped)]  # others cannot match
    line_rules = [r for r in active if r.scope == "line"]
    for n, line in enumerate(lines if line_rules else (), 1):
        for r in line_rules:
            m = r.rx.search(line)
            if m:
                hit(n, r.name, m.group(0))
    for n in range(len(lines) - 1 if line_rules else 0):  # a token split across two lines
        a = lines[n].rstrip()
        a = a[:-1] if a.endswith("\\") else a
        joined = a + lines[n + 1].lstrip()
        for r in line_rules:
            for m in r.rx.finditer(joined):
                if m.start() < len(a) < m.end():
                    hit(n + 1, r.name, m.group(0), " (split across lines)")
                    break
    for r in active:
        if r.scope == "text":
            for m in r.rx.finditer(whole):
                hit(whole.count("\n", 0, m.start()) + 1, r.name, m.group(0))
    return sorted(out.values(), key=lambda v: (v.line, v.rule))


@lru_cache(maxsize=1 << 16)  # a site repeats keys and values (grades, sources, field names) thousands of times
def redact_text(s: str) -> str:
    """Every rule's matches become its placeholder, and absolute paths ${LOCAL_PATH}. The decoded form
    is published where decoding reveals a leak; a leak that survives (split across lines) withholds
    the whole string."""
    if (not _MAY_CHANGE.search(s) and not _literal_rx().search(s)
            and not any(r.rx.search(s) for r in _rules() if not r.requires) and not rules()[1].search(s)):
        return s  # labels, grades, numbers, relative links: no rule, redaction or decoding touches them
    return _redact_text(s)


def _redact_text(s: str) -> str:
    decoded = normalize(s)
    if decoded != s and scan_text("", decoded):
        s = decoded
    for r in _rules():
        s = r.rx.sub(r.placeholder, s)
    _, pattern, placeholder = rules()
    s = pattern.sub(placeholder, s)
    return WITHHELD if scan_text("", s) else s


_JSON_STRING = re.compile(r'"([^"]*)"')


def json_untouched(text: str) -> bool:
    """True where redact(json.loads(text)) == json.loads(text) is sure without building either: a
    JSON text without a backslash holds each string (key or value) as a quoted run of itself,
    checked once however often it recurs. False: redact the value to know."""
    return "\\" not in text and all(redact_text(s) == s for s in set(_JSON_STRING.findall(text)))


def redact(obj):
    """Redact every string of a JSON value, keys included."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, list):
        return [redact(x) for x in obj]
    if isinstance(obj, dict):
        return {redact_text(k) if isinstance(k, str) else k: redact(v) for k, v in obj.items()}
    return obj


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(data: bytes) -> str:
    """The text a PNG carries (tEXt, zTXt, iTXt chunks): pixels are not text, and scanning them as
    text finds 'paths' in noise. A malformed PNG is scanned whole, as text."""
    import struct
    import zlib
    out, pos = [], len(PNG_SIGNATURE)
    try:
        while pos + 12 <= len(data):
            n, kind = struct.unpack(">I4s", data[pos:pos + 8])
            body = data[pos + 8:pos + 8 + n]
            if len(body) != n:
                raise ValueError("truncated chunk")
            if kind == b"tEXt":
                out.append(body.decode("latin-1"))
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out.append(key.decode("latin-1") + " " + zlib.decompress(rest[1:]).decode("latin-1"))
            elif kind == b"iTXt":
                out.append(body.decode("utf-8", "replace"))
            pos += 12 + n
    except (ValueError, zlib.error, struct.error):
        return data.decode("utf-8", "replace")
    return "\n".join(out)


def scan_dir(root: Path) -> list[Violation]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            data = p.read_bytes()
            text = png_text(data) if data.startswith(PNG_SIGNATURE) else data.decode("utf-8", "replace")
            out += scan_text(rel, text)
    return out
