"""The sweep: params.yaml's `sweep` names, for each submission, the run it varies (its parent) and
the axis it changed. After the pipeline logs the replays, each run is annotated with its label,
track, parent and axis, then judged in params order by the one promotion rule
(`ledger.promotion`): a run that may set the frontier and beats it is promoted, every other run is
rejected with the rule's reason. Annotations and verdicts are stored and logged like any evidence,
so the log's signed checkpoints cover them."""

from __future__ import annotations

from pathlib import Path

from provenance.lab import ledger
from provenance.lab.params import load_params, submissions_param
from provenance.core.errors import ProvError
from provenance.records.models import load_record
from provenance.store.objects import Store

FIELDS = {"parent", "axis", "track", "notes", "era"}


def sweep_param(params: Path) -> dict[str, dict]:
    """params.yaml's `sweep` mapping (name -> {parent, axis, track, notes}); {} when absent."""
    names = submissions_param(params)
    doc = load_params(params)
    sweep = doc.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise ProvError(f"{params}: 'sweep' must map submission names to {{parent, axis, track, notes}}")
    for name, entry in sweep.items():
        where = f"{params}: sweep.{name}"
        if name not in names:
            raise ProvError(f"{where}: not in 'submissions'")
        if not isinstance(entry, dict) or set(entry) - FIELDS:
            raise ProvError(f"{where}: expected keys among {', '.join(sorted(FIELDS))}")
        if any(not isinstance(v, str) or not v.strip() for v in entry.values()):
            raise ProvError(f"{where}: values must be non-empty strings")
        parent = entry.get("parent")
        if parent is not None:
            if parent not in names or names.index(parent) >= names.index(name):
                raise ProvError(f"{where}: parent {parent!r} must be a submission listed before it")
            if "axis" not in entry:
                raise ProvError(f"{where}: a run with a parent names the axis it changed")
    return {k: dict(v) for k, v in sweep.items()}


def _reason(run: ledger.Run, current: ledger.Run | None, why: str) -> str:
    if "cannot set the frontier" in why:
        return why
    if current is None:
        return f"{why}: {run.score!r} under the rule (grade {run.record.grade}, {run.archive_bytes:,} bytes)"
    d_score = run.score - current.score
    d_bytes = run.archive_bytes - current.archive_bytes
    who = current.label or current.sha256[:12]
    return f"{why} {who} ({current.score!r}): delta score {d_score:+.6g}, delta bytes {d_bytes:+,}"


def judge(store: Store, names: list[str], sweep: dict[str, dict], replays: Path) -> list[dict]:
    """Annotate every run of the sweep, then promote or reject each, in order, by the rule."""
    sha = {n: load_record((replays / n / "record.json").read_bytes(), n).digest().sha256 for n in names}
    for n in names:
        e = sweep.get(n, {})
        ledger.annotate(store, sha[n], n, e.get("track"), e.get("notes"),
                        parent=sha[e["parent"]] if e.get("parent") else None, axis=e.get("axis"), era=e.get("era"))
    out = []
    for n in names:
        run = ledger.resolve_run(store, sha[n])
        current = ledger.frontier(store)
        ok, why, _ = ledger.promotion(run.record, current.record if current else None)
        action = "promote" if ok else "reject"
        if not ok and current is not None and "does not beat" in why:
            why = "does not beat the frontier"
        ledger.verdict(store, sha[n], action, _reason(run, current, why))
        out.append({"name": n, "record": sha[n], "verdict": action})
    return out
