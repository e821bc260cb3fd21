"""The student: load a checkpoint of any registered family, and render posts into chat prompts.

`load_student` accepts what a user naturally points at: a hub id, a checkpoint folder, or a run
directory (its `merged/` checkpoint, else its `adapter/` on top of the adapter's base). `render` is
the single place a post becomes prompt text: the family's chat template around
`mmkp_edge.prompt.messages`, then the think-mode prime, so training, zero-shot evaluation and the
export parity reference all see byte-identical prompts. A post too long for the model's context is
cut by train.collate.encode_post with the runtime's rule (mmkp_edge.truncation); `prompt_budget`
is that rule's limit for a loaded model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mmkp_edge import prompt
from mmkp_edge.errors import InputError
from mmkp_edge.images import post_image as load_post_image
from mmkp_edge.posts import Post
from mmkp_edge.truncation import prompt_limit

from .families import StudentFamily, family_of
from .tokens import ensure_contract_tokens

ADAPTER_DIR, MERGED_DIR = "adapter", "merged"


class Student(NamedTuple):
    model: Any                 # transformers model (or peft model when loaded from an adapter)
    processor: Any             # the family's processor
    family: StudentFamily


def resolve_source(source: str | os.PathLike) -> tuple[str, str | None]:
    """(checkpoint to load, adapter folder or None) for a hub id, checkpoint folder or run dir."""
    path = Path(source)
    if not path.exists():
        if str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
            raise InputError(f"{source}: no such checkpoint folder")
        return str(source), None                                  # a hub id
    if (path / MERGED_DIR / "config.json").is_file():
        return str((path / MERGED_DIR).resolve()), None
    adapter = path / ADAPTER_DIR if (path / ADAPTER_DIR).is_dir() else path
    config = adapter / "adapter_config.json"
    if config.is_file():
        try:
            base = json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise InputError(f"{config}: not a peft adapter config ({exc})") from None
        return base, str(adapter.resolve())
    if (path / "config.json").is_file():
        return str(path.resolve()), None
    raise InputError(f"{source}: neither a checkpoint (config.json), a run dir with "
                     f"{MERGED_DIR}/ or {ADAPTER_DIR}/, nor a peft adapter")


def load_student(source: str | os.PathLike, *, dtype=None, device="cpu",
                 image_splitting: bool = False, attn_implementation: str | None = None) -> Student:
    """Load model, processor and family. `dtype` defaults to float32; the model is in eval mode.
    A checkpoint without the prompt's tags gets them here (`train.tokens.ensure_contract_tokens`).

    A run dir with only an adapter gives a peft model (adapter weights frozen; see
    `train.lora.load_adapter` to continue training one).
    """
    checkpoint, adapter = resolve_source(source)
    family = family_of(checkpoint, image_splitting=image_splitting)
    model = family.load_model(checkpoint, dtype=dtype, device=device,
                              attn_implementation=attn_implementation)
    has_own_processor = adapter is not None and (Path(adapter) / "processor_config.json").is_file()
    processor = family.load_processor(adapter if has_own_processor else checkpoint)
    ensure_contract_tokens(model, processor)        # a real checkpoint lacks the prompt's tags
    if adapter:
        from .lora import load_adapter
        model = load_adapter(model, adapter)
    return Student(model, processor, family)


def prompt_budget(model, max_new_tokens: int) -> int:
    """Most prompt tokens (before the think prime) a post may take with `model`: its decoder's
    context (text config `max_position_embeddings`) minus the generation budget — the runtime's
    limit with the bundle's `max_context` (mmkp_edge.truncation.prompt_limit)."""
    context = model.config.get_text_config().max_position_embeddings
    return prompt_limit(int(context), max_new_tokens)


# ---------------------------------------------------------------- rendering

@dataclass
class ImageStats:
    """What rendering had to change, counted once per post however often it is rendered (epochs):
    posts that named an image which could not be used (rendered text-only), and posts cut to fit
    the model's context."""
    unusable: int = 0
    examples: list[str] = field(default_factory=list)   # first few "id: reason" lines
    truncated: int = 0                                  # posts whose text / OCR was cut
    _seen: set = field(default_factory=set, repr=False)

    def add(self, post_id: str, reason: str) -> None:
        if ("image", post_id) in self._seen:
            return
        self._seen.add(("image", post_id))
        self.unusable += 1
        if len(self.examples) < 5:
            self.examples.append(f"{post_id}: {reason}")

    def add_truncated(self, post_id: str) -> None:
        if ("cut", post_id) not in self._seen:
            self._seen.add(("cut", post_id))
            self.truncated += 1


@dataclass(frozen=True)
class Rendered:
    """A post as text. Token ids are always encode(prompt) + encode(prime) + encode(target) with the
    prime (and a target's leading tag) encoded on their own, so the ids at the prompt/answer
    boundary are the same in training, in generation and in the runtime, whatever BPE would merge
    across it (e.g. SmolVLM's tokenizer has no `<answer>` token)."""
    post_id: str
    prompt: str                # chat template + generation prompt (no prime)
    prime: str                 # the think mode's prime, `prompt.prime(think)` ("" for auto)
    target: str | None         # trained continuation after the prime (None for generation)
    image: Any                 # RGB PIL image, or None for a text-only post

    @property
    def text(self) -> str:
        """Prompt + prime: the full generation prompt as one string."""
        return self.prompt + self.prime


def post_image(post: Post, stats: ImageStats | None = None):
    """The post's image as RGB PIL, or None: the "text-only" policy of mmkp_edge.images.post_image
    (stage inputs were checked under "error" before training, see train.stages.run.prepare); an
    unusable image is counted, never raised. A named-but-missing image was counted when the posts
    were read (`Post.missing_image`)."""
    if post.image is None:
        return None
    loaded = load_post_image(post.image)
    if loaded.image is None and stats is not None:
        stats.add(post.id, loaded.problem or "no image")
    return loaded.image


def chat_prompt(processor, post: Post, has_image: bool) -> str:
    """The prompt text for `post`: chat template + generation prompt (no think prime)."""
    msgs = prompt.messages(post.text, post.ocr, has_image)
    return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def render(processor, post: Post, think: str = "auto", target: str | None = None,
           stats: ImageStats | None = None) -> Rendered:
    """Post → prompt, prime and optional target. For training pass think="auto" and the full
    target (`prompt.direct_target(...)` / `prompt.reasoning_target(...)`); with another think mode
    the target must start with that mode's prime, which then is not trained on."""
    image = post_image(post, stats)
    primed = prompt.prime(think)
    if target is not None:
        if not target.startswith(primed):
            raise ValueError(f"target {target[:30]!r} does not start with the {think!r} prime {primed!r}")
        target = target[len(primed):]
    return Rendered(post.id, chat_prompt(processor, post, image is not None), primed, target, image)
