"""What every student family does the same way: load a model and processor, render the chat
template as data, prove the rendering, and scope LoRA to the language model.

The family modules (idefics3.py, qwen2_vl.py) differ in classes, module paths and image layout;
everything else they share lives here, so a rule (a load failure is one line, a tokenizer emits no
token_type_ids, a template must reproduce the user text exactly once) is written once.
"""

from __future__ import annotations

from typing import Any

from mmkp_edge import prompt
from mmkp_edge.errors import InputError

from . import PromptPieces

# Llama / Qwen2 decoder linears: what LoRA adapts by default in both families.
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SENTINEL = "\x00MMKP_PROMPT\x00"   # stands for the user text while rendering the template
CHECK_TEXT = "  check:  {image} <x> ünï  "  # self-check text (spaces, braces, unicode)


def load_pretrained(model_class: Any, source: str, *, dtype=None, device="cpu",
                    attn_implementation: str | None = None) -> Any:
    """`model_class.from_pretrained(source)` (hub id or folder, never remote code) in `dtype`
    (default float32), moved to `device`, in eval mode; a load failure is one InputError line."""
    import torch

    kwargs = {"dtype": dtype or torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = model_class.from_pretrained(str(source), **kwargs)
    except OSError as exc:
        raise InputError(f"{source}: cannot load the model ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()


def unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_processor(processor_class: Any, image_processor_class: Any, source: str) -> Any:
    """`processor_class` from `source` with an explicit (PIL) image processor and the checkpoint's
    tokenizer, ready for training: a chat template is required, the tokenizer emits only
    input_ids / attention_mask (generate() rejects token_type_ids), and pad falls back to eos."""
    from transformers import AutoTokenizer

    try:
        images = image_processor_class.from_pretrained(str(source))
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        processor = processor_class.from_pretrained(str(source), image_processor=images,
                                                    tokenizer=tokenizer)
    except OSError as exc:
        raise InputError(f"{source}: cannot load the processor ({str(exc).splitlines()[0]})") from None
    if processor.chat_template is None:
        raise InputError(f"{source}: the processor has no chat template")
    processor.tokenizer.model_input_names = ["input_ids", "attention_mask"]
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def lora_regex(targets: tuple[str, ...], lm_scope: str, vision_scope: str | None = None,
               vision_targets: tuple[str, ...] = ()) -> str:
    """A peft `target_modules` regex (peft full-matches module names) for `targets` under the
    module path `lm_scope` (e.g. "text_model"), plus `vision_targets` under `vision_scope`."""
    regex = rf".*\.{lm_scope}\..*\.({'|'.join(sorted(set(targets)))})"
    if vision_scope:
        regex = rf"(?:{regex})|(?:.*\.{vision_scope}\..*\.({'|'.join(vision_targets)}))"
    return regex


def template_texts(processor: Any, placeholder: str, image_mark: str | None = None) -> tuple[str, str]:
    """The chat template rendered as `(with_image, text_only)` with "{image}" where the template
    writes `placeholder` and "{prompt}" for the user text. Refuses a template that does not write
    the user text exactly once, writes `placeholder` other than once per image (or `image_mark`,
    default the placeholder, without an image), or contains a literal "{image}" / "{prompt}"."""
    def render(has_image: bool) -> str:
        msgs = prompt.messages("x", "", has_image)
        msgs[0]["content"][-1]["text"] = SENTINEL
        text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        if text.count(SENTINEL) != 1:
            raise ValueError("chat template does not reproduce the user text exactly once")
        return text

    with_image, text_only = render(True), render(False)
    if with_image.count(placeholder) != 1 or (image_mark or placeholder) in text_only:
        raise ValueError(f"chat template must emit {placeholder!r} once per image")
    if "{image}" in with_image or "{prompt}" in with_image + text_only:
        raise ValueError("chat template contains a literal '{image}' or '{prompt}'")
    return (with_image.replace(placeholder, "{image}").replace(SENTINEL, "{prompt}"),
            text_only.replace(SENTINEL, "{prompt}"))


def rebuilt_check_prompt(processor: Any, pieces: PromptPieces, has_image: bool) -> str:
    """`pieces.build` of CHECK_TEXT, refused unless it equals the processor's own rendering (its
    image placeholder replaced by `pieces.image_string`); returns the built text for the family's
    token-level check."""
    msgs = prompt.messages(CHECK_TEXT, "", has_image)
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    if has_image:
        text = text.replace(pieces.image_placeholder, pieces.image_string)
    built = pieces.build(prompt.user_text(CHECK_TEXT), has_image)
    if built != text:
        raise ValueError("prompt pieces do not reproduce the chat template (has_image="
                         f"{has_image}); this template cannot be exported as data")
    return built
