"""Test helper (not a test): a tiny random-weight Qwen2-VL and its processor, built offline.

Mirrors train/tiny.py for the second family: a small byte-level BPE carrying Qwen2-VL's special
tokens, the PIL image processor at a small patch size, a Qwen2-VL-style ChatML template, and a
Qwen2VLForConditionalGeneration at 2 text layers × 64 wide and a 1-block 32-wide vision tower —
saved with save_pretrained and loaded back, so tests see exactly what a checkpoint folder gives.

transformers 5.24's Qwen2VLProcessor takes a video processor, whose classes need torchvision
(absent beside the CPU torch build); the family's `image_only_processor_class`
(train.families.qwen2_vl) drops that one argument and keeps every image and text code path of the
real class. (train/tiny.py's `init_tiny(..., family="qwen2_vl")` is the student-shaped tiny model
the stage and bundle tests use; this one keeps its own small tokenizer and template for the
numeric checks against HF.)
"""

from __future__ import annotations

from pathlib import Path

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>")
# Qwen2-VL-Instruct's turn format for string or list contents (image parts → start/pad/end).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_TEXT = ("a photo of a cat on the mat", "the storm hit the city last night", "happy birthday to you",
         "user assistant system", "coffee and cake on a rainy morning", "two dogs play in the park",
         "predict the keyphrases for this post", "sunset at the beach with family and friends")

IMG = "<|vision_start|><|image_pad|><|vision_end|>"   # what the chat template writes per image

# Image settings of the tiny checkpoint: 4-px patches merged 2×2 → sides multiples of 8 px,
# 4..48 LM tokens per image.
IMAGE = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8 * 4,
             max_pixels=8 * 8 * 48)


def image_only_processor_class():
    from train.families.qwen2_vl import image_only_processor_class as family_class

    return family_class()


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(_TEXT) * 5, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(SPECIAL), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   model_input_names=["input_ids", "attention_mask"])
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, seed: int = 0, std: float = 0.15):
    """Random Qwen2VLForConditionalGeneration; ≥2-D weights N(0, std) (large: see train/tiny.py)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3]},          # head_dim 16 → 8 frequencies
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=None)
    vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                  patch_size=IMAGE["patch_size"], spatial_merge_size=IMAGE["merge_size"],
                  temporal_patch_size=IMAGE["temporal_patch_size"])
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.generation_config.update(eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    return model.eval()


def save_tiny_qwen2_vl(out: Path, seed: int = 0) -> Path:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_tokenizer()
    processor = image_only_processor_class()(
        image_processor=Qwen2VLImageProcessorPil(**IMAGE), tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE)
    build_model(tokenizer, seed).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_tiny_qwen2_vl(folder: Path):
    """(model, processor) from a saved folder, the processor with the PIL image backend."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    processor = image_only_processor_class().from_pretrained(
        folder, image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder), tokenizer=tokenizer)
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    return model, processor


def settings_of(ip):
    """The runtime's image settings for the HF image processor `ip`, through the chain a bundle
    takes: the training family's `image_settings` → export's manifest `ImageInfo` → the runtime's
    `settings_from_manifest` (so the numeric checks cover all three, not a copy of them)."""
    from types import SimpleNamespace

    from export.families.qwen2_vl import Qwen2VLExport
    from mmkp_edge.families.qwen2_vl import settings_from_manifest
    from train.families.qwen2_vl import Qwen2VLFamily

    processor = image_only_processor_class()(image_processor=ip, tokenizer=build_tokenizer(),
                                             chat_template=CHAT_TEMPLATE)
    source = SimpleNamespace(family=Qwen2VLFamily(), processor=processor)
    return settings_from_manifest(Qwen2VLExport().image_info(source))


def random_image(rng, h: int, w: int):
    """An RGB image of h×w: uniform noise, or a flat colour with drawn ellipses and rectangles."""
    import numpy as np
    from PIL import Image, ImageDraw

    if rng.random() < 0.5:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return img
