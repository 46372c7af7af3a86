"""One exception hierarchy; each error carries the exit code the CLI returns (docs/DESIGN.md)."""


class ProvError(Exception):
    """Bad input or usage: one user-facing line, exit 2."""

    exit_code = 2


class VerificationFailed(ProvError):
    """A check failed or two things that must agree do not: exit 1."""

    exit_code = 1


class MissingEnvironment(ProvError):
    """A required tool is not installed (e.g. bubblewrap): exit 3."""

    exit_code = 3


class Terminated(BaseException):
    """SIGTERM or SIGHUP during long work: unwinds like Ctrl-C (every `finally` cleans), then the
    process exits 128 + the signal, as a shell reports it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def helper_threads():
    """A context manager: the threads started inside it never take SIGINT, SIGTERM or SIGHUP (born with the
    creator's mask, which blocks them for the span), so the kernel hands those to the main thread and its
    wait wakes. A signal a helper takes only sets Python's flag, leaving the main thread asleep in waitpid."""
    import contextlib
    import signal
    import threading

    @contextlib.contextmanager
    def scope():
        if threading.current_thread() is not threading.main_thread():
            yield  # a helper's own helpers inherit its mask already
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # one that came meanwhile is delivered here, now
    return scope()


def terminate_on_signals():
    """A context manager: SIGTERM and SIGHUP raise Terminated in the main thread for its span (and
    nothing changes off the main thread, where Python cannot install handlers)."""
    import contextlib
    import signal
    import threading

    @contextlib.contextmanager
    def scope():
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def raise_(signum, frame):
            for s in (signal.SIGTERM, signal.SIGHUP):  # one is enough: the clean-up is not cut short
                signal.signal(s, signal.SIG_IGN)
            raise Terminated(signum)
        old = {s: signal.signal(s, raise_) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    return scope()
