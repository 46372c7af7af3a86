"""The `prov` command line: parse, call the library, print. Heavy imports stay inside commands."""

from __future__ import annotations

import os
import sys

import click

from provenance.core.errors import ProvError


from provenance.cli.common import _passphrase, emit, json_option, open_store  # noqa: E402  (shared with cli_extra, cli_batch)


def _error(text: str) -> None:
    """One line, whatever the input it quotes holds."""
    click.echo("prov: error: " + text.replace("\r", "\\r").replace("\n", "\\n"), err=True)


class Cli(click.Group):
    """Turn our errors into one line and the documented exit code."""

    def parse_args(self, ctx, args):
        if ctx.parent is None:  # `prov verify ... --store DIR` means the same as `prov --store DIR verify ...`
            from provenance.cli.extra import hoist_store
            args = hoist_store(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ProvError as e:
            _error(str(e))
            sys.exit(e.exit_code)
        except BrokenPipeError:
            sys.exit(1)
        except OSError as e:  # a filesystem failure we did not anticipate: still one line
            from provenance.core.faults import os_error_code
            where = f"{e.filename}: " if e.filename else ""
            _error(f"{where}{e.strerror or e}")
            sys.exit(os_error_code(e))
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors print their usage, exit 2
        except Exception as e:  # never a traceback (faults.py maps what we know; the rest is a bug)
            from provenance.core.faults import one_line
            code, line = one_line(e, ctx)
            _error(line)
            sys.exit(code)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_path", envvar="PROV_STORE", type=click.Path(file_okay=False),
              help="Store directory (default: evidence/store in the repository; env PROV_STORE).")
@click.version_option(package_name="comma-lab", prog_name="prov")
@click.pass_context
def cli(ctx, store_path):
    """comma-lab provenance: a content-addressed evidence store for the comma.ai
    video compression challenge.

    Every blob is addressed by SHA-256 (what the world quotes) and BLAKE3 (fast);
    directories are prov-tree-v1 Merkle trees. Exit codes: 0 ok, 1 verification
    failed, 2 bad input or usage, 3 missing environment.
    """
    ctx.obj = {"store": store_path}


# -- store commands -------------------------------------------------------------------------

def _digest_out(kind: str, d) -> dict:
    return {"kind": kind, **d.as_dict()}


def _print_digest(path, out) -> str:
    return f"{out['kind']}  {path}\n  sha256 {out['sha256']}\n  blake3 {out['blake3']}\n  size   {out['size']}"


@cli.command("hash")
@click.argument("path", type=click.Path(exists=False))
@click.option("--allow-unsafe-links", is_flag=True, help="Accept absolute or escaping symlinks.")
@json_option
def hash_cmd(path, allow_unsafe_links, as_json):
    """Print the digests of a file or directory tree; store nothing.

    \b
    Example:
      prov hash runtime/ --json
    """
    import stat as st_
    from provenance.core.digest import hash_file
    from provenance.core.progress import Progress
    from provenance.core import tree
    try:
        st = os.lstat(path)
    except OSError as e:
        raise ProvError(f"{path}: {e.strerror}") from None
    with Progress(f"hashing {path}", st.st_size if st_.S_ISREG(st.st_mode) else None) as prog:
        if st_.S_ISREG(st.st_mode):
            try:
                out = _digest_out("file", hash_file(path, prog))
            except OSError as e:
                raise ProvError(f"{path}: cannot read file ({e.strerror})") from None
        elif st_.S_ISDIR(st.st_mode):
            def file_digest(p, s):
                try:
                    return hash_file(p, prog)
                except OSError as e:
                    raise tree.TreeError(f"{os.fsdecode(p)}: cannot read file ({e.strerror})") from None
            out = _digest_out("tree", tree.walk(path, file_digest, allow_unsafe_links=allow_unsafe_links))
        else:
            raise ProvError(f"{path}: not a regular file or directory")
    emit(out, as_json, lambda: _print_digest(path, out))


@cli.command()
@click.argument("path", type=click.Path(exists=False))
@click.option("--ref", "ref_name", help="Also point this ref at the result.")
@click.option("--allow-unsafe-links", is_flag=True, help="Accept absolute or escaping symlinks.")
@json_option
@click.pass_context
def add(ctx, path, ref_name, allow_unsafe_links, as_json):
    """Store a file or directory tree byte-exactly and print its digests.

    \b
    Example:
      prov add archive.zip --ref submissions/mine/archive --store evidence/store
    """
    from provenance.core.progress import Progress
    if not os.path.lexists(path):
        raise ProvError(f"{path}: no such file or directory")
    store = open_store(ctx, create=True)
    with store.writing():  # object and ref land before gc may look (Store.writing)
        with Progress(f"adding {path}", os.path.getsize(path) if os.path.isfile(path) else None) as prog:
            kind, d = store.add(path, prog, allow_unsafe_links)
        if ref_name:
            store.set_ref(ref_name, d.blake3)
    out = _digest_out(kind, d)
    emit(out, as_json, lambda: _print_digest(path, out))


@cli.command()
@click.argument("digest")
@json_option
@click.pass_context
def cat(ctx, digest, as_json):
    """Write a stored object's bytes to stdout (sha256 or blake3, unique prefix, or ref).

    With --json: the object's digests and its bytes in base64."""
    from provenance.core.digest import CHUNK
    store = open_store(ctx)
    info = store.resolve(digest)
    if as_json:
        import base64
        with store.open_verified(info.blake3) as f:
            emit({**info.as_dict(), "content_base64": base64.b64encode(f.read()).decode()}, True)
        return
    out = sys.stdout.buffer
    store.verify_object(info.blake3)  # stdout cannot be taken back: check before the first byte
    with store.open_verified(info.blake3) as f:  # and again as it streams: the last bytes withheld
        while chunk := f.read(CHUNK):
            out.write(chunk)
    out.flush()


@cli.command()
@click.argument("digest")
@json_option
@click.pass_context
def ls(ctx, digest, as_json):
    """List the entries of a stored tree."""
    store = open_store(ctx)
    info = store.resolve(digest)
    if info.kind != "tree":
        raise ProvError(f"{digest}: not a tree (it is a {info.kind})")
    rows = store.ls(info.blake3)
    emit({"tree": info.as_dict(), "entries": rows}, as_json,
         lambda: "\n".join(f"{r['kind']:4}  {r['size']:>12}  {r['sha256'][:16]}  {r['name']}" for r in rows))


@cli.command()
@click.argument("digest")
@click.argument("dest", type=click.Path())
@json_option
@click.pass_context
def export(ctx, digest, dest, as_json):
    """Materialize a stored tree as a new directory DEST (bytes, exec bits, symlinks)."""
    store = open_store(ctx)
    info = store.resolve(digest)
    store.export(info.blake3, dest)
    emit({"exported": info.as_dict(), "dest": dest}, as_json, f"exported {info.sha256} to {dest}")


@cli.group()
def ref():
    """Named pointers to objects (e.g. releases/<name>), updated with compare-and-swap."""


@ref.command("set")
@click.argument("name")
@click.argument("digest")
@click.option("--expect", help="Only update if the ref now points here (blake3; '' = must not exist).")
@json_option
@click.pass_context
def ref_set(ctx, name, digest, expect, as_json):
    """Point NAME at an object; with --expect, only if it still points where you last saw it."""
    store = open_store(ctx)
    info = store.resolve(digest)
    if expect:
        expect = store.resolve(expect).blake3
    store.set_ref(name, info.blake3, expect)
    emit({"name": name, "target": info.as_dict()}, as_json, f"{name} -> {info.blake3}")


@ref.command("get")
@click.argument("name")
@json_option
@click.pass_context
def ref_get(ctx, name, as_json):
    """Print the object a ref points at."""
    store = open_store(ctx)
    target = store.get_ref(name)
    if target is None:
        raise ProvError(f"ref {name}: not set")
    info = store.info(target)
    emit({"name": name, "target": info.as_dict() if info else {"blake3": target}}, as_json, target)


@ref.command("list")
@json_option
@click.pass_context
def ref_list(ctx, as_json):
    """List every ref and its target."""
    store = open_store(ctx)
    refs = store.list_refs()
    emit([{"name": n, "blake3": t} for n, t in refs], as_json, "\n".join(f"{t}  {n}" for n, t in refs))


@ref.command("delete")
@click.argument("name")
@click.option("--expect", help="Only delete if the ref now points here.")
@json_option
@click.pass_context
def ref_delete(ctx, name, expect, as_json):
    """Remove a ref (the objects stay until gc)."""
    store = open_store(ctx)
    store.delete_ref(name, store.resolve(expect).blake3 if expect else None)
    emit({"deleted": name}, as_json, f"deleted {name}")


@cli.command()
@click.option("--repair", is_flag=True, help="Rebuild index.sqlite from the objects; list what was lost.")
@click.option("--ack-repair", is_flag=True, help="After a repair lost refs and you set them again: let gc run.")
@json_option
@click.pass_context
def fsck(ctx, repair, ack_repair, as_json):
    """Re-hash every object and cross-check the index (SQLite integrity, schema), trees and refs.
    Exit 1 on any fault, naming how to recover."""
    from pathlib import Path
    from provenance.core.progress import Progress
    from provenance.log.translog import repair_store
    from provenance.store import check
    from provenance.store.objects import default_store_path
    root = Path(ctx.obj["store"]) if ctx.obj["store"] else default_store_path()
    if not (root / "index.sqlite").exists() and not (root / "objects").is_dir():
        raise ProvError(f"{root}: no store here")
    if ack_repair:
        store = open_store(ctx)
        with store.transaction() as db:
            db.execute("DELETE FROM store_meta WHERE key='refs_lost'")
    with Progress("checking") as prog:
        report = repair_store(root, prog) if repair else check.fsck(root, prog)
    if repair:
        emit(report, as_json, lambda: "\n".join(
            [f"error: {e}" for e in report["errors"]] + [f"lost: {x}" for x in report["lost"]]
            + [f"index rebuilt from {report['objects']} objects (damaged index kept as {report['damaged_index']}); "
               f"kinds from content {report['inferred_kinds']}, {report['refs_recovered']} ref(s) and "
               f"{report['log_size']} log leaves recovered"]))
        if not report["ok"]:
            sys.exit(1)
        return
    emit(report, as_json, lambda: "\n".join(
        [f"error: {e}" for e in report["errors"]] + [f"note: {n}" for n in report["notes"]]
        + [f"{report['objects']} objects checked: {'ok' if report['ok'] else 'FAILED'}"]))
    if not report["ok"]:
        sys.exit(1)


@cli.command()
@click.option("--grace", type=float, default=3600.0, show_default=True,
              help="Also keep what objects added or re-added within this many seconds reach (an add not yet under a ref).")
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
@json_option
@click.pass_context
def gc(ctx, grace, dry_run, as_json):
    """Remove objects unreachable from any ref."""
    store = open_store(ctx)
    report = store.gc(grace, dry_run)
    emit(report, as_json, f"{'would remove' if dry_run else 'removed'} {report['removed']} object(s)")


# -- records --------------------------------------------------------------------------------

def _record_out(record, digest, checks, as_json: bool) -> None:
    out = {"record": record.to_json_obj(), "digest": {"sha256": digest.sha256, "blake3": digest.blake3},
           "checks": [c.brief() for c in checks]}

    def human() -> str:
        r = record.result
        lines = [f"record  {digest.sha256}  (blake3 {digest.blake3[:16]})",
                 f"score   {r.canonical_score!r}  (printed {r.printed_score}; profile {record.profile})",
                 f"        posenet {r.posenet!r}  segnet {r.segnet!r}  rate {r.rate!r}  samples {r.samples}",
                 f"grade   {record.grade}  axis {record.axis}: {record.allowed_use}"]
        lines += [f"  [{'ok' if c.ok else 'FAIL' if c.severity == 'error' else 'not checked' if c.severity == 'not-checked' else 'flag'}] {c.name}: {c.detail}"
                  for c in checks]
        return "\n".join(lines)
    emit(out, as_json, human)


def _profile_option(f):
    return click.option("--profile", "profile_name", default="comma-official-v1", show_default=True,
                        help="Contest profile whose rules apply.")(f)


@cli.command()
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
    from provenance.contest import get_profile
    from provenance.log.translog import log_object
    from provenance.records.adjudicate import adjudicate_report
    for p in (report, archive):
        if p is not None and not os.path.exists(p):
            raise ProvError(f"{p}: no such file")
    profile = get_profile(profile_name)
    store = open_store(ctx, create=True)
    record, digest, checks = adjudicate_report(store, report, archive, runtime, upstream, profile)
    log_object(store, digest.blake3)
    _record_out(record, digest, checks, as_json)
    if any(not c.ok and c.severity == "error" for c in checks):
        sys.exit(1)


@cli.command("import-legacy")
@click.argument("record_file", type=click.Path(dir_okay=False))
@click.option("--archive", type=click.Path(dir_okay=False), help="archive.zip to compare (sha256, size).")
@click.option("--runtime", type=click.Path(file_okay=False), help="Runtime tree whose files are compared to the rows.")
@json_option
@click.pass_context
def import_legacy(ctx, record_file, archive, runtime, as_json):
    """Convert a comma-lab v1 contest_auth_eval.adjudicated.json into an EvalRecord.

    Recomputes the canonical score and the v1 runtime_tree_sha256; with --runtime and
    --archive compares the real bytes. Exit 1 when any check fails.
    """
    from provenance.log.translog import log_object
    from provenance.records import legacy
    for p in (record_file, archive):
        if p and not os.path.exists(p):
            raise ProvError(f"{p}: no such file")
    store = open_store(ctx, create=True)
    record, digest, checks = legacy.import_legacy(store, record_file, archive, runtime)
    log_object(store, digest.blake3)
    _record_out(record, digest, checks, as_json)
    if any(not c.ok and c.severity == "error" for c in checks):
        sys.exit(1)


# -- keys, trust, releases, verification ------------------------------------------------------



@cli.group()
def key():
    """Ed25519 signing keys."""


@key.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for key.pem (private, 0600) and key.pub.pem.")
@_passphrase
@json_option
def key_generate(out_dir, passphrase_file, as_json):
    """Generate an Ed25519 key pair; never overwrites an existing key."""
    from provenance.core.signing import generate_key
    priv, pub, kid = generate_key(out_dir, passphrase_file)
    emit({"private_key": str(priv), "public_key": str(pub), "keyid": kid}, as_json,
         f"keyid {kid}\n  private {priv} (keep it secret)\n  public  {pub}")


@cli.group()
def trust():
    """Trust policies: the keys a judge pins."""


@trust.command("init")
@click.option("--release-key", "release_keys", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Public key allowed to sign releases (repeat for k of n).")
@click.option("--threshold", type=int, default=1, show_default=True, help="Distinct release keys required.")
@click.option("--log-key", "log_keys", multiple=True, type=click.Path(dir_okay=False),
              help="Public key allowed to sign log checkpoints.")
@click.option("--expires", required=True, help="RFC 3339 time after which the policy is void.")
@click.option("--version", "version", type=int, default=1, show_default=True)
@click.option("--root-key", "root_keys", multiple=True, type=click.Path(dir_okay=False),
              help="Public key allowed to sign the next policy version (default: the release keys).")
@click.option("--root-threshold", type=int, default=1, show_default=True, help="Distinct root keys required.")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@json_option
def trust_init(release_keys, threshold, log_keys, expires, version, root_keys, root_threshold, out, as_json):
    """Write a trust policy JSON file.

    \b
    Example:
      prov trust init --release-key a/key.pub.pem --release-key b/key.pub.pem --threshold 2 \\
                      --log-key log/key.pub.pem --expires 2027-12-31T00:00:00Z --out trust.json
    """
    from provenance.core.files import write_json
    from provenance.release.trust import trust_policy
    policy = trust_policy(list(release_keys), threshold, list(log_keys), expires, version, list(root_keys),
                          root_threshold)
    write_json(out, policy.model_dump(mode="json", by_alias=True, exclude_none=True))
    emit({"out": out, "keys": sorted(k.keyid for k in policy.keys.values()), "threshold": threshold}, as_json,
         f"wrote {out}: {len(policy.keys)} key(s), release threshold {threshold}")


from provenance.cli.extra import trust_rotate, trust_allowed_signers  # noqa: E402
trust.add_command(trust_rotate)
trust.add_command(trust_allowed_signers)


@cli.group()
def release():
    """Signed release manifests (in-toto Statement in a DSSE envelope)."""


@release.command("create")
@click.option("--record", "record_ref", required=True, help="EvalRecord digest (or ref) in the store, or a record file.")
@click.option("--archive", required=True, type=click.Path(dir_okay=False))
@click.option("--runtime", required=True, type=click.Path(file_okay=False))
@click.option("--name", required=True, help="Release name; versions count up per name.")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Private key (key.pem).")
@_passphrase
@click.option("--expires", help="RFC 3339 time after which the release is void.")
@click.option("--log-key", "log_key", type=click.Path(dir_okay=False),
              help="Log key: checkpoint the evidence log and embed the statement's proofs.")
@click.option("--since", "since_path", type=click.Path(dir_okay=False),
              help="A checkpoint a verifier holds: also embed the log's consistency proof from it.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write manifest.json.")
@json_option
@click.pass_context
def release_create(ctx, record_ref, archive, runtime, name, key_path, passphrase_file, expires, log_key, out,
                   as_json, since_path=None):
    """Bind archive bytes, runtime tree and score in a signed manifest.

    Refuses (exit 1) when the record's digests do not match the files given.

    \b
    Example:
      prov release create --record REC_SHA256 --archive archive.zip --runtime runtime/ \\
                          --name mysub --key keys/key.pem --out manifest.json
    """
    from provenance.core.files import write_json
    from provenance.release.create import create_release
    for p in (archive, runtime, key_path, since_path):
        if p and not os.path.exists(p):
            raise ProvError(f"{p}: no such file or directory")
    since_note = None
    if since_path:
        if not log_key:
            raise ProvError("--since needs --log-key (it is a proof about the evidence log)")
        from provenance.log.logbook import read_note
        since_note = read_note(since_path)
    if expires:
        from provenance.core.clock import parse_time
        parse_time(expires, "--expires")
    store = open_store(ctx, create=True)
    env, stmt = create_release(store, record_ref, archive, runtime, name, key_path, passphrase_file, expires,
                               log_key, since_note=since_note)
    write_json(out, env)
    from provenance.records.envelope import statement_of
    pred = statement_of(env)["predicate"]
    emit({"manifest": out, "statement": {"sha256": stmt.sha256, "blake3": stmt.blake3},
          "name": name, "version": pred["version"]}, as_json,
         f"wrote {out}: release {name} v{pred['version']}, score {pred['score']['canonical']!r} "
         f"({pred['grade']}), statement {stmt.sha256}")


@release.command("sign")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False))
@_passphrase
@json_option
def release_sign(manifest, key_path, passphrase_file, as_json):
    """Add a co-signature to an existing manifest (in place, atomically)."""
    from provenance.core.files import write_json
    from provenance.release.create import cosign
    from provenance.records.envelope import read_envelope
    env, _ = read_envelope(manifest)
    out = cosign(env, key_path, passphrase_file)
    write_json(manifest, out)
    emit({"manifest": manifest, "signatures": len(out["signatures"])}, as_json,
         f"{manifest}: now {len(out['signatures'])} signature(s)")


@cli.command("export-checksums")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--runtime", required=True, type=click.Path(file_okay=False))
@click.option("--archive", type=click.Path(dir_okay=False), help="Where archive.zip lies (default: OUT/archive.zip).")
@click.option("--out", "out_dir", default=".", type=click.Path(file_okay=False), show_default=True)
@json_option
def export_checksums(manifest, runtime, archive, out_dir, as_json):
    """Write the judge's files: SHA256SUMS, B3SUMS, statement.json(.sig) and tree_digest.py.

    Names are `archive.zip` and `runtime/...`: run the stock tools in a folder holding both.

    \b
    Example:
      prov export-checksums manifest.json --runtime runtime/ --archive archive.zip --out release/
      cd judge/ && sha256sum -c SHA256SUMS && b3sum -c B3SUMS && python3 tree_digest.py --check statement.json
    """
    from provenance.release.create import write_judge_files as run
    from provenance.records.envelope import read_envelope
    env, _ = read_envelope(manifest)
    files = [str(f) for f in run(env, runtime, out_dir, archive)]
    emit({"written": files}, as_json, "\n".join(f"wrote {f}" for f in files))


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False), help="Trust policy JSON you pinned.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="Or: a single trusted public key.")
@click.option("--log-key", "log_key_path", type=click.Path(dir_okay=False),
              help="With --key: the public key trusted to sign log checkpoints.")
@click.option("--key-signs-log", is_flag=True,
              help="With --key: the release key also signs the log's checkpoints (else a checkpoint needs --log-key).")
@click.option("--archive", type=click.Path(dir_okay=False), help="archive.zip to check against the release.")
@click.option("--runtime", type=click.Path(file_okay=False), help="Runtime tree to re-hash and check.")
@click.option("--record", type=click.Path(dir_okay=False), help="EvalRecord file to check against the release.")
@click.option("--at", "at_time", help="Judge validity at this RFC 3339 time (default: now).")
@click.option("--state", type=click.Path(dir_okay=False), help="File remembering versions seen (rollback check).")
@click.option("--since", "since_path", type=click.Path(dir_okay=False),
              help="A log checkpoint you saw before: check the log only grew since.")
@click.option("--no-files", is_flag=True, help="Check signatures and score only; say so (files NOT checked).")
@click.option("--trust-chain", "chain_dir", type=click.Path(file_okay=False),
              help="Directory of later trust policy versions (N.trust.json): walk from the pinned --trust.")
@json_option
def verify(manifest, trust_path, key_path, log_key_path, archive, runtime, record, at_time, state, since_path,
           no_files, chain_dir, as_json, key_signs_log=False):
    """Verify a release manifest offline. Exit 0 all checks pass, 1 any failed, 2 bad input.

    \b
    Example:
      prov verify manifest.json --trust trust.json --archive archive.zip --runtime runtime/
    """
    from provenance.cli.verify_cmd import run
    sys.exit(run(manifest, trust_path, key_path, log_key_path, archive, runtime, record, at_time, state, since_path,
                 no_files, chain_dir, as_json, key_signs_log))


# -- the evidence log ---------------------------------------------------------------------------

@cli.group("log")
def log_group():
    """The append-only evidence log (RFC 9162 Merkle tree, C2SP signed checkpoints)."""


def _hex(hs) -> list[str]:
    return [h.hex() for h in hs]


@log_group.command("append")
@click.argument("digest")
@json_option
@click.pass_context
def log_append(ctx, digest, as_json):
    """Append a stored object (record, statement, verdict...) to the log; idempotent."""
    from provenance.log.translog import log_object, open_log
    store = open_store(ctx)
    info = store.resolve(digest)
    index, new = log_object(store, info.blake3)
    emit({"index": index, "appended": new, "size": open_log(store).size(), "object": info.as_dict()}, as_json,
         f"{'appended' if new else 'already logged'}: {info.kind} {info.sha256} at index {index}")


@log_group.command("checkpoint")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Log signing key.")
@_passphrase
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the checkpoint note here.")
@json_option
@click.pass_context
def log_checkpoint(ctx, key_path, passphrase_file, out, as_json):
    """Sign a checkpoint (origin, size, root) of the log as it is now."""
    from provenance.log.logbook import checkpoint
    from provenance.core.signing import load_private
    store = open_store(ctx)
    note = checkpoint(store, load_private(key_path, passphrase_file))
    if out:
        from provenance.core.files import write_atomic
        write_atomic(out, note.encode())
    from provenance.log.translog import parse_checkpoint
    cp = parse_checkpoint(note)
    emit({"origin": cp.origin, "size": cp.size, "root": cp.root.hex(), "note": note}, as_json, note.rstrip("\n"))


@log_group.command("prove")
@click.argument("digest")
@click.option("--size", type=int, help="Tree size to prove against (default: the whole log).")
@json_option
@click.pass_context
def log_prove(ctx, digest, size, as_json):
    """Inclusion proof of a logged object."""
    from provenance.log.translog import open_log
    from provenance.log.translog import entry_bytes, leaf_hash, verify_inclusion
    store = open_store(ctx)
    info = store.resolve(digest)
    log = open_log(store)
    for kind in (info.kind, *info.kinds):  # logged as whichever kind it was stored as
        leaf = leaf_hash(entry_bytes(kind, info.sha256, info.blake3))
        index = log.index_of(leaf)
        if index is not None:
            break
    if index is None:
        raise ProvError(f"{digest}: not in the log (prov log append it first)")
    size = log.size() if size is None else size
    if not index < size <= log.size():
        raise ProvError(f"--size {size}: must be above the leaf's index {index} and at most {log.size()}")
    proof, root = log.inclusion_proof(index, size), log.root(size)
    verify_inclusion(leaf, index, size, proof, root)
    emit({"index": index, "size": size, "leaf_hash": leaf.hex(), "root": root.hex(), "proof": _hex(proof)},
         as_json, f"leaf {index} of {size}, root {root.hex()}\n" + "\n".join(_hex(proof)))


@log_group.command("consistency")
@click.argument("old", type=click.Path(dir_okay=False, exists=True))
@click.argument("new", type=click.Path(dir_okay=False, exists=True))
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False), help="Also check both signatures.")
@json_option
@click.pass_context
def log_consistency(ctx, old, new, trust_path, as_json):
    """Prove from the store's log that checkpoint NEW extends checkpoint OLD."""
    from provenance.log.logbook import read_note
    from provenance.log.translog import open_log, parse_checkpoint, verify_checkpoint, verify_consistency
    notes = [read_note(old), read_note(new)]
    if trust_path:
        from provenance.release.trust import load_trust
        t = load_trust(trust_path, None)
        cps = [verify_checkpoint(n, {k: t.keys[k][1] for k in t.log})[0] for n in notes]
    else:
        cps = [parse_checkpoint(n) for n in notes]
    a, b = cps
    if a.origin != b.origin:
        raise ProvError(f"checkpoints are of different logs ({a.origin}, {b.origin})")
    store = open_store(ctx)
    if b.size > open_log(store).size():
        raise ProvError(f"{new}: size {b.size} is beyond this store's log ({open_log(store).size()})")
    proof = open_log(store).consistency_proof(a.size, b.size)
    verify_consistency(a.size, b.size, proof, a.root, b.root)
    emit({"ok": True, "size1": a.size, "size2": b.size, "proof": _hex(proof)}, as_json,
         f"consistent: {a.size} -> {b.size} ({len(proof)} hashes)")


@log_group.command("verify")
@json_option
@click.pass_context
def log_verify(ctx, as_json):
    """Recompute every node and checkpoint root from the leaves. Exit 1 on any mismatch."""
    from provenance.log.translog import open_log
    store = open_store(ctx)
    problems = open_log(store).recompute()
    emit({"ok": not problems, "size": open_log(store).size(), "problems": problems}, as_json,
         "\n".join(problems + [f"log of {open_log(store).size()} leaves: {'ok' if not problems else 'FAILED'}"]))
    if problems:
        sys.exit(1)


# -- replay and the miniature contest ----------------------------------------------------------

@cli.command()
@click.option("--archive", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--runtime", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--upstream", required=True, type=click.Path(file_okay=False, exists=True),
              help="Upstream checkout (comma_video_compression_challenge, or a miniature's upstream/).")
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
@json_option
@click.pass_context
def replay(ctx, archive, runtime, upstream, name, device, compare_path, no_sandbox, timeout, mem_limit,
           memory, tmp_size, write_margin, max_expand, keep_scratch, as_json):
    """Recompute the score of ARCHIVE + RUNTIME with the upstream evaluator, sandboxed.

    Inflate runs without the ground truth and the scorer weights in sight; evaluate runs with
    the submission read-only; the evaluator is checked against the profile's pinned digests.

    Exit 0 on a record (and REPRODUCED), 1 when the submission fails or MISMATCHes, or a stored
    object is corrupt, 2 on bad input (a refused archive among it), 3 when bubblewrap is missing.
    """
    from provenance.log.translog import log_object
    from provenance.replay import intake
    from provenance.replay.run import compare, expected_from, replay as run
    from provenance.replay.sandbox import Limits
    expected = expected_from(compare_path) if compare_path else None
    store = open_store(ctx, create=True)
    tty = sys.stderr.isatty()
    say = (lambda m: click.echo(f"replay: {m}", err=True)) if tty and not as_json else None
    limits = Limits(timeout=timeout, address_space=None if device == "cuda" else mem_limit, memory=memory,
                    tmp_size=tmp_size, write_margin=write_margin)
    res = run(store, archive, runtime, upstream, name, device, not no_sandbox, limits, say,
              keep_scratch=keep_scratch, intake_limits=intake.Limits(max_total_bytes=max_expand))
    log_object(store, res.digest.blake3)
    diff = compare(res.record, expected) if expected else None
    verdict = None if diff is None else ("REPRODUCED" if all(d["same"] for d in diff) else "MISMATCH")
    if as_json:
        out = {"record": res.record.to_json_obj(), "digest": {"sha256": res.digest.sha256, "blake3": res.digest.blake3},
               "checks": [c.brief() for c in res.checks]}
        if diff is not None:
            out["compare"] = {"verdict": verdict, "fields": diff}
        emit(out, True)
    else:
        _record_out(res.record, res.digest, res.checks, False)
        if diff is not None:
            click.echo(verdict)
            for d in diff:
                if not d["same"]:
                    click.echo(f"  {d['field']}: expected {d['expected']!r}, replayed {d['replayed']!r}")
    if verdict == "MISMATCH":
        sys.exit(1)


@cli.group()
def miniature():
    """The bundled miniature contest (tests and the demo run on it)."""


@miniature.command("build")
@click.argument("dest", type=click.Path(file_okay=False))
@json_option
def miniature_build(dest, as_json):
    """Generate the miniature contest into DEST (deterministic: same bytes on every machine)."""
    from provenance.lab.miniature.build import build
    from provenance.core.tree import walk
    from provenance.core.digest import hash_file
    out = build(dest)
    d = walk(out, lambda p, s: hash_file(p))
    emit({"dest": str(out), "sha256": d.sha256, "blake3": d.blake3}, as_json,
         f"built {out} (tree sha256 {d.sha256})")


# -- the lab pipeline (what dvc.yaml runs) ------------------------------------------------------

@cli.group()
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
@json_option
def lab_replay(name, submissions, upstream, out, metrics, device, engine, as_json):
    """Replay one submission into its own store (OUT/store) and record (OUT/record.json)."""
    from pathlib import Path
    from provenance.lab.batch import lab_replay as replay_one
    r = replay_one(name, Path(submissions), Path(upstream), Path(out), Path(metrics), device, engine)
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
    """Merge the replay stores, log every record, sign a release per submission with log proofs."""
    from pathlib import Path
    from provenance.lab.pipeline import release_all, submissions_param
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
    """prov verify every release against its files; exit 1 (failing the pipeline) on any failed check."""
    from pathlib import Path
    from provenance.lab.pipeline import submissions_param, verify_all
    ok = verify_all(submissions_param(Path(params_path)), Path(releases), Path(submissions), Path(trust_path), Path(out))
    emit({"ok": ok, "report": out}, as_json, f"{'all releases verified' if ok else 'VERIFICATION FAILED'} ({out})")
    if not ok:
        sys.exit(1)


# -- the ledger --------------------------------------------------------------------------------

@cli.group()
def ledger():
    """Runs, verdicts and annotations: the lab notebook's ledger."""


def _run_row(r) -> dict:
    return {"record": r.sha256, "label": r.label, "track": r.track, "notes": r.notes, "grade": r.grade,
            "canonical_score": r.score, "archive_bytes": r.archive_bytes,
            "source": r.source, "verdict": r.verdict, "reason": r.reason, "flags": r.flags,
            "parent": r.parent, "axis": r.axis}


@ledger.command("show")
@click.option("--limit", type=click.IntRange(min=1), help="Only the latest N runs (reads only those).")
@json_option
@click.pass_context
def ledger_show(ctx, as_json, limit=None):
    """Every run with its grade, score and verdict."""
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
    """Promote a run to the frontier (only A++, or A flagged; only if it beats the frontier). Exit 1 if refused."""
    _verdict(ctx, record, reason, "promote", as_json)


@ledger.command("reject")
@click.argument("record")
@click.option("--reason", required=True)
@json_option
@click.pass_context
def ledger_reject(ctx, record, reason, as_json):
    """Record that a run was rejected, and why."""
    _verdict(ctx, record, reason, "reject", as_json)


@ledger.command("annotate")
@click.argument("record")
@click.option("--label")
@click.option("--track")
@click.option("--notes")
@click.option("--parent", help="The run this one varies (digest or ref): it joins the parent's neighbourhood.")
@click.option("--axis", help="What it changed against its parent, e.g. 'crf 36 -> 30'.")
@json_option
@click.pass_context
def ledger_annotate(ctx, record, label, track, notes, parent, axis, as_json):
    """Give a run a label, a track, notes, a parent and an axis (stored and logged)."""
    from provenance.lab.ledger import annotate
    sha = annotate(open_store(ctx), record, label, track, notes, parent=parent, axis=axis)
    emit({"note_record": sha}, as_json, sha)


@cli.command()
@json_option
@click.pass_context
def frontier(ctx, as_json):
    """The best promoted run and its release."""
    from provenance.lab.ledger import frontier as best, release_of
    store = open_store(ctx)
    r = best(store, write=False)  # a reader writes nothing: the rows are used when current
    if r is None:
        emit({"frontier": None}, as_json, "no frontier yet: promote an A++ run with prov ledger promote")
        return
    st = release_of(store, r.sha256)
    out = {"frontier": _run_row(r), "release": st["predicate"]["name"] if st else None}
    emit(out, as_json, f"frontier {r.score!r} ({r.grade}) {r.archive_bytes:,} bytes, record "
         f"{r.sha256}" + (f", release {out['release']}" if st else ""))


# -- the public site ----------------------------------------------------------------------------

@cli.group()
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
    """Re-scan a bundle with the hygiene rules and re-check its file manifest."""
    from provenance.lab.site.build import check_site
    problems = check_site(bundle)
    emit({"ok": not problems, "problems": problems}, as_json, "\n".join(problems) or f"{bundle}: clean")
    if problems:
        sys.exit(1)


from provenance.cli.batch import batch as _batch  # noqa: E402  (its own module: issue 17)
cli.add_command(_batch)


def main() -> None:
    cli(prog_name="prov")


if __name__ == "__main__":
    main()
