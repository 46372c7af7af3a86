"""The documents the house stores, known by the schema they name: each one's identifier, and the kind
a document's own bytes show (what `fsck --repair` restores when the index that knew it is gone).

Light on purpose (no pydantic): the repair and the ledger read it without loading the models."""

from __future__ import annotations

EVAL_RECORD_SCHEMA = "comma-lab/eval-record/v1"
VERDICT_SCHEMA = "comma-lab/verdict/v1"
NOTE_SCHEMA = "comma-lab/note/v1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"

# self-describing canonical documents: (field, value) -> kind
DOC_KINDS = {("schema", EVAL_RECORD_SCHEMA): "record", ("schema", VERDICT_SCHEMA): "verdict",
             ("schema", NOTE_SCHEMA): "note", ("_type", STATEMENT_TYPE): "statement"}


def kind_of(data: bytes) -> str | None:
    """The kind a stored object's bytes show: a canonical JSON document naming one of our schemas; else
    None (a blob like any other). Its caller bounds what it reads (fsck --repair: store.check.DOC_MAX)."""
    if not data.startswith(b"{"):
        return None
    from provenance.core import canonical
    try:
        doc = canonical.loads(data)
        if not isinstance(doc, dict) or canonical.dumps(doc) != data:
            return None
    except Exception:  # not a canonical document of ours: a blob like any other
        return None
    for (field, value), kind in DOC_KINDS.items():
        if doc.get(field) == value:
            return kind
    return None
