"""Progress on stderr for the long data passes (shingling, MinHash, verification, splitting).

The data tools run for seconds to minutes on hundreds of thousands of posts; a user should see that
they move, but pipes and test logs should not fill with carriage-return noise. On a terminal the
line is redrawn at most a few times a second; elsewhere each phase prints one line when it ends.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """`with Progress("shingling", total) as bar: bar.update(n)` — a counter for one phase."""

    def __init__(self, label: str, total: int, *, enabled: bool = True, stream=None):
        self.label = label
        self.total = max(int(total), 0)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            now = time.perf_counter()
            if now - self._last_draw >= 0.2:
                self._last_draw = now
                self.stream.write(f"\r{self._line()}")
                self.stream.flush()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self._start
        if self.total:
            return f"{self.label}: {self.done:,}/{self.total:,} ({100 * self.done / self.total:.0f}%) {elapsed:.1f}s"
        return f"{self.label}: {self.done:,} {elapsed:.1f}s"

    def close(self) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r" if self.tty else "") + self._line() + "\n")
        self.stream.flush()
        self.enabled = False
