"""The last gate of the public bundle: hygiene rules kept as data (hygiene.json), a redaction
for machine paths in published records, and a scan that names file, line and rule."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

RULES_FILE = Path(__file__).parent / "hygiene.json"


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    rule: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.excerpt}"


@lru_cache(maxsize=None)
def rules() -> tuple[list[tuple[str, re.Pattern]], re.Pattern, str]:
    doc = json.loads(RULES_FILE.read_text())
    compiled = [(r["name"], re.compile(r["pattern"])) for r in doc["rules"]]
    return compiled, re.compile(doc["redact"]["pattern"]), doc["redact"]["placeholder"]


def redact(obj):
    """Machine paths in any string of a JSON value become a placeholder."""
    _, pattern, placeholder = rules()
    if isinstance(obj, str):
        return pattern.sub(placeholder, obj)
    if isinstance(obj, list):
        return [redact(x) for x in obj]
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    return obj


def scan_text(name: str, text: str) -> list[Violation]:
    out = []
    compiled, _, _ = rules()
    for n, line in enumerate(text.splitlines(), 1):
        for rule, rx in compiled:
            m = rx.search(line)
            if m:
                out.append(Violation(name, n, rule, m.group(0)[:60]))
    return out


def scan_dir(root: Path) -> list[Violation]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            data = p.read_bytes()
            out += scan_text(rel, data.decode("utf-8", "replace"))
    return out
