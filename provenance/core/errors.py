"""One exception hierarchy; each error carries the exit code the CLI returns (DESIGN.md)."""


class ProvError(Exception):
    """Bad input or usage: one user-facing line, exit 2."""

    exit_code = 2


class VerificationFailed(ProvError):
    """A check failed or two things that must agree do not: exit 1."""

    exit_code = 1


class MissingEnvironment(ProvError):
    """A required tool is not installed (e.g. bubblewrap): exit 3."""

    exit_code = 3
