"""The one shape of a check, from the contest's rules to the verifier's checklist."""

from __future__ import annotations

from provenance.core.frozen import Frozen

NOT_CHECKED = "not-checked"  # severity of a check that could not run (e.g. no archive given); ok is False


class Check(Frozen):
    __slots__ = ("name", "ok", "detail", "severity")

    def __init__(self, name: str, ok: bool, detail: str, severity: str = "error") -> None:
        # severity "error": contradicts the evidence; "flag": a softer finding; NOT_CHECKED
        self._init(locals())

    def as_dict(self) -> dict:
        """As a record stores it (records.models.CheckResult)."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "severity": self.severity}

    def brief(self) -> dict:
        """As a checklist prints it."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail}
