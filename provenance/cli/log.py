"""The evidence log: append, checkpoint, prove, consistency, verify."""

from __future__ import annotations

import sys

import click

from provenance.cli.common import _passphrase, emit, json_option, open_store


@click.group("log")
def log_group():
    """The append-only evidence log (RFC 9162 Merkle tree, C2SP signed checkpoints)."""


@log_group.command("append")
@click.argument("digest")
@json_option
@click.pass_context
def log_append(ctx, digest, as_json):
    """Append a stored object (record, statement, verdict...) to the log; idempotent.

    \b
    Example:
      prov log append RECORD_SHA256
    """
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
    """Sign a checkpoint (origin, size, root) of the log as it is now.

    \b
    Example:
      prov log checkpoint --key keys/log/key.pem --out checkpoint.note
    """
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
    """Inclusion proof of a logged object.

    \b
    Example:
      prov log prove RECORD_SHA256 --json
    """
    from provenance.log.logbook import prove_inclusion
    p = prove_inclusion(open_store(ctx), digest, size)
    emit(p, as_json, f"leaf {p['index']} of {p['size']}, root {p['root']}\n" + "\n".join(p["proof"]))


@log_group.command("consistency")
@click.argument("old", type=click.Path(dir_okay=False, exists=True))
@click.argument("new", type=click.Path(dir_okay=False, exists=True))
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False), help="Also check both signatures.")
@json_option
@click.pass_context
def log_consistency(ctx, old, new, trust_path, as_json):
    """Prove from the store's log that checkpoint NEW extends checkpoint OLD.

    \b
    Example:
      prov log consistency old.note checkpoint.note --trust trust.json
    """
    from provenance.log.logbook import checkpoint_pair, prove_consistency, read_note
    trusted = None
    if trust_path:
        from provenance.release.trust import load_trust
        t = load_trust(trust_path, None)
        trusted = {k: t.keys[k][1] for k in t.log}
    a, b = checkpoint_pair(read_note(old), read_note(new), trusted)  # the notes first, then the store
    p = prove_consistency(open_store(ctx), a, b, where=new)
    emit(p, as_json, f"consistent: {p['size1']} -> {p['size2']} ({len(p['proof'])} hashes)")


@log_group.command("verify")
@json_option
@click.pass_context
def log_verify(ctx, as_json):
    """Recompute every node and checkpoint root from the leaves. Exit 1 on any mismatch.

    \b
    Example:
      prov --store evidence/store log verify
    """
    from provenance.log.translog import open_log
    store = open_store(ctx)
    problems = open_log(store).recompute()
    emit({"ok": not problems, "size": open_log(store).size(), "problems": problems}, as_json,
         "\n".join(problems + [f"log of {open_log(store).size()} leaves: {'ok' if not problems else 'FAILED'}"]))
    if problems:
        sys.exit(1)


COMMANDS = [log_group]
