"""The verifier's remembered state (TUF's trusted metadata on disk): the newest version and statement
of each release it verified, and the newest trust policy version a chain ended at. Rollback and fork
checks read it; the caller, not the appraisal, writes it."""

from __future__ import annotations

import os

from provenance.core.canonical import loads_tracking
from provenance.core.errors import ProvError, VerificationFailed
from provenance.core.files import write_json


def read_state(state: str) -> dict:
    """The state file's document ({} where there is none yet); refused when it is not one."""
    if not os.path.exists(state):
        return {}
    try:
        with open(state, "rb") as f:
            doc = loads_tracking(f.read())[0]
    except OSError as e:
        raise ProvError(f"{state}: unreadable verifier state ({e.strerror})") from None
    except ProvError as e:
        raise ProvError(f"{state}: unreadable verifier state ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("releases", {}), dict) or not all(
            isinstance(v, dict) and type(v.get("version")) is int and isinstance(v.get("statement_sha256"), str)
            for v in doc.get("releases", {}).values()):
        raise ProvError(f"{state}: not a verifier state file (releases: name -> version, statement_sha256)")
    return doc


def remember(state: str, pred: dict, digest: str) -> None:
    """Remember a verified release, unless a newer version of it was seen."""
    doc = read_state(state)
    rel = doc.setdefault("releases", {})
    cur = rel.get(pred["name"])
    if not cur or pred["version"] >= cur["version"]:
        rel[pred["name"]] = {"version": pred["version"], "statement_sha256": digest}
    write_json(state, doc)


def check_trust(state: str, trust) -> None:
    """Refuse a trust chain older than one this verifier walked before; remember the newest."""
    doc = read_state(state)
    seen = doc.get("trust", {}).get("version", 0)
    if trust.version < seen:
        raise VerificationFailed(f"rollback: trust chain ends at v{trust.version}, but v{seen} was seen before")
    if trust.version > seen:
        doc["trust"] = {"version": trust.version}
        write_json(state, doc)
