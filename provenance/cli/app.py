"""The `prov` command line: the root group, one-line errors, and the command groups (one module
each: store, records, keys, release, log, replay, lab, batch). Heavy imports stay inside commands."""

from __future__ import annotations

import sys

import click

from provenance.core.errors import ProvError, Terminated


def _error(text: str) -> None:
    """One line, whatever the input it quotes holds."""
    click.echo("prov: error: " + text.replace("\r", "\\r").replace("\n", "\\n"), err=True)


class Cli(click.Group):
    """Turn our errors into one line and the documented exit code."""

    def parse_args(self, ctx, args):
        if ctx.parent is None:  # `prov verify ... --store DIR` means the same as `prov --store DIR verify ...`
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
        except Terminated as e:  # cleaned up on the way here: say so, exit as the shell would
            import signal
            _error(f"stopped by {signal.Signals(e.signum).name}; nothing left behind")
            sys.exit(128 + e.signum)
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
