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
@click.option("--out", type=click.Path(dir_okay=False),
              help="Also write the proof for a witness (prov log witness --proof): 'old <size>', then base64 hashes.")
@json_option
@click.pass_context
def log_consistency(ctx, old, new, trust_path, out, as_json):
    """Prove from the store's log that checkpoint NEW extends checkpoint OLD.

    \b
    Example:
      prov log consistency old.note checkpoint.note --trust trust.json --out proof
    """
    from provenance.log.logbook import checkpoint_pair, prove_consistency, read_note
    trusted = _log_keys(trust_path, ())[0] if trust_path else None
    a, b = checkpoint_pair(read_note(old), read_note(new), trusted)  # the notes first, then the store
    p = prove_consistency(open_store(ctx), a, b, where=new)
    if out:
        from provenance.core.files import write_atomic
        from provenance.log.witness import format_proof
        write_atomic(out, format_proof(p["size1"], [bytes.fromhex(h) for h in p["proof"]]).encode())
    emit(p, as_json, f"consistent: {p['size1']} -> {p['size2']} ({len(p['proof'])} hashes)")


def _log_keys(trust_path, vkey_paths, origins=()) -> tuple[dict, int, tuple]:
    """The log keys a monitor or a witness trusts, their threshold and the origins it watches: the trust
    policy's log role (and the origin it pins), or note vkeys (log.vkey) and --origin."""
    if bool(trust_path) == bool(vkey_paths):
        raise click.UsageError("give --trust trust.json or --vkey log.vkey (whose checkpoints?)")
    if trust_path:
        from provenance.release.chain import load_trust
        t = load_trust(trust_path, None)
        if not t.log:
            raise click.UsageError(f"{trust_path}: the trust policy names no log key")
        if t.log_origin and origins and set(origins) != {t.log_origin}:
            raise click.UsageError(f"{trust_path} pins the log {t.log_origin}: --origin names another")
        return {k: t.keys[k][1] for k in t.log}, t.log_threshold, (t.log_origin,) if t.log_origin else tuple(origins)
    from provenance.log.checkpoint import parse_note_verifiers
    from provenance.core.files import read_input
    keys = {}
    for p in vkey_paths:
        keys.update(parse_note_verifiers(read_input(p), p))
    return keys, 1, tuple(origins)


_trusted_log = [click.option("--trust", "trust_path", type=click.Path(dir_okay=False),
                             help="Trust policy whose log role signs the checkpoints (and may pin its origin)."),
                click.option("--vkey", "vkey_paths", multiple=True, type=click.Path(dir_okay=False),
                             help="Or: the log's signed-note verifier key(s), one a line (a packet's log.vkey)."),
                click.option("--origin", "origins", multiple=True,
                             help="The log (checkpoint origin line) watched; repeat for several.")]


def trusted_log(f):
    for opt in reversed(_trusted_log):
        f = opt(f)
    return f


@log_group.command("publish")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write (or extend): checkpoint, tile/<L>/<N>, tile/entries/<N>.")
@json_option
@click.pass_context
def log_publish(ctx, out, as_json):
    """Publish the log as C2SP tlog-tiles, up to its newest signed checkpoint.

    Incremental: only the tiles the new leaves touch are written, then the checkpoint. Serve the
    folder as static files; anyone can mirror it and audit it (prov log audit).

    \b
    Example:
      prov log checkpoint --key keys/log/key.pem && prov log publish --out public/log
    """
    from provenance.core.progress import Progress
    from provenance.log.publish import publish
    with Progress(f"publishing {out}", unit="entries") as prog:
        r = publish(open_store(ctx), out, prog)
    emit(r, as_json, f"{out}: {r['origin']} size {r['size']} (from {r['from']}: {r['files']} file(s) written)")


@log_group.command("audit")
@click.argument("source")
@trusted_log
@click.option("--since", "since_path", type=click.Path(dir_okay=False),
              help="A checkpoint you hold: the published log must extend it.")
@click.option("--state", type=click.Path(dir_okay=False),
              help="Remember the newest checkpoint audited here; the next audit must extend it.")
@click.option("--max-entries", type=click.IntRange(min=0), default=1 << 32, show_default=True,
              help="Refuse a checkpoint claiming more entries (a hostile log could keep a monitor busy forever).")
@json_option
def log_audit(source, trust_path, vkey_paths, origins, since_path, state, max_entries, as_json):
    """Audit a published log (a folder, or an http(s) URL prefix): check the checkpoint's signature,
    recompute the tree from every entry bundle, check every tile, and prove it extends what was
    seen before. Exit 1 on any mismatch, fork or rollback, printing both checkpoints.

    \b
    Example:
      prov log audit https://lab.example/log --trust trust.json --state audit.state
    """
    from provenance.core.progress import Progress
    from provenance.log.logbook import read_since
    from provenance.log.monitor import audit
    keys, threshold, origins = _log_keys(trust_path, vkey_paths, origins)
    since = read_since(since_path) if since_path else None
    with Progress(f"auditing {source}", unit="entries") as prog:
        r = audit(source, keys, threshold, since, state, prog, origins, max_entries)
    emit(r, as_json, lambda: _audit_text(r))
    if not r["ok"]:
        sys.exit(1)


def _audit_text(r: dict) -> str:
    lines = [f"problem: {p}" for p in r["problems"]]
    for f in r["forks"]:
        lines += [f["why"], f"  seen before ({f['seen_in']}):", *("    " + ln for ln in f["seen"].splitlines()),
                  "  published now:", *("    " + ln for ln in f["now"].splitlines())]
    head = f"{r['origin']} size {r['size']}: {r['entries_read']} entries recomputed" if r["origin"] else r["source"]
    return "\n".join(lines + [f"{head}: {'ok' if r['ok'] else 'FAILED'}"])


@log_group.command("witness")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="The witness's private key.")
@_passphrase
@click.option("--state", required=True, type=click.Path(dir_okay=False),
              help="The witness's memory: the last checkpoint it cosigned, per log.")
@trusted_log
@click.option("--proof", "proof_path", type=click.Path(dir_okay=False),
              help="Consistency proof from the size last cosigned (prov log consistency --out).")
@click.option("--name", help="The witness's key name (default: comma-lab.dev/witness/ and its key's hash).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the cosigned checkpoint here (default: print).")
@json_option
def log_witness(checkpoint, key_path, passphrase_file, state, trust_path, vkey_paths, origins, proof_path, name, out,
                as_json):
    """Cosign CHECKPOINT as a witness (C2SP tlog-cosignature, cosignature/v1), only after checking the
    log's signature and a consistency proof from the last checkpoint this witness cosigned for that
    log. Refuses (exit 1) a rollback, a fork, or a log it does not watch (start one with --origin, or a
    trust policy that pins it), saying which.

    \b
    Example:
      prov log witness checkpoint.note --key witness/key.pem --state witness.state \\
          --vkey log.vkey --origin ORIGIN --proof proof --out checkpoint.cosigned
    """
    from provenance.core.signing import load_private
    from provenance.log.logbook import read_note
    from provenance.log.witness import cosign_checkpoint, parse_proof
    keys, _, origins = _log_keys(trust_path, vkey_paths, origins)
    note = read_note(checkpoint)
    proof = parse_proof(read_note(proof_path), proof_path) if proof_path else None
    r = cosign_checkpoint(note, load_private(key_path, passphrase_file), state, keys, proof, name, origins=origins)
    if out:
        from provenance.core.files import write_atomic
        write_atomic(out, r["note"].encode())
    emit(r, as_json, (f"cosigned {r['origin']} size {r['size']} as {r['witness']} ({r['checked']})"
                      + (f": {out}" if out else "\n" + r["note"].rstrip("\n"))))


@log_group.command("cosign-add")
@click.argument("notes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--manifest", "manifests", multiple=True, type=click.Path(dir_okay=False),
              help="A release manifest carrying that checkpoint: its copy gains the cosignatures too.")
@click.option("--trust", "trust_path", required=True, type=click.Path(dir_okay=False),
              help="The policy whose witness role every cosignature added must be valid by.")
@json_option
@click.pass_context
def log_cosign_add(ctx, notes, manifests, trust_path, as_json):
    """Collect witnesses' cosignatures (cosigned copies of this log's checkpoints) into the checkpoints
    the store keeps, and into release manifests that carry them. Nothing is written unless all fit.

    \b
    Example:
      prov log cosign-add w1.cosigned w2.cosigned --manifest releases/mysub/manifest.json --trust trust.json
    """
    from provenance.log.logbook import add_cosignatures, read_note
    from provenance.release.chain import load_trust
    witnesses = load_trust(trust_path, None).witnesses
    if not witnesses:
        raise click.UsageError(f"{trust_path}: the trust policy names no witness")
    r = add_cosignatures(open_store(ctx), [(n, read_note(n)) for n in notes], list(manifests), witnesses)
    emit(r, as_json, f"{r['added']} cosignature(s) added" + (f"; {len(r['manifests'])} manifest(s) updated"
                                                             if r["manifests"] else ""))


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
