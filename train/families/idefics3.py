"""The SmolVLM / Idefics3 family (HF model types `idefics3` and `smolvlm`).

SmolVLM is a SigLIP encoder + pixel-shuffle connector + a Llama decoder at `model.model.text_model`.
Its processor would split a photo into up to 4×4 512-px tiles plus a global tile (~1 100 image
tokens for a phone photo); for edge speed we default to `image_splitting=False`: every image is one
512-px global tile (64 tokens on SmolVLM-256M), a fixed shape the exported vision graph and the numpy
preprocessing reproduce exactly. The setting is stored in the processor config of every checkpoint
we write, and recorded by `image_settings()` for the export manifest.

We always build `Idefics3Processor` with the PIL image processor: `SmolVLMProcessor` and the
torchvision image processors need torchvision (absent beside the CPU torch build), and the PIL path
is the one a torch-free runtime can mirror.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import PromptPieces, register
from .common import (DECODER_LINEARS, load_pretrained, load_processor, lora_regex,
                     rebuilt_check_prompt, template_texts, unwrap)

# What the Idefics3 processor needs in a tokenizer, and SmolVLM-Instruct's chat format
# ("User:" / "Assistant:", `<end_of_utterance>` ends a turn): used by init-tiny and init-student.
IMAGE_TOKEN, FAKE_AROUND, GLOBAL_IMG = "<image>", "<fake_token_around_image>", "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
IMAGE_WRAPPERS = (FAKE_AROUND, GLOBAL_IMG)   # around image tokens; new rows on a text-only backbone
ROW_COL = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


@register
@dataclass(frozen=True)
class Idefics3Family:
    image_splitting: bool = False   # False: one global tile per image (edge default); True: HF tiling

    name: ClassVar[str] = "idefics3"
    model_types: ClassVar[tuple[str, ...]] = ("idefics3", "smolvlm")
    default_lora_targets: ClassVar[tuple[str, ...]] = DECODER_LINEARS
    vision_lora_targets: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "out_proj",
                                                      "fc1", "fc2")
    image_wrapper_tokens: ClassVar[tuple[str, ...]] = IMAGE_WRAPPERS   # trained beside LoRA

    # ------------------------------------------------------------------ loading

    def load_model(self, source: str, *, dtype=None, device="cpu", attn_implementation=None):
        from transformers import AutoModelForImageTextToText

        return load_pretrained(AutoModelForImageTextToText, source, dtype=dtype, device=device,
                               attn_implementation=attn_implementation)

    def load_processor(self, source: str):
        from transformers import Idefics3Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import (
            Idefics3ImageProcessorPil)

        processor = load_processor(Idefics3Processor, Idefics3ImageProcessorPil, source)
        processor.image_processor.do_image_splitting = self.image_splitting
        return processor

    # ------------------------------------------------------------------ structure

    def language_model(self, model):
        return unwrap(model).model.text_model

    def vision_modules(self, model):
        inner = unwrap(model).model
        return [inner.vision_model, inner.connector]

    def lora_target_regex(self, targets: tuple[str, ...], vision: bool = False) -> str:
        """Matches names like `model.text_model.layers.0.self_attn.q_proj`."""
        return lora_regex(targets, "text_model", "vision_model" if vision else None,
                          self.vision_lora_targets)

    # ------------------------------------------------------------------ data contract

    def image_settings(self, processor) -> dict:
        """Preprocessing as data, under the manifest's names (mmkp_edge.manifest.ImageInfo).
        Without splitting the PIL processor does, per image: resize so the longest edge is
        `size_longest_edge` (aspect kept), resize to `max_image_size`² (aspect not kept), both
        with `resample`; × rescale_factor; (x - mean) / std; CHW float32."""
        ip = processor.image_processor
        size = ip.size.longest_edge if hasattr(ip.size, "longest_edge") else ip.size["longest_edge"]
        return {"do_image_splitting": bool(ip.do_image_splitting),
                "max_image_size": int(ip.max_image_size["longest_edge"]),   # square tile side (px)
                "size_longest_edge": int(size),                             # first resize (aspect kept)
                "do_resize": bool(ip.do_resize),
                "resample": int(ip.resample),                               # PIL enum (1 = LANCZOS)
                "do_rescale": bool(ip.do_rescale),
                "rescale_factor": float(ip.rescale_factor),
                "do_normalize": bool(ip.do_normalize),
                "image_mean": [float(v) for v in ip.image_mean],
                "image_std": [float(v) for v in ip.image_std],
                "tokens_per_image": int(processor.image_seq_len),          # <image> tokens per tile
                "image_token": processor.image_token,
                "image_token_id": int(processor.image_token_id)}

    def image_string(self, processor) -> str:
        """The text the processor substitutes for one `<image>` with a single global tile."""
        return processor.replace_image_token({"rows": [[0]], "cols": [[0]]}, 0)

    def prompt_pieces(self, processor) -> PromptPieces:
        with_image, text_only = template_texts(processor, processor.image_token)
        tok = processor.tokenizer
        pieces = PromptPieces(
            with_image=with_image, text_only=text_only,
            image_string=self.image_string(processor), image_placeholder=processor.image_token,
            add_special_tokens=True, image_splitting=bool(processor.image_processor.do_image_splitting),
            eos_token=tok.eos_token, pad_token=tok.pad_token)
        self._check_pieces(processor, pieces)
        return pieces

    def _check_pieces(self, processor, pieces: PromptPieces) -> None:
        """Refuse pieces that do not rebuild what the processor's own template renders."""
        for has_image in (True, False):
            built = rebuilt_check_prompt(processor, pieces, has_image)
            plain = processor.tokenizer.backend_tokenizer.encode(
                built, add_special_tokens=pieces.add_special_tokens).ids   # what tokenizer.json does
            if plain != processor.tokenizer(built)["input_ids"]:
                raise ValueError("tokenizer.json alone does not reproduce the tokenizer's ids")
