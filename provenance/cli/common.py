"""Option and output helpers the command modules share."""

from __future__ import annotations

import json

import click


def emit(obj, as_json: bool, human=None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=True))
    elif human is not None:
        click.echo(human() if callable(human) else human)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


_passphrase = click.option("--passphrase-file", type=click.Path(dir_okay=False),
                           help="File holding the private key's passphrase.")


def open_store(ctx, create: bool = False):
    from provenance.store.objects import Store
    return Store(ctx.obj["store"], create=create)


def record_out(record, digest, checks, as_json: bool) -> None:
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
