"""Replay a submission in the sandbox; build the miniature contest."""

from __future__ import annotations

import sys

import click

from provenance.cli.common import emit, json_option, open_store, record_out


@click.command("replay")
@click.option("--archive", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--runtime", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--upstream", required=True,
              help="Upstream checkout (comma_video_compression_challenge, or a miniature's upstream/), stored "
                   "first (`prov upstream add`); or the digest or ref of a stored upstream.")
@click.option("--name", help="Submission name: placed at <upstream>/submissions/<name>/ (default: from --runtime).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--compare", "compare_path", type=click.Path(dir_okay=False, exists=True),
              help="manifest.json or record.json to reproduce: prints REPRODUCED or MISMATCH (exit 1).")
@click.option("--no-sandbox", is_flag=True, help="Run without bubblewrap; recorded, and the grade is capped below A.")
@click.option("--timeout", type=float, default=1800.0, show_default=True, help="Wall-clock limit per phase (s).")
@click.option("--mem-limit", type=int, default=16 << 30, show_default=True,
              help="Address-space limit per process in bytes (ignored with --device cuda).")
@click.option("--memory", type=int, default=16 << 30, show_default=True,
              help="Memory cap in bytes for all processes of a phase together, plus its /tmp.")
@click.option("--tmp-size", type=int, default=2 << 30, show_default=True, help="Size cap of each phase's /tmp (bytes).")
@click.option("--write-margin", type=int, default=64 << 20, show_default=True,
              help="Bytes inflate may write beyond the unzipped archive and the expected .raw outputs.")
@click.option("--max-expand", type=int, default=16 << 30, show_default=True,
              help="Total bytes archive.zip may expand to at intake.")
@click.option("--keep-scratch", is_flag=True, help="Keep the scratch directory for inspection.")
@click.option("--python", "python_path", type=click.Path(exists=True),
              help="The Python inflate and evaluate run: a venv built from the upstream's own dependencies "
                   "(`prov upstream env`) or its bin/python. Default: the Python prov runs in.")
@json_option
@click.pass_context
def replay_cmd(ctx, archive, runtime, upstream, name, device, compare_path, no_sandbox, timeout, mem_limit,
           memory, tmp_size, write_margin, max_expand, keep_scratch, python_path, as_json):
    """Recompute the score of ARCHIVE + RUNTIME with the upstream evaluator, sandboxed.

    Inflate runs without the ground truth and the scorer weights in sight; evaluate runs with
    the submission read-only; the evaluator is checked against the profile's pinned digests.

    Exit 0 on a record (and REPRODUCED), 1 when the submission fails or MISMATCHes, or a stored
    object is corrupt, 2 on bad input (a refused archive among it), 3 when bubblewrap is missing.

    Example: prov replay --archive submissions/half/archive.zip --runtime submissions/half/runtime
    --upstream evidence/miniature/upstream --python evidence/miniature-env
    """
    from provenance.log.evidence import replay
    from provenance.replay import intake
    from provenance.replay.claims import expected_from, verdict
    from provenance.replay.interpreter import Interpreter
    from provenance.replay.limits import Limits
    python = Interpreter.at(python_path) if python_path else None
    expected = expected_from(compare_path) if compare_path else None
    store = open_store(ctx, create=True)
    tty = sys.stderr.isatty()
    say = (lambda m: click.echo(f"replay: {m}", err=True)) if tty and not as_json else None
    limits = Limits(timeout=timeout, address_space=None if device == "cuda" else mem_limit, memory=memory,
                    tmp_size=tmp_size, write_margin=write_margin)
    res = replay(store, archive, runtime, upstream, name, device, not no_sandbox, limits, say,
                 keep_scratch=keep_scratch, intake_limits=intake.IntakeLimits(max_total_bytes=max_expand), python=python)
    said, diff = verdict(res.record, expected) if expected else (None, None)
    if as_json:
        out = {"record": res.record.to_json_obj(), "digest": {"sha256": res.digest.sha256, "blake3": res.digest.blake3},
               "checks": [c.brief() for c in res.checks]}
        if diff is not None:
            out["compare"] = {"verdict": said, "fields": diff}
        emit(out, True)
    else:
        record_out(res.record, res.digest, res.checks, False)
        if diff is not None:
            click.echo(said)
            for d in diff:
                if not d["same"]:
                    click.echo(f"  {d['field']}: expected {d['expected']!r}, replayed {d['replayed']!r}")
    if said == "MISMATCH":
        sys.exit(1)


@click.group()
def miniature():
    """The bundled miniature contest (tests and the demo run on it)."""


@miniature.command("build")
@click.argument("dest", type=click.Path(file_okay=False))
@json_option
def miniature_build(dest, as_json):
    """Generate the miniature contest into DEST (deterministic: same bytes on every machine).

    \b
    Example:
      prov miniature build mini/
    """
    from provenance.lab.miniature.build import build
    from provenance.core.tree import walk
    from provenance.core.digest import hash_file
    out = build(dest)
    d = walk(out, lambda p, s: hash_file(p))
    emit({"dest": str(out), "sha256": d.sha256, "blake3": d.blake3}, as_json,
         f"built {out} (tree sha256 {d.sha256})")


@click.group("upstream")
def upstream_group():
    """The evaluator as evidence: a replay runs only the upstream the store holds."""


@upstream_group.command("add")
@click.argument("checkout", type=click.Path(file_okay=False, exists=True))
@click.option("--commit", help="Store this commit's blobs (default HEAD, whose tracked files must be unmodified).")
@click.option("--ref", "ref_name", help="Also point this ref at the stored upstream (e.g. upstream/official).")
@json_option
@click.pass_context
def upstream_add(ctx, checkout, commit, ref_name, as_json):
    """Store the evaluator of CHECKOUT: the blobs of its commit, git-LFS files resolved and checked
    against their pointers (or kept as "pointer only"); never .git, __pycache__, *.pyc or *.pth.
    A folder without git gives the files its profile lists.

    Exit 0 stored, 1 an LFS object that is not what its pointer names, 2 bad input (a modified
    tracked file among it).

    Example: prov upstream add ../comma_video_compression_challenge --ref upstream/official
    """
    from provenance.replay.upstream import add
    store = open_store(ctx, create=True)
    up = add(store, checkout, commit)
    if ref_name:
        store.set_ref(ref_name, up.digest.blake3)
    pointers = [p for p, s in up.lfs.items() if s == "pointer only"]
    emit(up.as_json(), as_json, f"stored upstream {up.digest.sha256} ({len(up.files)} files"
         + (f", commit {up.commit}" if up.commit else "") + (f"; LFS pointer only: {', '.join(pointers)}" if pointers
                                                           else "") + ")")


@upstream_group.command("env")
@click.argument("upstream")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the venv (new or empty).")
@click.option("--group", default="cpu", show_default=True,
              help="The upstream's dependency group to install beside its dependencies (cpu, cu126, ...).")
@click.option("--pin", "pins", multiple=True, metavar="NAME==VERSION",
              help="Install this version of a package, whatever the upstream asks (repeatable).")
@click.option("--base-python", type=click.Path(dir_okay=False, exists=True),
              help="The interpreter the venv is made from (default: the one under prov's own).")
@json_option
@click.pass_context
def upstream_env(ctx, upstream, out, group, pins, base_python, as_json):
    """Build the upstream's own Python in OUT: a venv with the dependencies its pyproject.toml declares
    (and GROUP's), nothing of comma-lab; replay with it by `prov replay --python OUT`.

    UPSTREAM is a checkout (stored first) or the digest or ref of a stored upstream. Where the upstream
    leaves torch or torchvision unpinned, the versions this machine's index holds apply (torch 2.14.1,
    torchvision 0.29.1: CUDA builds, which run on CPU). OUT/prov-env.json names what was installed.

    Exit 0 built, 2 bad input, 3 when pip cannot install (nothing is left in OUT).

    Example: prov upstream env ../comma_video_compression_challenge --out ../official-env --group cpu
    """
    from provenance.replay.upstream_env import build, parse_pins
    store = open_store(ctx, create=True)
    say = (lambda m: click.echo(f"env: {m}", err=True)) if not as_json else (lambda m: None)
    doc = build(store, upstream, out, group, parse_pins(pins), base_python, say)
    emit(doc, as_json, f"built {out}: Python {doc['python']}, {len(doc['packages'])} packages "
         f"({', '.join(f'{k} {v}' for k, v in doc['packages'].items() if k in ('torch', 'torchvision', 'numpy', 'av'))})")


COMMANDS = [replay_cmd, miniature, upstream_group]
