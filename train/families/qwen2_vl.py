"""The Qwen2-VL family (HF model type `qwen2_vl`): Qwen2VLForConditionalGeneration.

Qwen2-VL is a ViT on 14-px patches (Conv3d over 2-frame "videos" of one image) + a 2×2 patch merger
+ a Qwen2 decoder with M-RoPE at `model.model.language_model`; the vision tower (merger included)
is `model.model.visual`. Images keep roughly their own size inside a pixel budget, so the number
of `<|image_pad|>` tokens per image varies with the image: the prompt pieces carry the template's
one-pad form (`<|vision_start|><|image_pad|><|vision_end|>`) and the runtime expands it per image
(mmkp_edge.families.qwen2_vl), which `_check_pieces` proves against the processor's own expansion.

Two workarounds, both about torchvision (absent beside the CPU torch build, and not something a
numpy runtime can mirror):
- the image processor is always `Qwen2VLImageProcessorPil`, loaded explicitly: AutoImageProcessor
  would pick the torchvision backend wherever torchvision is installed, whose resize differs;
- transformers 5.24's `Qwen2VLProcessor` requires a video processor, whose classes import
  torchvision; `image_only_processor_class()` passes None for it and keeps every image and text
  code path of the real class (we never feed videos).

The processor returns `mm_token_type_ids`; the model needs them whenever images are given (its
M-RoPE positions come from them), so train.collate passes them through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mmkp_edge import prompt
from mmkp_edge.families.qwen2_vl import (IMAGE_PAD, VISION_END, VISION_START, image_token_count,
                                         image_token_string, token_string)

from . import PromptPieces, register
from .common import (CHECK_TEXT, DECODER_LINEARS, load_pretrained, load_processor, lora_regex,
                     rebuilt_check_prompt, template_texts, unwrap)

ENDOFTEXT, IM_START, IM_END, VIDEO_PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END   # what the chat template writes per image
# Qwen2-VL-Instruct's turn format (default system turn; image parts → start/pad/end), videos left out.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}")

_CHECK_SIZES = ((30, 50), (70, 20))          # (h, w) of the self-check's images


def image_only_processor_class():
    """Qwen2VLProcessor without a video processor (see the module docstring)."""
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2VLProcessor


@register
@dataclass(frozen=True)
class Qwen2VLFamily:
    image_splitting: bool = False   # accepted for the common signature; Qwen2-VL never tiles

    name: ClassVar[str] = "qwen2_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl",)
    default_lora_targets: ClassVar[tuple[str, ...]] = DECODER_LINEARS
    vision_lora_targets: ClassVar[tuple[str, ...]] = ("qkv", "proj", "fc1", "fc2")
    image_wrapper_tokens: ClassVar[tuple[str, ...]] = (VISION_START, VISION_END)

    # ------------------------------------------------------------------ loading

    def load_model(self, source: str, *, dtype=None, device="cpu", attn_implementation=None):
        from transformers import Qwen2VLForConditionalGeneration

        return load_pretrained(Qwen2VLForConditionalGeneration, source, dtype=dtype, device=device,
                               attn_implementation=attn_implementation)

    def load_processor(self, source: str):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil)

        return load_processor(image_only_processor_class(), Qwen2VLImageProcessorPil, source)

    # ------------------------------------------------------------------ structure

    def language_model(self, model):
        return unwrap(model).model.language_model

    def vision_modules(self, model):
        return [unwrap(model).model.visual]                  # patch embed, blocks and merger

    def lora_target_regex(self, targets: tuple[str, ...], vision: bool = False) -> str:
        """Matches names like `model.language_model.layers.0.self_attn.q_proj`."""
        return lora_regex(targets, "language_model", r"visual\.blocks" if vision else None,
                          self.vision_lora_targets)

    # ------------------------------------------------------------------ data contract

    def image_settings(self, processor) -> dict:
        """Preprocessing as data under the manifest's names (mmkp_edge.manifest.ImageInfo's
        Qwen2-VL keys; mmkp_edge.families.qwen2_vl.Qwen2VLImageSettings): smart-resize to
        multiples of patch·merge within [min_pixels, max_pixels] (`resample`), × rescale_factor,
        (x − mean) / std, patches of patch_size² repeated temporal_patch_size times."""
        ip = processor.image_processor
        factor = ip.patch_size * ip.merge_size
        return {"patch_size": int(ip.patch_size), "merge_size": int(ip.merge_size),
                "temporal_patch_size": int(ip.temporal_patch_size),
                "min_pixels": int(ip.size["shortest_edge"]),
                "max_pixels": int(ip.size["longest_edge"]),
                "do_resize": bool(ip.do_resize), "resample": int(ip.resample),
                "do_rescale": bool(ip.do_rescale), "rescale_factor": float(ip.rescale_factor),
                "do_normalize": bool(ip.do_normalize),
                "image_mean": [float(v) for v in ip.image_mean],
                "image_std": [float(v) for v in ip.image_std],
                "tokens_per_image": int(ip.size["longest_edge"]) // factor ** 2,  # informational
                "image_token": processor.image_token,
                "image_token_id": int(processor.image_token_id)}

    def prompt_pieces(self, processor) -> PromptPieces:
        with_image, text_only = template_texts(processor, IMAGE_PLACEHOLDER, image_mark=IMAGE_PAD)
        tok = processor.tokenizer
        pieces = PromptPieces(
            with_image=with_image, text_only=text_only,
            image_string=IMAGE_PLACEHOLDER,      # one pad: the runtime repeats it per image size
            image_placeholder=IMAGE_PLACEHOLDER, add_special_tokens=True, image_splitting=False,
            eos_token=tok.eos_token, pad_token=tok.pad_token)
        self._check_pieces(processor, pieces)
        return pieces

    def _check_pieces(self, processor, pieces: PromptPieces) -> None:
        """Refuse pieces that do not rebuild what the processor renders and tokenizes, images
        expanded by their size included."""
        import warnings

        import numpy as np
        from PIL import Image

        backend = processor.tokenizer.backend_tokenizer            # what tokenizer.json does
        merge = processor.image_processor.merge_size
        for has_image in (True, False):
            built = rebuilt_check_prompt(processor, pieces, has_image)
            for h, w in _CHECK_SIZES if has_image else ((0, 0),):
                image = Image.fromarray(np.full((h, w, 3), 127, np.uint8)) if has_image else None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = processor(text=[built], images=[image] if has_image else None,
                                    return_tensors="np")
                expanded = built
                if has_image:
                    n = image_token_count(out["image_grid_thw"][0], merge)
                    pads = image_token_string(token_string(pieces.image_string, IMAGE_PAD),
                                              IMAGE_PAD, n)
                    expanded = pieces.with_image.replace("{image}", pads).replace(
                        "{prompt}", prompt.user_text(CHECK_TEXT))
                ids = backend.encode(expanded, add_special_tokens=pieces.add_special_tokens).ids
                if ids != out["input_ids"][0].tolist():
                    raise ValueError("tokenizer.json and the image expansion do not reproduce the "
                                     "processor's ids")
