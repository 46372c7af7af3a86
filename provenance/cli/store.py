"""Store commands: hash, add, cat, ls, export, ref, fsck, gc."""

from __future__ import annotations

import os
import sys

import click

from provenance.cli.common import emit, json_option, open_store
from provenance.cli.output import digest_out, print_digest
from provenance.core.errors import ProvError


@click.command("hash")
@click.argument("path", type=click.Path(exists=False))
@click.option("--allow-unsafe-links", is_flag=True, help="Accept absolute or escaping symlinks.")
@json_option
def hash_cmd(path, allow_unsafe_links, as_json):
    """Print the digests of a file or directory tree; store nothing.

    \b
    Example:
      prov hash runtime/ --json
    """
    from provenance.core.progress import Progress
    from provenance.core.tree import hash_path
    with Progress(f"hashing {path}") as prog:
        kind, d = hash_path(path, prog, allow_unsafe_links=allow_unsafe_links)
    out = digest_out(kind, d.sha256, d.blake3, d.size)
    emit(out, as_json, lambda: print_digest(path, out))


@click.command()
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
    out = digest_out(kind, d.sha256, d.blake3, d.size)
    emit(out, as_json, lambda: print_digest(path, out))


@click.command()
@click.argument("digest")
@json_option
@click.pass_context
def cat(ctx, digest, as_json):
    """Write a stored object's bytes to stdout (sha256 or blake3, unique prefix, or ref).

    With --json: the object's digests and its bytes in base64.

    \b
    Example:
      prov cat RECORD_SHA256 > record.json
    """
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


@click.command()
@click.argument("digest")
@json_option
@click.pass_context
def ls(ctx, digest, as_json):
    """List the entries of a stored tree.

    \b
    Example:
      prov ls RUNTIME_SHA256
    """
    store = open_store(ctx)
    info = store.resolve(digest)
    if info.kind != "tree":
        raise ProvError(f"{digest}: not a tree (it is a {info.kind})")
    rows = store.ls(info.blake3)
    emit({"tree": info.as_dict(), "entries": rows}, as_json,
         lambda: "\n".join(f"{r['kind']:4}  {r['size']:>12}  {r['sha256'][:16]}  {r['name']}" for r in rows))


@click.command()
@click.argument("digest")
@click.argument("dest", type=click.Path())
@json_option
@click.pass_context
def export(ctx, digest, dest, as_json):
    """Materialize a stored tree as a new directory DEST (bytes, exec bits, symlinks).

    \b
    Example:
      prov export RUNTIME_SHA256 runtime-copy/
    """
    store = open_store(ctx)
    info = store.resolve(digest)
    store.export(info.blake3, dest)
    emit({"exported": info.as_dict(), "dest": dest}, as_json, f"exported {info.sha256} to {dest}")


@click.group()
def ref():
    """Named pointers to objects (e.g. releases/<name>), updated with compare-and-swap."""


@ref.command("set")
@click.argument("name")
@click.argument("digest")
@click.option("--expect", help="Only update if the ref now points here (blake3; '' = must not exist).")
@json_option
@click.pass_context
def ref_set(ctx, name, digest, expect, as_json):
    """Point NAME at an object; with --expect, only if it still points where you last saw it.

    \b
    Example:
      prov ref set submissions/mine/archive SHA256_OR_BLAKE3
    """
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
    """Print the object a ref points at.

    \b
    Example:
      prov ref get submissions/mine/archive
    """
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
    """List every ref and its target.

    \b
    Example:
      prov ref list --json
    """
    store = open_store(ctx)
    refs = store.list_refs()
    emit([{"name": n, "blake3": t} for n, t in refs], as_json, "\n".join(f"{t}  {n}" for n, t in refs))


@ref.command("delete")
@click.argument("name")
@click.option("--expect", help="Only delete if the ref now points here.")
@json_option
@click.pass_context
def ref_delete(ctx, name, expect, as_json):
    """Remove a ref (the objects stay until gc).

    \b
    Example:
      prov ref delete submissions/old --expect BLAKE3
    """
    store = open_store(ctx)
    store.delete_ref(name, store.resolve(expect).blake3 if expect else None)
    emit({"deleted": name}, as_json, f"deleted {name}")


@click.command()
@click.option("--repair", is_flag=True, help="Rebuild index.sqlite from the objects; list what was lost.")
@click.option("--ack-repair", is_flag=True, help="After a repair lost refs and you set them again: let gc run.")
@json_option
@click.pass_context
def fsck(ctx, repair, ack_repair, as_json):
    """Re-hash every object and cross-check the index (SQLite integrity, schema), trees and refs,
    and the evidence log's own database. Exit 1 on any fault, naming how to recover.

    \b
    Example:
      prov --store evidence/store fsck --json
    """
    from provenance.core.progress import Progress
    from provenance.log import evidence
    from provenance.store import default_store_path
    with Progress("checking") as prog:
        report = evidence.fsck(ctx.obj["store"] or default_store_path(), repair, ack_repair, prog)
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


@click.command()
@click.option("--grace", type=float, default=3600.0, show_default=True,
              help="Also keep what objects added or re-added within this many seconds reach (an add not yet under a ref).")
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
@json_option
@click.pass_context
def gc(ctx, grace, dry_run, as_json):
    """Remove objects that no ref and no logged record reaches.

    \b
    Example:
      prov --store evidence/store gc --grace 3600
    """
    from provenance.log.evidence import gc as collect
    report = collect(open_store(ctx), grace, dry_run)
    emit(report, as_json, f"{'would remove' if dry_run else 'removed'} {report['removed']} object(s)")


COMMANDS = [hash_cmd, add, cat, ls, export, ref, fsck, gc]
