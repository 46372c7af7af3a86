"""Records: adjudicate a report, import a v1 record."""

from __future__ import annotations

import sys

import click

from provenance.cli.common import json_option, open_store, record_out


def _profile_option(f):
    return click.option("--profile", "profile_name", default="comma-official-v1", show_default=True,
                        help="Contest profile whose rules apply.")(f)


@click.command()
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("--archive", type=click.Path(dir_okay=False),
              help="The archive.zip the report scores (without it: a claim not bound to an archive).")
@click.option("--runtime", type=click.Path(file_okay=False), help="The runtime tree (inflate.sh and friends).")
@click.option("--upstream", type=click.Path(file_okay=False), help="The upstream checkout it was evaluated with.")
@_profile_option
@json_option
@click.pass_context
def adjudicate(ctx, report, archive, runtime, upstream, profile_name, as_json):
    """Turn an official report.txt into a graded, stored EvalRecord.

    Not replayed here, so the grade is `external`. Without --archive the record is a claim
    not bound to an archive and its archive checks say "not checked". Exit 1 when the report
    contradicts the archive (size); softer findings are flagged with exit 0.

    \b
    Example:
      prov adjudicate report.txt --archive archive.zip --runtime runtime/ --json
    """
    from provenance.log.evidence import adjudicate
    record, digest, checks = adjudicate(lambda: open_store(ctx, create=True), report, archive, runtime, upstream,
                                        profile_name)
    record_out(record, digest, checks, as_json)
    if any(not c.ok and c.severity == "error" for c in checks):
        sys.exit(1)


@click.command("import-legacy")
@click.argument("record_file", type=click.Path(dir_okay=False))
@click.option("--archive", type=click.Path(dir_okay=False), help="archive.zip to compare (sha256, size).")
@click.option("--runtime", type=click.Path(file_okay=False), help="Runtime tree whose files are compared to the rows.")
@json_option
@click.pass_context
def import_legacy(ctx, record_file, archive, runtime, as_json):
    """Convert a comma-lab v1 contest_auth_eval.adjudicated.json into an EvalRecord.

    Recomputes the canonical score and the v1 runtime_tree_sha256; with --runtime and
    --archive compares the real bytes. Exit 1 when any check fails.

    \b
    Example:
      prov import-legacy v1-record.json --archive archive.zip --runtime runtime/
    """
    from provenance.log.evidence import import_legacy as import_v1
    record, digest, checks = import_v1(lambda: open_store(ctx, create=True), record_file, archive, runtime)
    record_out(record, digest, checks, as_json)
    if any(not c.ok and c.severity == "error" for c in checks):
        sys.exit(1)


COMMANDS = [adjudicate, import_legacy]
