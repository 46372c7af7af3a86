"""Option and output helpers every command module shares (cli.py and cli_extra.py)."""

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
