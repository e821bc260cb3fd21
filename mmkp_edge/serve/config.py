"""ServeConfig: what `mmkp-serve` was asked to do, checked before the bundle is loaded.

One frozen dataclass (the flags, documented once by the field comments) so the command line, the
tests and the load test build the same server; `validate()` turns a bad combination into one
InputError line instead of a failure later under load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import prompt
from ..errors import InputError
from ..predictor import PredictConfig

DEFAULT_NEW_TOKENS = PredictConfig.max_new_tokens    # a post's max_new_tokens when it names none


@dataclass(frozen=True)
class ServeConfig:
    bundle: str                           # exported bundle folder
    host: str = "127.0.0.1"               # listen address
    port: int = 8000                      # listen port (0 = any free port; the startup line says which)
    max_batch: int = 16                   # posts decoded together (all think modes together)
    max_queue: int = 64                   # posts waiting to join the batch; one more → 429
    threads: int = 0                      # ORT intra-op threads (0 = ORT's default)
    providers: str = "cpu"                # cpu | cuda | cuda,cpu
    think: str = "auto"                   # a post's think mode when it names none
    max_new_tokens: int = 256             # the most a post may ask for (default 96 when it asks none)
    timeout_s: float = 60.0               # per request, from arrival to answer; then 504
    max_body_bytes: int = 8 << 20         # request body; more → 413
    max_image_pixels: int = 16_000_000    # width × height of one image; more → 400
    max_text_chars: int = 4000            # characters of a post's text, and of its ocr
    max_posts: int = 32                   # posts in one /v1/keyphrases request
    retry_after_s: int = 1                # Retry-After sent with 429 / 503
    drain_timeout_s: float = 30.0         # on SIGTERM, wait this long for requests in flight
    model_name: str = ""                  # model id of the chat endpoint ("" = the bundle folder name)
    verify: bool = True                   # check the bundle's sha256 sums on load
    log_level: str = "warning"            # uvicorn's log level

    def validate(self) -> "ServeConfig":
        positive = {"max_batch": self.max_batch, "max_queue": self.max_queue,
                    "max_new_tokens": self.max_new_tokens, "max_body_bytes": self.max_body_bytes,
                    "max_image_pixels": self.max_image_pixels, "max_text_chars": self.max_text_chars,
                    "max_posts": self.max_posts, "timeout_s": self.timeout_s}
        for name, value in positive.items():
            if value <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive; got {value}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be within 0..65535; got {self.port}")
        if self.threads < 0 or self.retry_after_s < 0 or self.drain_timeout_s < 0:
            raise InputError("--threads, --retry-after and --drain-timeout must not be negative")
        if self.think not in prompt.THINK_MODES:
            raise InputError(f"--think must be one of {', '.join(prompt.THINK_MODES)}; got {self.think!r}")
        if self.max_posts > self.max_queue:
            raise InputError(f"--max-posts ({self.max_posts}) cannot exceed --max-queue "
                             f"({self.max_queue}): such a request could never be queued")
        return self

    def replace(self, **changes) -> "ServeConfig":
        return dataclasses.replace(self, **changes)

    @property
    def default_new_tokens(self) -> int:
        return min(DEFAULT_NEW_TOKENS, self.max_new_tokens)
