"""Keys and trust policies: key generate, trust init / rotate / allowed-signers."""

from __future__ import annotations


import click

from provenance.cli.common import _passphrase, emit, json_option


@click.group()
def key():
    """Ed25519 signing keys."""


@key.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for key.pem (private, 0600) and key.pub.pem.")
@_passphrase
@json_option
def key_generate(out_dir, passphrase_file, as_json):
    """Generate an Ed25519 key pair; never overwrites an existing key.

    \b
    Example:
      prov key generate --out keys/release
    """
    from provenance.core.signing import generate_key
    priv, pub, kid = generate_key(out_dir, passphrase_file)
    emit({"private_key": str(priv), "public_key": str(pub), "keyid": kid}, as_json,
         f"keyid {kid}\n  private {priv} (keep it secret)\n  public  {pub}")


def _witness_options(default_threshold):
    def deco(f):
        f = click.option("--log-origin",
                         help="The origin line of the one log the log keys sign for (prov log checkpoint prints it); "
                              "a witness role needs it.")(f)
        f = click.option("--witness-max-age", type=int,
                         help="Seconds a witness cosignature counts after it is made (default: no limit).")(f)
        f = click.option("--witness-threshold", type=int, default=default_threshold,
                         show_default=default_threshold is not None,
                         help="Distinct witness cosignatures a release's checkpoint needs.")(f)
        return click.option("--witness-key", "witness_keys", multiple=True, type=click.Path(dir_okay=False),
                            help="A witness's public key (PEM) or its vkey file; repeat for several. "
                                 "Releases then need their cosignatures.")(f)
    return deco


@click.group()
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
@_witness_options(1)
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@json_option
def trust_init(release_keys, threshold, log_keys, expires, version, root_keys, root_threshold, witness_keys,
               witness_threshold, witness_max_age, log_origin, out, as_json):
    """Write a trust policy JSON file.

    \b
    Example:
      prov trust init --release-key a/key.pub.pem --release-key b/key.pub.pem --threshold 2 \\
                      --log-key log/key.pub.pem --expires 2027-12-31T00:00:00Z --out trust.json
    """
    from provenance.core.files import write_json
    from provenance.release.trust import trust_policy
    policy = trust_policy(list(release_keys), threshold, list(log_keys), expires, version, list(root_keys),
                          root_threshold, list(witness_keys), witness_threshold, witness_max_age, log_origin)
    write_json(out, policy.model_dump(mode="json", by_alias=True, exclude_none=True))
    emit({"out": out, "keys": sorted(k.keyid for k in policy.keys.values()), "threshold": threshold}, as_json,
         f"wrote {out}: {len(policy.keys)} key(s), release threshold {threshold}")


@click.command("rotate")
@click.option("--from", "current", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The trust policy now in force (version N).")
@click.option("--key", "signing_keys", multiple=True, required=True, type=click.Path(dir_okay=False, exists=True),
              help="Private root key signing version N+1 (repeat: a threshold of N's and of N+1's root keys).")
@_passphrase
@click.option("--release-key", "release_keys", multiple=True, type=click.Path(dir_okay=False),
              help="New release role keys (default: carried over). A key no role names is revoked.")
@click.option("--threshold", type=int, help="New release threshold.")
@click.option("--log-key", "log_keys", multiple=True, type=click.Path(dir_okay=False), help="New log role keys.")
@click.option("--root-key", "root_keys", multiple=True, type=click.Path(dir_okay=False), help="New root role keys.")
@click.option("--root-threshold", type=int, help="New root threshold.")
@_witness_options(None)
@click.option("--expires", required=True, help="RFC 3339 time after which version N+1 is void.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write N+1 (e.g. chain/2.trust.json).")
@click.option("--allow-expired", is_flag=True,
              help="Rotate from a policy that has already expired (verifiers refuse that link: an expired link).")
@json_option
def trust_rotate(current, signing_keys, passphrase_file, release_keys, threshold, log_keys, root_keys,
                 root_threshold, witness_keys, witness_threshold, witness_max_age, log_origin, expires, out, as_json,
                 allow_expired=False):
    """Make version N+1 of a trust policy, signed by N's root keys (TUF root rotation).

    \b
    Example (revoke key a, keep b and c at 2 of 2):
      prov trust rotate --from trust.json --key a/key.pem --key b/key.pem \\
          --release-key b/key.pub.pem --release-key c/key.pub.pem --threshold 2 \\
          --root-key b/key.pub.pem --expires 2028-01-01T00:00:00Z --out chain/2.trust.json
      prov verify manifest.json --trust trust.json --trust-chain chain/ --archive archive.zip --runtime runtime/
    """
    from provenance.core.files import write_json
    from provenance.release.chain import rotate
    doc = rotate(current, list(signing_keys), expires, list(release_keys) or None, threshold, list(log_keys) or None,
                 list(root_keys) or None, root_threshold, passphrase_file, allow_expired, list(witness_keys) or None,
                 witness_threshold, witness_max_age, log_origin)
    write_json(out, doc)
    emit({"out": out, "version": doc["version"], "signatures": len(doc["signatures"]),
          "roles": {r: spec for r, spec in doc["roles"].items()}}, as_json,
         f"wrote {out}: trust policy v{doc['version']}, {len(doc['signatures'])} root signature(s)")


@click.command("allowed-signers")
@click.argument("trust_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(dir_okay=False), help="Write here (default: print).")
@json_option
def trust_allowed_signers(trust_file, out, as_json):
    """OpenSSH allowed_signers for the policy's release keys (namespace comma-lab-release).

    \b
    Example:
      prov trust allowed-signers trust.json --out allowed_signers
      ssh-keygen -Y verify -f allowed_signers -I IDENTITY -n comma-lab-release -s statement.json.sig < statement.json
    """
    from provenance.release.trust import allowed_signers
    from provenance.release.trust import read_trust_doc
    text = allowed_signers(read_trust_doc(trust_file))
    if out:
        from provenance.core.files import write_atomic
        write_atomic(out, text.encode())
    identities = [line.split(" ", 1)[0] for line in text.splitlines()]
    emit({"out": out, "identities": identities}, as_json, (f"wrote {out}" if out else text.rstrip("\n")))


trust.add_command(trust_rotate)
trust.add_command(trust_allowed_signers)


COMMANDS = [key, trust]
