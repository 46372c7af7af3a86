"""Progress on a terminal for work that takes over a second; silent when stderr is piped."""

from __future__ import annotations

import sys
import time


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    def __init__(self, label: str, total: int | None = None, delay: float = 1.0, stream=None, unit: str | None = None):
        self.stream = stream or sys.stderr
        self.unit = unit  # counted things (entries, say) rather than bytes
        self.enabled = self.stream.isatty()
        self.label, self.total, self.done = label, total, 0
        self.start = time.monotonic()
        self.show_after = self.start + delay
        self.last = 0.0
        self.drawn = False

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now >= self.show_after and now - self.last >= 0.1:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            pct = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
            done = f"{self.done:,} {self.unit} ({rate:,.0f}/s)" if self.unit else f"{_human(self.done)} ({_human(rate)}/s)"
            self.stream.write(f"\r{self.label}:{pct} {done}   ")
            self.stream.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
