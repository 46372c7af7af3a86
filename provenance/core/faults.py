"""Faults that are not our errors, mapped to one line and a documented exit code (docs/DESIGN.md:
never a traceback). Python's own uncaught exception would exit 1, which here means
"verification failed": a wrong answer, not just an ugly one."""

from __future__ import annotations

import errno
import os

ENVIRONMENT = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE}


def os_error_code(e: OSError) -> int:
    """A full disk or exhausted resource is the environment (3); anything else is the input or usage (2)."""
    return 3 if e.errno in ENVIRONMENT else 2


def exit_line(e: BaseException, ctx=None) -> tuple[int, str]:
    """(exit code, the one line) for whatever reaches either of the command line's entries (the
    click group, the fast paths): our errors say their own, an OSError names its file, a signal
    says what stopped us, and anything else is one_line's. The line is escaped to stay one line."""
    from provenance.core.errors import ProvError, Terminated
    if isinstance(e, ProvError):
        code, line = e.exit_code, str(e)
    elif isinstance(e, Terminated):  # cleaned up on the way here: say so, exit as the shell would
        import signal
        code, line = 128 + e.signum, f"stopped by {signal.Signals(e.signum).name}; nothing left behind"
    elif isinstance(e, OSError):  # a filesystem failure we did not anticipate: still one line
        code, line = os_error_code(e), f"{f'{e.filename}: ' if e.filename else ''}{e.strerror or e}"
    else:
        code, line = one_line(e, ctx)
    return code, line.replace("\r", "\\r").replace("\n", "\\n")


def one_line(e: BaseException, ctx=None) -> tuple[int, str]:
    """(exit code, message) for an exception that reached the command line unconverted."""
    import sqlite3
    if isinstance(e, sqlite3.DatabaseError):
        text = str(e)
        if "disk is full" in text or "out of memory" in text:
            return 3, f"store index: {text} (free some space and run the command again)"
        if "readonly" in text or "read-only" in text:
            return 2, "the store is read-only; this command writes to it"
        if "locked" in text or "busy" in text:
            return 2, f"store index: {text} (another prov is writing; try again)"
        if isinstance(e, sqlite3.OperationalError) and "unable to open" in text:
            return 2, f"store index: {text}"
        return 1, f"index.sqlite is damaged ({text}); run prov fsck, then prov fsck --repair"
    if isinstance(e, RecursionError):
        return 2, "input nested too deeply"
    if isinstance(e, MemoryError):
        return 3, "out of memory"
    if type(e).__name__ == "ValidationError" and type(e).__module__.startswith("pydantic"):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ())) or "input"
        return 2, f"{where}: {first.get('msg', 'invalid')}"
    if os.environ.get("PROV_DEBUG"):
        raise e
    return 2, f"internal error (a bug in prov; please report it): {type(e).__name__}: {e}"
