"""A pass over many items, split over forked workers, one a core. For work bound by the interpreter
(rendering, redacting, scanning thousands of pages): workers inherit the caller's state by fork and
send back only their results. Workers must not use an SQLite connection they inherited."""

from __future__ import annotations

import os

from provenance.core.errors import ProvError

TYPE_CHECKING = False  # typing's import costs the fast re-add (statcheck) more than its lstat calls save
if TYPE_CHECKING:
    from typing import Callable, Iterator, Sequence, TypeVar
    T = TypeVar("T")
    R = TypeVar("R")

_TASK: tuple[Callable, Sequence] | None = None


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _init() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends the pool


def _run(span: tuple[int, int]) -> list:
    fn, items = _TASK
    return [fn(x) for x in items[span[0]:span[1]]]


def fork_map(fn: Callable[[T], R], items: Sequence[T], min_items: int = 500,
             meanwhile: Callable[[], object] | None = None) -> list[R]:
    """[fn(x) for x in items], in order. Below `min_items`, on one core, or where fork is not
    offered, in this process; otherwise over forked workers (fn may be a closure: it is inherited,
    not pickled). `meanwhile` runs here while the workers do (first, in the plain loop). An
    exception in fn is raised here, as in the plain loop."""
    return list(fork_imap(fn, items, min_items, meanwhile))


def fork_imap(fn: Callable[[T], R], items: Sequence[T], min_items: int = 500,
              meanwhile: Callable[[], object] | None = None) -> Iterator[R]:
    """fork_map, each result given as soon as it and those before it are in (progress on a long pass)."""
    global _TASK
    import multiprocessing  # here: `cpus` serves the fast re-add, which must not pay for these
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    n = len(items)
    workers = min(cpus(), 8)
    if n < min_items or workers < 2 or "fork" not in multiprocessing.get_all_start_methods() or _TASK is not None:
        if meanwhile is not None:
            meanwhile()
        yield from (fn(x) for x in items)
        return
    step = max(1, -(-n // (workers * 8)))  # small chunks: a slow one does not hold the others up
    _TASK = (fn, items)
    # an executor, not a Pool: a worker that dies (the OOM killer, a crash in native code) breaks it,
    # raised here, where a Pool would wait for its lost chunk for ever
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init)
    try:
        parts = ex.map(_run, [(s, min(n, s + step)) for s in range(0, n, step)])
        if meanwhile is not None:
            meanwhile()
        for part in parts:
            yield from part
    except BrokenProcessPool as e:
        raise ProvError(f"a worker process died: {e}") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)  # on an error, the chunks not started are dropped
        _TASK = None


def call(job: Callable[[], R]) -> R:
    """fork_map(call, jobs): a list of different jobs, each a function of nothing."""
    return job()
