"""Running totals of a CoT-data run and their display on stderr.

A teacher run takes hours and costs money, so the user must see at a glance how many posts are
done, how many rationales survive the filter, how many requests failed and how many tokens went
out. On a terminal the line redraws in place; in a log file (not a tty) a line is written every
`log_every` seconds so logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Tally:
    done: int = 0
    kept: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, record: dict) -> None:
        self.done += 1
        self.kept += bool(record["kept"])
        self.failed += record["error"] is not None
        self.prompt_tokens += record["usage"]["prompt_tokens"]
        self.completion_tokens += record["usage"]["completion_tokens"]
        self.reasons[record["reason"]] += 1

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, log_every: float = 10.0):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every = log_every
        self.start = self._last = time.monotonic()

    def line(self, tally: Tally) -> str:
        rate = tally.done / max(time.monotonic() - self.start, 1e-9)
        return (f"cot-data {tally.done}/{self.total} done · {tally.kept} kept · "
                f"{tally.failed} failed · {_count(tally.tokens)} tokens · {rate:.2f} posts/s")

    def update(self, tally: Tally, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if final or now - self._last >= 0.2:
                self.stream.write("\r" + self.line(tally) + ("\n" if final else ""))
                self.stream.flush()
                self._last = now
        elif final or now - self._last >= self.log_every:
            self.stream.write(self.line(tally) + "\n")
            self.stream.flush()
            self._last = now
