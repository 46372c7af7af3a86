"""What the notebook tells a reader beyond the index: the frontier card, a page per run, "why A
beat B" for each promotion, and a neighbourhood table per parent. Pure views over the ledger:
nothing here decides a grade or a verdict."""

from __future__ import annotations

import math

from provenance.lab import ledger

CUSTODY = "archive.zip -> inflate.sh -> upstream/evaluate.py"


def contributions(r: ledger.Run) -> dict[str, float]:
    """Each term of the score, in the evaluator's expression."""
    res = r.record.result
    return {"segnet": 100 * res.segnet, "posenet": math.sqrt(res.posenet * 10), "rate": 25 * res.rate}


def name_of(r: ledger.Run) -> str:
    return r.label or r.sha256[:12]


def run_href(sha256: str) -> str:
    return f"runs/{sha256[:16]}.html"


def comparisons(runs: list[ledger.Run]) -> list[dict]:
    """For each promotion over an earlier frontier: the components and bytes of both, with deltas."""
    by_sha = {r.sha256: r for r in runs}
    out = []
    for r in runs:
        prev = by_sha.get(r.previous_frontier or "")
        if r.verdict != "promote" or prev is None:
            continue
        a, b = r.record, prev.record
        ca, cb = contributions(r), contributions(prev)
        rows = [
            ("canonical score", repr(b.result.canonical_score), repr(a.result.canonical_score),
             f"{a.result.canonical_score - b.result.canonical_score:+.10g}"),
            ("archive bytes", f"{b.archive.size:,}", f"{a.archive.size:,}", f"{a.archive.size - b.archive.size:+,}"),
            ("PoseNet distortion", f"{b.result.posenet:.8f}", f"{a.result.posenet:.8f}",
             f"{a.result.posenet - b.result.posenet:+.8f}"),
            ("SegNet distortion", f"{b.result.segnet:.8f}", f"{a.result.segnet:.8f}",
             f"{a.result.segnet - b.result.segnet:+.8f}"),
            ("rate", f"{b.result.rate:.8f}", f"{a.result.rate:.8f}", f"{a.result.rate - b.result.rate:+.8f}"),
        ]
        for k, label in (("segnet", "100 x SegNet"), ("posenet", "sqrt(10 x PoseNet)"), ("rate", "25 x rate")):
            rows.append((f"score term {label}", f"{cb[k]:.6f}", f"{ca[k]:.6f}", f"{ca[k] - cb[k]:+.6f}"))
        deltas = {k: ca[k] - cb[k] for k in ca}
        gain = min(deltas, key=deltas.get)
        out.append({"winner": name_of(r), "loser": name_of(prev), "winner_href": run_href(r.sha256),
                    "loser_href": run_href(prev.sha256), "winner_score": a.result.canonical_score,
                    "loser_score": b.result.canonical_score, "rows": rows, "reason": r.reason,
                    "summary": (f"The largest gain came from the {gain} term ({deltas[gain]:+.6f}); "
                                f"bytes moved by {a.archive.size - b.archive.size:+,}.")})
    return out


def neighbourhoods(runs: list[ledger.Run]) -> list[dict]:
    """Per parent: each child's changed axis, score, bytes, deltas against the parent, verdict."""
    by_sha = {r.sha256: r for r in runs}
    groups: dict[str, list[ledger.Run]] = {}
    for r in runs:
        if r.parent in by_sha:
            groups.setdefault(r.parent, []).append(r)
    out = []
    for parent_sha, children in groups.items():
        p = by_sha[parent_sha]
        rows = [{"name": name_of(c), "href": run_href(c.sha256), "axis": c.axis or "", "score": repr(c.score),
                 "bytes": f"{c.archive_bytes:,}", "d_score": f"{c.score - p.score:+.6g}",
                 "d_bytes": f"{c.archive_bytes - p.archive_bytes:+,}", "verdict": c.verdict or ""}
                for c in children]
        out.append({"parent": name_of(p), "href": run_href(p.sha256), "score": repr(p.score),
                    "bytes": f"{p.archive_bytes:,}", "rows": rows})
    return out


def verify_commands(name: str | None, record_sha: str, profile: str) -> list[str]:
    rel = f"evidence/releases/{name}" if name else "evidence/releases/NAME"
    cmds = ["# in a clone of the repository (this bundle mirrors its evidence/releases/ and evidence/trust.json)"]
    if name:
        cmds.append(f"prov verify {rel}/manifest.json --trust evidence/trust.json "
                    f"--archive submissions/{name}/archive.zip --runtime submissions/{name}/runtime "
                    f"--record {rel}/record.json")
        upstream = ("evidence/miniature/upstream" if profile.startswith("comma-miniature")
                    else "<comma_video_compression_challenge checkout> --device cuda")
        cmds.append(f"prov replay --archive submissions/{name}/archive.zip --runtime submissions/{name}/runtime "
                    f"--upstream {upstream} --compare {rel}/manifest.json")
    cmds.append("# in this bundle: an exact record's name is its SHA-256")
    cmds.append(f"sha256sum evidence/records/{record_sha}.json")
    return cmds
