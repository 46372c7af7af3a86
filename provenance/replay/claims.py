"""The claim a replay is compared with (`prov replay --compare`): a release statement or an
EvalRecord, read into the fields both carry, and the verdict field by field."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from provenance.core.errors import ProvError
from provenance.records.kinds import EVAL_RECORD_SCHEMA

if TYPE_CHECKING:
    from provenance.records.models import EvalRecord

FIELDS = ("canonical_score", "posenet", "segnet", "rate", "samples", "archive_sha256", "runtime_sha256")


def expected_from(path: str | Path) -> dict:
    """The claim to compare with: a release manifest (its statement) or an EvalRecord."""
    from provenance.core import canonical
    doc = canonical.load_file(path)
    try:
        return _claim(doc, path)
    except (KeyError, TypeError, AttributeError) as e:  # well-formed JSON, not the document it says
        raise ProvError(f"{path}: not a whole release statement or EvalRecord "
                        f"({type(e).__name__}: {str(e)[:80]})") from None


def _claim(doc, path) -> dict:
    from provenance.records.envelope import statement_of, subject_digests
    if isinstance(doc, dict) and "payload" in doc:
        st = statement_of(doc, f"{path}: payload")
        p, subj = st["predicate"], subject_digests(st)
        if "archive.zip" not in subj or "runtime/" not in subj:
            raise ProvError(f"{path}: the release names no archive.zip or runtime/ subject")
        return {"canonical_score": p["score"]["canonical"], "posenet": p["score"]["posenet"],
                "segnet": p["score"]["segnet"], "rate": p["score"]["rate"], "samples": p["score"]["samples"],
                "archive_sha256": subj["archive.zip"][0], "runtime_sha256": subj["runtime/"][0]}
    if isinstance(doc, dict) and doc.get("schema") == EVAL_RECORD_SCHEMA:
        r = doc["result"]
        return {"canonical_score": r["canonical_score"], "posenet": r["posenet"], "segnet": r["segnet"],
                "rate": r["rate"], "samples": r["samples"], "archive_sha256": (doc.get("archive") or {}).get("sha256"),
                "runtime_sha256": (doc.get("runtime", {}).get("tree") or {}).get("sha256")}
    raise ProvError(f"{path}: neither a release manifest nor an EvalRecord")


def compare(record: EvalRecord, expected: dict) -> list[dict]:
    got = {"canonical_score": record.result.canonical_score, "posenet": record.result.posenet,
           "segnet": record.result.segnet, "rate": record.result.rate, "samples": record.result.samples,
           "archive_sha256": record.archive.sha256,
           "runtime_sha256": record.runtime.tree.sha256 if record.runtime.tree else None}
    return [{"field": f, "expected": expected.get(f), "replayed": got[f], "same": expected.get(f) == got[f]}
            for f in FIELDS]


def verdict(record: EvalRecord, expected: dict) -> tuple[str, list[dict]]:
    """("REPRODUCED" or "MISMATCH", the fields compared) of a replayed record against a claim."""
    diff = compare(record, expected)
    return ("REPRODUCED" if all(d["same"] for d in diff) else "MISMATCH"), diff
