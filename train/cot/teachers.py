"""The teacher interface and registry: what the CoT-data pipeline asks of any rationale writer.

A teacher turns one request (a post, its decoded image, the rendered prompt) into one reply. The
pipeline only ever calls `await teacher.complete(request)` with up to `teacher.max_in_flight`
requests outstanding, so an HTTP teacher can keep that many requests in flight and a local model
can gather them into batches; neither needs to know about files, filtering or resuming.

Adding a teacher is one module: `train/cot/<name>_teacher.py` defining
`build(config: CotDataConfig) -> Teacher`. It appears as `--teacher <name>` with no other edit, is
imported only when chosen (so `openai` never loads torch), and reads its own settings from
`config.options` (`--set options.KEY=VALUE`).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post

if TYPE_CHECKING:
    from PIL import Image

    from .config import CotDataConfig

_SUFFIX = "_teacher"


@dataclass(frozen=True)
class TeacherRequest:
    post: Post                        # the post as read (id, text, gold keyphrases, …)
    system: str                       # the template's system message
    prompt: str                       # the template's user text (train.cot.template.user_prompt)
    image: "Image.Image | None"       # decoded RGB image; None for a text-only post
    sample: int = 0                   # which of --samples this is (0-based)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens)

    def to_json(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True)
class TeacherReply:
    text: str | None                  # the generated text; None when the request failed
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1                 # requests sent for this reply (1 + retries)
    error: str | None = None          # why it failed (never contains a secret)


class TeacherFatal(Exception):
    """Every further request would fail the same way (bad key, wrong model, no server): stop."""


class Teacher(Protocol):
    name: str            # registry name, written into every record
    model: str           # model id / path, written into every record
    max_in_flight: int   # how many complete() calls the pipeline may have outstanding

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        """One reply; failures come back as a reply with `error`, fatal ones raise TeacherFatal."""

    async def aclose(self) -> None:
        """Release connections / memory."""


def available() -> list[str]:
    """Teacher names: every `train/cot/<name>_teacher.py` module."""
    from . import __path__ as package_path
    return sorted(m.name[:-len(_SUFFIX)] for m in pkgutil.iter_modules(package_path)
                  if m.name.endswith(_SUFFIX))


def build_teacher(config: "CotDataConfig") -> Teacher:
    """Import the chosen teacher's module and build it from the run config."""
    names = available()
    if config.teacher not in names:
        raise InputError(f"unknown teacher {config.teacher!r}; choose one of {', '.join(names)}")
    module = importlib.import_module(f"{__package__}.{config.teacher}{_SUFFIX}")
    return module.build(config)
