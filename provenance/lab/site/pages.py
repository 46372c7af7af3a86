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


OFF_SCALE = 2.5  # a score above this many times the median (and 5 above it) is off the plots' scale
TURN = 0.01  # a promotion is a turning point when it moves the frontier by more than this share of its score
TERMS = {"segnet": "the SegNet term (100 x SegNet)", "posenet": "the PoseNet term (sqrt(10 x PoseNet))",
         "rate": "the rate term (25 x rate)"}


def off_scale(runs) -> list:
    """Runs whose score would stretch a plot's axis until the operating range cannot be read (a
    failed reconstruction near 100 beside runs near 1): kept in the ledger, named beside the plot,
    drawn outside its range. Fewer than three runs have no scale to be off."""
    scores = sorted(r.score for r in runs)
    if len(scores) < 3:
        return []
    mid = scores[len(scores) // 2]
    return [r for r in runs if r.score > max(OFF_SCALE * mid, mid + 5)]


def why(r: ledger.Run, ref: ledger.Run | None) -> str:
    """One line from the components: which term moved most against `ref`, by how much, and at
    what cost in bytes (or, with no reference, what the score is made of)."""
    c = contributions(r)
    if ref is None:
        big = max(c, key=c.get)
        return (f"At {r.archive_bytes:,} bytes, mostly {TERMS[big]} ({c[big]:.4g}); "
                f"the other terms {sum(v for k, v in c.items() if k != big):.4g}")
    old = contributions(ref)
    moved = max(c, key=lambda k: abs(c[k] - old[k]))
    return (f"{TERMS[moved][0].upper()}{TERMS[moved][1:]} {old[moved]:.4g} -> {c[moved]:.4g} "
            f"({c[moved] - old[moved]:+.4g}), bytes {r.archive_bytes - ref.archive_bytes:+,}")


def turning_points(runs: list[ledger.Run]) -> list[dict]:
    """The story, in the order it happened: the first frontier, each promotion that moved the
    frontier by more than TURN of its score, each failure (a run off the plots' scale, or graded
    invalid) and each repair (a later run on scale again, varying a failed one). Each with its
    delta against what it was judged against and a one-line why."""
    by_sha = {r.sha256: r for r in runs}
    off = {r.sha256 for r in off_scale(runs)}
    failed: set[str] = set()
    out = []
    for r in runs:
        prev = by_sha.get(r.previous_frontier or "")
        parent = by_sha.get(r.parent or "")
        if r.sha256 in off or r.grade == "invalid":
            failed.add(r.sha256)
            kind, ref = "failure", parent or prev
        elif parent is not None and parent.sha256 in failed:
            kind, ref = "repair", parent
        elif r.verdict == "promote" and prev is None:
            kind, ref = "baseline", None
        elif r.verdict == "promote" and prev.score - r.score > TURN * prev.score:
            kind, ref = "promotion", prev
        else:
            continue
        out.append({"kind": kind, "name": name_of(r), "href": run_href(r.sha256), "score": r.score,
                    "delta": None if ref is None else f"{r.score - ref.score:+.6g}",
                    "against": None if ref is None else name_of(ref), "why": why(r, ref),
                    "notes": r.notes, "off_scale": r.sha256 in off})
    return out


def tracks(runs: list[ledger.Run]) -> list[dict]:
    """Runs grouped by the ledger's era (where annotated, in the order eras began) and track (best
    first), each group with its best and its history in order."""
    groups: dict[tuple[str, str], list[ledger.Run]] = {}
    eras: dict[str, int] = {}
    for r in runs:
        era = r.era or ""
        eras.setdefault(era, len(eras))
        groups.setdefault((era, r.track or "untracked"), []).append(r)
    out = []
    for (era, name), rs in sorted(groups.items(), key=lambda kv: (eras[kv[0][0]], min(r.score for r in kv[1]))):
        best = min(rs, key=lambda r: r.score)
        out.append({"era": era, "name": name, "best": name_of(best), "best_href": run_href(best.sha256),
                    "best_score": best.score,
                    "history": [{"name": name_of(r), "href": run_href(r.sha256), "score": r.score,
                                 "verdict": r.verdict or ""} for r in rs]})
    return out


def outcome(front: ledger.Run | None, runs: list[ledger.Run], environment: str | None) -> str:
    """The outcome in plain words, from the evidence (the index's "Start here")."""
    n = len(runs)
    told = (f"{n} measured runs: {sum(r.verdict == 'promote' for r in runs)} promoted, "
            f"{sum(r.verdict == 'reject' for r in runs)} rejected.")
    if front is None:
        return f"No run has set a frontier yet. {told}"
    c = contributions(front)
    big = max(c, key=c.get)
    return (f"The frontier is {name_of(front)}: canonical score {front.score!r}, graded {front.grade} on "
            f"{environment}, from an archive of {front.archive_bytes:,} bytes. {told} The score adds "
            f"100 x SegNet distortion, sqrt(10 x PoseNet distortion) and 25 x rate (archive bytes over the "
            f"original video's); lower is better. At the frontier the largest part is {TERMS[big]}: "
            f"{c[big]:.4g} of {front.score:.4g}.")


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
