"""Releases: release create / sign, export-checksums, verify."""

from __future__ import annotations

import os
import sys

import click

from provenance.cli.common import _passphrase, emit, json_option, open_store
from provenance.core.errors import ProvError


@click.group()
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
    """Add a co-signature to an existing manifest (in place, atomically).

    \b
    Example:
      prov release sign manifest.json --key keys/second/key.pem
    """
    from provenance.core.files import write_json
    from provenance.release.create import cosign
    from provenance.records.envelope import read_envelope
    env, _ = read_envelope(manifest)
    out = cosign(env, key_path, passphrase_file)
    write_json(manifest, out)
    emit({"manifest": manifest, "signatures": len(out["signatures"])}, as_json,
         f"{manifest}: now {len(out['signatures'])} signature(s)")


@click.command("export-checksums")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--runtime", required=True, type=click.Path(file_okay=False))
@click.option("--archive", type=click.Path(dir_okay=False), help="Where archive.zip lies (default: OUT/archive.zip).")
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False),
              help="The trust policy the release was signed under: copied in, with its allowed_signers and log key.")
@click.option("--trust-chain", "chain_dir", type=click.Path(file_okay=False),
              help="With --trust: its later versions (N.trust.json), copied into trust-chain/.")
@click.option("--out", "out_dir", default=".", type=click.Path(file_okay=False), show_default=True)
@json_option
def export_checksums(manifest, runtime, archive, trust_path, chain_dir, out_dir, as_json):
    """Write the judge's packet: README, statement.json and one .sig per key, SHA256SUMS (signed by
    the same keys) and B3SUMS, tree_digest.py, and with --trust: trust.json, allowed_signers, log.vkey.

    Names are `archive.zip` and `runtime/...`: run the stock tools in a folder holding both,
    in the order the README gives.

    \b
    Example:
      prov export-checksums manifest.json --runtime runtime/ --archive archive.zip --trust trust.json --out release/
      cd release/ && cat README
    """
    from provenance.release.packet import write_packet
    from provenance.records.envelope import read_envelope
    if chain_dir and not trust_path:
        raise ProvError("--trust-chain needs --trust (the version it walks from)")
    for p in (trust_path, chain_dir):
        if p and not os.path.exists(p):
            raise ProvError(f"{p}: no such file or directory")
    env, _ = read_envelope(manifest)
    files = [str(f) for f in write_packet(env, runtime, out_dir, archive, trust_path, chain_dir)]
    emit({"written": files}, as_json, "\n".join(f"wrote {f}" for f in files))


@click.command()
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
    """Verify a release manifest offline.

    Exit 0 all checks pass; 1 a check failed (the last line names them); 2 bad or unreadable
    input (a missing file, a malformed manifest, policy or --since checkpoint); 3 a tool or
    library verify needs is missing.

    \b
    Example:
      prov verify manifest.json --trust trust.json --archive archive.zip --runtime runtime/
    """
    from provenance.cli.output import run
    sys.exit(run(manifest, trust_path, key_path, log_key_path, archive, runtime, record, at_time, state, since_path,
                 no_files, chain_dir, as_json, key_signs_log))


COMMANDS = [release, export_checksums, verify]
