"""The console entry point (`prov`): the fast paths that answer `prov verify ...` and `prov add DIR`
without importing click, then the click CLI for everything else.

A judge's `prov verify` should cost little more than the interpreter's start-up; click's import
alone is a large share of that. So `main` parses the clean, common form of `prov verify ...`
itself (the options below, each once, no --help) and hands every other command line, including
every malformed one, to the click CLI, which stays the one definition of the interface: a test
keeps these tables equal to the click command's options. `prov add DIR` of a tree stored and not
changed since is answered here too, by store/statcheck; what both print has its home in `output`.
"""

from __future__ import annotations

import os
import sys

from provenance.cli.output import digest_out, print_digest, run
from provenance.core.errors import ProvError

VALUE_OPTIONS = {"--trust": "trust_path", "--key": "key_path", "--log-key": "log_key_path", "--archive": "archive",
                 "--runtime": "runtime", "--record": "record", "--at": "at_time", "--state": "state",
                 "--since": "since_path", "--trust-chain": "chain_dir"}
FLAG_OPTIONS = {"--no-files": "no_files", "--key-signs-log": "key_signs_log", "--json": "as_json"}
DIR_VALUED = {"--runtime", "--trust-chain"}  # click.Path(file_okay=False); the rest are dir_okay=False


def parse_fast(args: list[str]) -> dict | None:
    """Keyword arguments for `run` from a clean `verify` command line; None: let click handle it."""
    opts, positional, i = {}, [], 0
    while i < len(args):
        a = args[i]
        if a in FLAG_OPTIONS:
            key, value, i = FLAG_OPTIONS[a], True, i + 1
        elif a.split("=", 1)[0] in VALUE_OPTIONS:
            name, eq, value = a.partition("=")
            if not eq:
                if i + 1 >= len(args):
                    return None
                value = args[i + 1]
            i += 1 if eq else 2
            if not value or os.path.isdir(value) != (name in DIR_VALUED) and os.path.exists(value):
                return None  # click's own message for a file/directory mix-up
            key = VALUE_OPTIONS[name]
        elif a.startswith("-"):
            return None
        else:
            positional.append(a)
            i += 1
            continue
        if key in opts:
            return None
        opts[key] = value
    if len(positional) != 1 or os.path.isdir(positional[0]):
        return None
    return {"manifest": positional[0], **opts}


def parse_add(args: list[str]) -> tuple[str | None, str, bool] | None:
    """(store, path, as_json) from `add PATH`, with `--store S` (or `--store=S`) before or after `add`
    and `--json` after it; None: let click handle it (every other option, every malformed line)."""
    store, as_json, rest, i = None, False, [], 0
    while i < len(args):
        a = args[i]
        if a == "--store" and i + 1 < len(args) and store is None:
            store, i = args[i + 1], i + 2
        elif a.startswith("--store=") and store is None:
            store, i = a.partition("=")[2], i + 1
        elif a == "--json" and not as_json and "add" in rest:  # an option of add's, not the group's
            as_json, i = True, i + 1
        else:
            rest.append(a)
            i += 1
    if len(rest) != 2 or rest[0] != "add" or rest[1].startswith("-") or store == "":
        return None
    return store, rest[1], as_json


def fast_add(store: str | None, path: str, as_json: bool) -> bool:
    """Print what `prov add PATH` prints where the tree is stored and unchanged (statcheck); False
    where the full add must run. Anything unexpected here is the full add's to report."""
    try:
        from provenance.store import default_store_path
        from provenance.store.statcheck import readd_unchanged
        got = readd_unchanged(store or default_store_path(), path)
        if got is None:
            return False
        out = digest_out("tree", *got)
        import json
        text = json.dumps(out, indent=2, sort_keys=True) if as_json else print_digest(path, out)
        text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict")  # what print would refuse
        if "\x1b" in text:  # click.echo strips terminal escapes from a pipe; print would not
            return False
    except Exception:
        return False
    print(text)
    return True


def _stdout_gone() -> None:
    """stdout cannot be written (a closed pipe, a full disk): what is left in its buffer goes to
    /dev/null, so that the interpreter's flush at exit has nothing to fail on."""
    if sys.stdout is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _say(line: str) -> None:
    """An error line to stderr, or nowhere where stderr is closed (print would take stdout)."""
    if sys.stderr is not None:
        try:
            print(line, file=sys.stderr, flush=True)
        except OSError:
            pass


def _error(e: BaseException) -> int:
    """The one line for what reached a fast path, and its exit code, as the click path gives them."""
    from provenance.core.faults import exit_line
    code, line = exit_line(e)
    _say(f"prov: error: {line}")
    return code


def _flush() -> int | None:
    """Flush stdout: None, or the exit code where it cannot be written."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_gone()
        return 1
    except OSError as e:  # a full disk: found when the last of it is written (what was printed is kept)
        _stdout_gone()
        return _error(e)
    return None


def _fast(body) -> int | None:
    """A fast path's exit code (None: not answered here, click decides): its body's, or the one line
    for what it raised, as click gives them; then stdout flushed, where a full disk is found last."""
    try:
        code = body()
    except BrokenPipeError:
        _stdout_gone()
        code = 1
    except (ProvError, OSError) as e:  # a file given, or stdout: a write that failed is no longer buffered
        if isinstance(e, OSError) and e.filename is None:
            _stdout_gone()
        code = _error(e)
    except KeyboardInterrupt:  # as click says it
        _say("\nAborted!")
        code = 1
    return _flush() or code


def main() -> None:
    """The `prov` console script."""
    argv = sys.argv[1:]
    completing = any(k.startswith("_PROV_COMPLETE") for k in os.environ)
    if "add" in argv[:3] and not completing:
        parsed = parse_add(argv)
        if parsed is not None:  # fast_add answers every error but stdout's by the full add
            code = _fast(lambda: 0 if fast_add(*parsed) else None)
            if code is not None:
                sys.exit(code)
    if argv[:1] == ["verify"] and not completing:
        opts = parse_fast(argv[1:])
        if opts is not None:
            sys.exit(_fast(lambda: run(**opts)))
    from provenance.cli import app  # the whole CLI, for every other command
    app.main()
