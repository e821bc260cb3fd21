"""When to retry a teacher request and how long to wait: pure functions, tested without a server.

Rate limits and overloaded servers are the normal state of a long teacher run, so a request that
got 429, a 5xx, a timeout, a dropped connection or an unreadable body is retried with exponential
backoff and full jitter (so thousands of waiting requests do not return in lock-step); a server's
`Retry-After` wins over our own guess. Other 4xx mean the request itself is wrong: no retry.
"""

from __future__ import annotations

import email.utils
import random
import time

RETRY_STATUS = frozenset({408, 409, 425, 429})   # plus every 5xx
FATAL_STATUS = frozenset({401, 403, 404})        # the same for every post: stop the run


def retryable_status(status: int) -> bool:
    return status in RETRY_STATUS or status >= 500


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None,
                rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1).

    Full jitter: uniform in [0.5, 1] × min(cap, base·2^(attempt-1)). With `retry_after` the wait
    is max(retry_after, that), still capped at `cap` (a server asking for an hour would stall
    the run; asking again after `cap` costs one more 429).
    """
    rng = rng or random
    backoff = min(cap, base * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        return min(cap, max(retry_after, backoff))
    return backoff
