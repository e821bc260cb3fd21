"""Student families: everything that differs between VLM architectures lives behind one interface.

Training, merging and export ask a `StudentFamily` how to load the model and processor, where the
language model sits, which linear layers LoRA adapts, how images are preprocessed and how a prompt
is rendered. Families are registered under their family name — the manifest's `family`, the same
key export/families and mmkp_edge/families use — and found for a checkpoint through the Hugging
Face `model_type`s each one declares. Adding a family (e.g. Qwen2-VL) is one new module here that
registers itself (plus one per layer in export and the runtime), not edits across stages;
Qwen2-VL (qwen2_vl.py) is the second.

`PromptPieces` is the chat rendering as plain data, so the torch-free runtime can rebuild the exact
prompt text (and therefore the exact token ids) without transformers or Jinja.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from mmkp_edge.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PromptPieces:
    """The chat template as data. A runtime rebuilds a prompt's token ids exactly (`encode`):

        template = with_image if has_image else text_only
        text = template.replace("{image}", image_string).replace("{prompt}", user_text)
        ids = tok.encode(text, add_special_tokens=add_special_tokens).ids
        ids += tok.encode(mmkp_edge.prompt.prime(think), add_special_tokens=False).ids  # if non-empty

    with `tok = tokenizers.Tokenizer.from_file("tokenizer.json")` and `user_text =
    mmkp_edge.prompt.user_text(post.text, post.ocr)`. The prime is encoded on its own (see
    `train.student.Rendered`). `{image}` is replaced first, so a post containing the literal text
    "{image}" stays intact.
    """
    with_image: str            # rendered chat with "{image}" and "{prompt}" placeholders
    text_only: str             # the same without an image ("{prompt}" only)
    image_string: str          # what the processor substitutes for one image (tokens as text)
    image_placeholder: str     # what the chat template emits for an image ("<image>")
    add_special_tokens: bool   # pass to Tokenizer.encode for the templated text
    image_splitting: bool      # False: one global tile per image (the only layout the runtime knows)
    eos_token: str             # generation stops here
    pad_token: str
    prime_encoded_separately: bool = True   # ids(prompt) + ids(prime), never ids(prompt + prime)

    def build(self, user_text: str, has_image: bool) -> str:
        """The templated prompt text (without the think prime)."""
        template = self.with_image if has_image else self.text_only
        return template.replace("{image}", self.image_string).replace("{prompt}", user_text)

    def encode(self, tokenizer, user_text: str, has_image: bool, prime: str = "") -> list[int]:
        """Reference implementation for runtimes; `tokenizer` is a `tokenizers.Tokenizer`."""
        ids = tokenizer.encode(self.build(user_text, has_image),
                               add_special_tokens=self.add_special_tokens).ids
        return ids + (tokenizer.encode(prime, add_special_tokens=False).ids if prime else [])

    def to_json(self) -> dict:
        return asdict(self)


@runtime_checkable
class StudentFamily(Protocol):
    """What the training, merge and export code needs to know about one VLM family."""

    name: ClassVar[str]                        # family id recorded in run dirs and bundles
    model_types: ClassVar[tuple[str, ...]]     # HF `model_type` values this family handles
    default_lora_targets: ClassVar[tuple[str, ...]]  # LM linear-layer names LoRA adapts
    image_wrapper_tokens: ClassVar[tuple[str, ...]]  # tokens around image tokens, trained beside
                                                     # LoRA (new rows on a text-only backbone)

    def load_model(self, source: str, *, dtype: "torch.dtype | None" = None,
                   device: "str | torch.device" = "cpu", attn_implementation: str | None = None) -> Any:
        """The image-text-to-text model from a hub id or local folder (no remote code)."""

    def load_processor(self, source: str) -> Any:
        """The processor, configured with this family's image settings."""

    def language_model(self, model: Any) -> "torch.nn.Module":
        """The text decoder inside `model` (also accepts a peft-wrapped model)."""

    def vision_modules(self, model: Any) -> list["torch.nn.Module"]:
        """Vision tower and connector (frozen unless asked otherwise)."""

    def lora_target_regex(self, targets: tuple[str, ...], vision: bool = False) -> str:
        """A peft `target_modules` regex matching `targets` inside the language model only."""

    def image_settings(self, processor: Any) -> dict:
        """Image preprocessing as JSON-able data, keyed by the manifest's `image` names
        (mmkp_edge.manifest.ImageInfo: max_image_size, size_longest_edge, tokens_per_image, …)."""

    def prompt_pieces(self, processor: Any) -> PromptPieces:
        """The chat rendering as data (see `PromptPieces`), self-checked against the processor."""


_BY_NAME: dict[str, Callable[..., StudentFamily]] = {}    # family name → factory (the class)
_MODEL_TYPES: dict[str, str] = {}                          # HF model_type → family name


def register(factory: Callable[..., StudentFamily]) -> Callable[..., StudentFamily]:
    """Class decorator: register a family under its `name`, found for each of its `model_types`."""
    _BY_NAME[factory.name] = factory
    for mt in factory.model_types:
        _MODEL_TYPES[mt] = factory.name
    return factory


def names() -> tuple[str, ...]:
    """Registered family names (the manifest's `family` values)."""
    return tuple(_BY_NAME)


def known_model_types() -> tuple[str, ...]:
    return tuple(sorted(_MODEL_TYPES))


def family_by_name(name: str, **options) -> StudentFamily:
    """The family registered as `name`, built with family options (e.g. image_splitting)."""
    try:
        return _BY_NAME[name](**options)
    except KeyError:
        raise InputError(f"unknown student family {name!r}; known: {', '.join(names())}") from None


def family_for(model_type: str, **options) -> StudentFamily:
    """The family for a HF `model_type`, built with family options (e.g. image_splitting)."""
    if model_type not in _MODEL_TYPES:
        raise InputError(f"unsupported student model_type {model_type!r}; supported: "
                         f"{', '.join(known_model_types())}")
    return family_by_name(_MODEL_TYPES[model_type], **options)


def model_type_of(source: str | os.PathLike) -> str:
    """`model_type` of a checkpoint folder (config.json) or hub id (offline cache allowed)."""
    config = Path(source) / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8"))["model_type"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise InputError(f"{config}: not a model config ({exc})") from None
    if Path(source).exists():
        raise InputError(f"{source}: no config.json (not a model checkpoint folder)")
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(str(source)).model_type
    except OSError as exc:
        raise InputError(f"{source}: cannot load the model config ({str(exc).splitlines()[0]})") from None


def family_of(source: str | os.PathLike, **options) -> StudentFamily:
    return family_for(model_type_of(source), **options)


from . import idefics3  # noqa: E402,F401  (registers the SmolVLM / Idefics3 family)
from . import qwen2_vl  # noqa: E402,F401  (registers the Qwen2-VL family)
