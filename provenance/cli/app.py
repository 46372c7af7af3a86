"""The `prov` command line: the root group, one-line errors, and the command groups (one module
each: store, records, keys, release, log, replay, lab, batch). Heavy imports stay inside commands."""

from __future__ import annotations

import sys

import click

from provenance.core.errors import Terminated


class Cli(click.Group):
    """Turn our errors into one line and the documented exit code."""

    def parse_args(self, ctx, args):
        if ctx.parent is None:  # `prov verify ... --store DIR` means the same as `prov --store DIR verify ...`
            args = hoist_store(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            sys.exit(1)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors print their usage, exit 2
        except (Exception, Terminated) as e:  # never a traceback: faults.exit_line, as the fast paths say it
            from provenance.core.faults import exit_line
            code, line = exit_line(e, ctx)
            click.echo(f"prov: error: {line}", err=True)
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


def hoist_store(args: list[str]) -> list[str]:
    """Move `--store DIR` / `--store=DIR` given after the subcommand to the front, where the group reads it."""
    front, rest, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        if a == "--store" and i + 1 < len(args):
            front += args[i:i + 2]
            i += 2
            continue
        (front if a.startswith("--store=") else rest).append(a)
        i += 1
    return front + rest


from provenance.cli import batch, keys, lab, log, records, release, replay, store  # noqa: E402

for _module in (store, records, keys, release, log, replay, lab):
    for _command in _module.COMMANDS:
        cli.add_command(_command)
cli.add_command(batch.batch)


def main() -> None:
    cli(prog_name="prov")


if __name__ == "__main__":
    main()
