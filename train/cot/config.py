"""The CoT-data run configuration: one frozen dataclass, checked before any request is sent.

The command line, the pipeline recipe and tests all build this, so every knob is documented once
(here) and a bad value fails in `validate()` with one line instead of after an hour of requests.
Secrets never live here: only the *name* of the environment variable holding the API key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmkp_edge.errors import InputError

from .filter import KEEP_POLICIES
from .teachers import available


@dataclass(frozen=True)
class CotDataConfig:
    posts: str = ""                             # training posts: JSONL or a CMKP *_src.txt file
    output: str = ""                            # rationale JSONL; appended to, its ids are skipped
    teacher: str = "openai"                     # openai | local | any train/cot/<name>_teacher.py
    model: str = "gpt-4o"                       # server model name, or hub id / path for `local`
    base_url: str = "https://api.openai.com/v1" # OpenAI-compatible server root (…/v1)
    api_key_env: str = "OPENAI_API_KEY"         # env var holding the key; "" = send no key
    gold: bool = True                           # show the gold keyphrases (False = predict mode)
    keep: str = "exact"                         # filter policy: exact | top1 | any
    samples: int = 1                            # replies drawn per post until one passes
    keep_all_samples: bool = False              # with samples > 1: keep every passing reply
    temperature: float = 0.0                    # sampling temperature (> 0 when samples > 1)
    max_tokens: int = 512                       # completion budget per reply
    concurrency: int = 8                        # requests in flight (openai)
    timeout: float = 60.0                       # seconds per request, whole response
    retries: int = 5                            # extra attempts on 429 / 5xx / timeout / bad body
    backoff_base: float = 1.0                   # first retry waits ~this many seconds, then doubles
    backoff_max: float = 60.0                   # cap on one wait (Retry-After included)
    image_max_side: int = 1024                  # images are downscaled to this before sending
    image_root: str | None = None               # where relative image paths are looked up
    limit: int | None = None                    # only the first N posts (a trial run)
    retry_failed: bool = False                  # re-ask posts whose last record is a failed request
    max_consecutive_failures: int = 20          # stop after N failed posts in a row (0: never)
    batch_size: int = 8                         # posts per generate() call (local)
    device: str = "auto"                        # local: auto | cpu | cuda | cuda:N
    price_in: float | None = None               # USD per 1M prompt tokens, for the cost estimate
    price_out: float | None = None              # USD per 1M completion tokens
    options: dict[str, Any] = field(default_factory=dict)  # teacher-specific settings
    #   (`--set options.KEY=VALUE`, YAML scalars): a teacher added as one module needs no new field

    @property
    def mode(self) -> str:
        return "gold" if self.gold else "predict"

    def replace(self, **changes) -> "CotDataConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "CotDataConfig":
        """Raise InputError naming the first bad field; return self for chaining."""
        problems = [
            (not self.posts, "posts is required (--posts, or posts: in the recipe)"),
            (not self.output, "output is required (-o/--output, or output: in the recipe)"),
            (self.teacher not in available(),
             f"unknown teacher {self.teacher!r}; choose one of {', '.join(available())}"),
            (not Path(self.posts).is_file(), f"posts file not found: {self.posts}"),
            (Path(self.output).exists() and Path(self.output).is_dir(),
             f"output is a directory: {self.output}"),
            (os.path.abspath(self.output) == os.path.abspath(self.posts),
             "output must not be the posts file"),
            (self.keep not in KEEP_POLICIES, f"keep must be one of {', '.join(KEEP_POLICIES)}"),
            (self.samples < 1, "samples must be >= 1"),
            (self.samples > 1 and self.temperature <= 0,
             f"samples={self.samples} at temperature 0 would draw the same reply; "
             "set a temperature > 0 (e.g. 0.7)"),
            (self.keep_all_samples and self.samples == 1, "keep_all_samples needs samples > 1"),
            (self.temperature < 0, "temperature must be >= 0"),
            (self.max_tokens < 1, "max_tokens must be >= 1"),
            (self.concurrency < 1, "concurrency must be >= 1"),
            (self.timeout <= 0, "timeout must be > 0 seconds"),
            (self.retries < 0, "retries must be >= 0"),
            (self.backoff_base < 0 or self.backoff_max < 0, "backoff times must be >= 0"),
            (self.image_max_side < 16, "image_max_side must be >= 16"),
            (self.limit is not None and self.limit < 1, "limit must be >= 1"),
            (self.batch_size < 1, "batch_size must be >= 1"),
            (self.max_consecutive_failures < 0, "max_consecutive_failures must be >= 0"),
            (any(p is not None and p < 0 for p in (self.price_in, self.price_out)),
             "prices must be >= 0"),
            (not self.model.strip(), "model must not be empty"),
        ]
        for bad, message in problems:
            if bad:
                raise InputError(message)
        return self
