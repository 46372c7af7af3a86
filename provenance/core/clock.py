"""Time, in one place: documents carry RFC 3339 UTC to the second; one parse, one format, and a
bad time is the project's one-line error, never a traceback."""

from __future__ import annotations

from datetime import datetime, timezone

from provenance.core.errors import ProvError

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(t: datetime) -> str:
    """UTC, to the second, with a Z: the form every document and message uses."""
    return t.astimezone(timezone.utc).strftime(FORMAT)


def now_rfc3339() -> str:
    """Now, as documents carry it."""
    return format_time(datetime.now(timezone.utc))


def parse_time(text: str, what: str) -> datetime:
    """An RFC 3339 time (a naive one is UTC); ProvError naming `what` when it is not one."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        raise ProvError(f"{what}: not an RFC 3339 time ({text!r})") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
