"""The lab: pipeline steps (lab), the ledger, the frontier, the public site."""

from __future__ import annotations

import sys

import click

from provenance.cli.common import emit, json_option, open_store


@click.group()
def lab():
    """Pipeline steps that dvc.yaml runs; each touches only the paths it is given."""


@lab.command("replay")
@click.argument("name")
@click.option("--submissions", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--upstream", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--metrics", required=True, type=click.Path(dir_okay=False))
@click.option("--device", default="cpu", show_default=True)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: run it as a Ray task (cluster of RAY_ADDRESS, through the DVC remote); see prov batch.")
@click.option("--params", "params_path", type=click.Path(dir_okay=False, exists=True),
              help="With --engine ray: fan out every submission PARAMS lists at the first replay stage DVC runs; "
                   "the later stages take their results (DVC runs stages one at a time).")
@json_option
def lab_replay_cmd(name, submissions, upstream, out, metrics, device, engine, params_path, as_json):
    """Replay one submission into its own store (OUT/store) and record (OUT/record.json).

    \b
    Example:
      prov lab replay half --submissions submissions --upstream evidence/miniature/upstream --out evidence/replays/half --metrics evidence/metrics/half.json
    """
    from pathlib import Path
    from provenance.lab.fanout import lab_replay
    from provenance.lab.params import submissions_param
    fan_out = submissions_param(Path(params_path)) if params_path and engine == "ray" else None
    r = lab_replay(name, Path(submissions), Path(upstream), Path(out), Path(metrics), device, engine, fan_out=fan_out)
    emit(r, as_json, f"{name}: {r['canonical_score']!r} ({r['grade']}), record {r['record']}")


@lab.command("release")
@click.option("--params", "params_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="params.yaml: its `submissions` list, in order.")
@click.option("--replays", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--submissions", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--store-dir", required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--trust", "trust_path", required=True, type=click.Path(dir_okay=False))
@click.option("--keys", required=True, type=click.Path(file_okay=False), help="Lab keys (made on first run; keep out of git).")
@click.option("--plot", required=True, type=click.Path(dir_okay=False))
@json_option
def lab_release(params_path, replays, submissions, store_dir, out, trust_path, keys, plot, as_json):
    """Merge the replay stores, log every record, sign a release per submission with log proofs.

    \b
    Example:
      prov lab release --params params.yaml --replays evidence/replays --submissions submissions --store-dir evidence/store --out evidence/releases --trust evidence/trust.json --keys evidence/keys
    """
    from pathlib import Path
    from provenance.lab.params import submissions_param
    from provenance.lab.pipeline import release_all
    from provenance.lab.sweep import sweep_param
    rows = release_all(submissions_param(Path(params_path)), Path(replays), Path(submissions), Path(store_dir), Path(out),
                       Path(trust_path), Path(keys), Path(plot), sweep=sweep_param(Path(params_path)))
    emit(rows, as_json, "\n".join(f"released {r['name']}: {r['canonical_score']!r} ({r['grade']}), "
                                   f"statement {r['statement']}" for r in rows))


@lab.command("verify")
@click.option("--params", "params_path", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--releases", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--submissions", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--trust", "trust_path", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@json_option
def lab_verify(params_path, releases, submissions, trust_path, out, as_json):
    """prov verify every release against its files; exit 1 (failing the pipeline) on any failed check.

    \b
    Example:
      prov lab verify --params params.yaml --releases evidence/releases --submissions submissions --trust evidence/trust.json --out evidence/verify.json
    """
    from pathlib import Path
    from provenance.lab.params import submissions_param
    from provenance.lab.pipeline import verify_all
    ok = verify_all(submissions_param(Path(params_path)), Path(releases), Path(submissions), Path(trust_path), Path(out))
    emit({"ok": ok, "report": out}, as_json, f"{'all releases verified' if ok else 'VERIFICATION FAILED'} ({out})")
    if not ok:
        sys.exit(1)


@click.group()
def ledger():
    """Runs, verdicts and annotations: the lab notebook's ledger."""


def _run_row(r) -> dict:
    return {"record": r.sha256, "label": r.label, "track": r.track, "era": r.era, "notes": r.notes, "grade": r.grade,
            "canonical_score": r.score, "archive_bytes": r.archive_bytes,
            "source": r.source, "verdict": r.verdict, "reason": r.reason, "flags": r.flags,
            "parent": r.parent, "axis": r.axis}


@ledger.command("show")
@click.option("--limit", type=click.IntRange(min=1), help="Only the latest N runs (reads only those).")
@json_option
@click.pass_context
def ledger_show(ctx, as_json, limit=None):
    """Every run with its grade, score and verdict.

    \b
    Example:
      prov --store evidence/store ledger show --limit 20
    """
    from provenance.lab.ledger import runs
    rows = [_run_row(r) for r in runs(open_store(ctx), limit, write=False)]  # a reader writes nothing
    emit(rows, as_json, lambda: "\n".join(
        f"{r['record'][:12]}  {r['grade']:11} {r['canonical_score']!r:>22} {r['archive_bytes']:>10,}  "
        f"{(r['verdict'] or '-'):8} {r['label'] or ''}" for r in rows) or "no runs yet")


def _verdict(ctx, record, reason, action, as_json):
    from provenance.lab.ledger import verdict
    run, sha, flags = verdict(open_store(ctx), record, action, reason)
    emit({"record": run.sha256, "verdict": action, "verdict_record": sha, "flags": flags}, as_json,
         f"{action}d {run.sha256[:16]} ({run.grade}, {run.score!r})"
         + (f" [{'; '.join(flags)}]" if flags else ""))


@ledger.command("promote")
@click.argument("record")
@click.option("--reason", required=True)
@json_option
@click.pass_context
def ledger_promote(ctx, record, reason, as_json):
    """Promote a run to the frontier (only A++, or A flagged; only if it beats the frontier). Exit 1 if refused.

    \b
    Example:
      prov ledger promote RECORD --reason 'beats the frontier by 4.3 at 6,666 more bytes'
    """
    _verdict(ctx, record, reason, "promote", as_json)


@ledger.command("reject")
@click.argument("record")
@click.option("--reason", required=True)
@json_option
@click.pass_context
def ledger_reject(ctx, record, reason, as_json):
    """Record that a run was rejected, and why.

    \b
    Example:
      prov ledger reject RECORD --reason 'SegNet regressed'
    """
    _verdict(ctx, record, reason, "reject", as_json)


@ledger.command("annotate")
@click.argument("record")
@click.option("--label")
@click.option("--track")
@click.option("--notes")
@click.option("--parent", help="The run this one varies (digest or ref): it joins the parent's neighbourhood.")
@click.option("--axis", help="What it changed against its parent, e.g. 'crf 36 -> 30'.")
@click.option("--era", help="The chapter of the lab's story the run belongs to: the notebook groups tracks by it.")
@json_option
@click.pass_context
def ledger_annotate(ctx, record, label, track, notes, parent, axis, era, as_json):
    """Give a run a label, a track, notes, a parent, an axis and an era (stored and logged).

    \b
    Example:
      prov ledger annotate RECORD --label half_crf30 --parent RECORD_OF_HALF --axis 'crf 36 -> 30'
    """
    from provenance.lab.ledger import annotate
    sha = annotate(open_store(ctx), record, label, track, notes, parent=parent, axis=axis, era=era)
    emit({"note_record": sha}, as_json, sha)


@click.command("frontier")
@json_option
@click.pass_context
def frontier_cmd(ctx, as_json):
    """The best promoted run and its release.

    \b
    Example:
      prov --store evidence/store frontier --json
    """
    from provenance.lab.ledger import frontier, release_of
    store = open_store(ctx)
    r = frontier(store, write=False)  # a reader writes nothing: the rows are used when current
    if r is None:
        emit({"frontier": None}, as_json, "no frontier yet: promote an A++ run with prov ledger promote")
        return
    st = release_of(store, r.sha256)
    out = {"frontier": _run_row(r), "release": st["predicate"]["name"] if st else None}
    emit(out, as_json, f"frontier {r.score!r} ({r.grade}) {r.archive_bytes:,} bytes, record "
         f"{r.sha256}" + (f", release {out['release']}" if st else ""))


@click.group()
def site():
    """The public lab notebook: a sanitized static bundle."""


@site.command("build")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--releases", type=click.Path(file_okay=False, exists=True), help="Directory of release dirs to include.")
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False, exists=True), help="Trust policy to publish.")
@click.option("--cache", is_flag=True, help="Keep ledger rows and redacted table rows in the store's index, so a "
              "rebuild reads only what changed (without it, site build never writes the store).")
@json_option
@click.pass_context
def site_build(ctx, out, releases, trust_path, as_json, cache=False):
    """Generate the bundle; the hygiene scan is the last gate (exit 1 naming file, line and rule).

    \b
    Example:
      prov --store evidence/store site build --out site/ --releases evidence/releases --trust evidence/trust.json
    """
    from provenance.lab.site.build import build_site
    res = build_site(open_store(ctx), out, releases, trust_path, cache=cache)
    emit(res, as_json, f"built {res['out']}: {res['files']} files, {res['runs']} runs")


@site.command("check")
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@json_option
def site_check(bundle, as_json):
    """Re-scan a bundle with the hygiene rules and re-check its file manifest.

    \b
    Example:
      prov site check evidence/site
    """
    from provenance.lab.site.hygiene import check_site
    problems = check_site(bundle)
    emit({"ok": not problems, "problems": problems}, as_json, "\n".join(problems) or f"{bundle}: clean")
    if problems:
        sys.exit(1)


COMMANDS = [lab, ledger, frontier_cmd, site]
