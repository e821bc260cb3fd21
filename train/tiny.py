"""A tiny random-weight SmolVLM-shaped student, built in code, so tests and the demo never download.

It is saved exactly like a real checkpoint (`save_pretrained`, safetensors, a processor with a chat
template), so every stage, the merger and the exporter load it through the same code path as
SmolVLM-256M-Instruct. Three choices make it useful rather than merely loadable:

- the tokenizer is a real ByteLevel BPE trained on a small English corpus (plus the prompt contract's
  own words), so keyphrases tokenize into a few pieces and the demo can learn them;
- the chat template is SmolVLM's (`<|im_start|>User:<image>…<end_of_utterance>\\nAssistant:`), and the
  image prompt is Idefics3's (`<fake_token_around_image><global-img><image>×N<fake_token_around_image>`);
- weights are drawn from N(0, std) with std ≈ 0.15 (not the usual 0.02): with small weights greedy
  decoding collapses to one repeated token and every parity test would pass trivially.

`init_tiny(..., family="qwen2_vl")` builds the second family's counterpart the same way: the same
BPE corpus with Qwen2-VL's special tokens and ChatML template (train.families.qwen2_vl), the PIL
image processor at a small patch size (`patch_size`, merged `scale_factor`², at most
`image_size`² pixels an image, so the image-token count varies with the image), and a
Qwen2VLForConditionalGeneration with M-RoPE sections in Qwen2-VL's 2:3:3 proportion.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import click

from mmkp_edge import prompt
from mmkp_edge.errors import InputError

from .demo_data import demo_corpus
from .demo_data.data import ALL_KEYPHRASES as DEMO_KEYPHRASES
from .families.idefics3 import (END_OF_UTTERANCE, FAKE_AROUND, GLOBAL_IMG, IMAGE_TOKEN, ROW_COL,
                                SMOLVLM_CHAT_TEMPLATE)

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", END_OF_UTTERANCE
IMAGE = IMAGE_TOKEN
SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE, FAKE_AROUND, GLOBAL_IMG) + ROW_COL
# The think/answer tags are single added tokens but *not* "special": decoding with
# skip_special_tokens=True (here or in the torch-free runtime) keeps them, so the parser sees them.
TAG_TOKENS = prompt.SPECIAL_TOKENS
CHAT_TEMPLATE = SMOLVLM_CHAT_TEMPLATE   # SmolVLM-Instruct's (user "User:" / "User: ", "Assistant:")

_WORDS = """
the be to of and a in that have i it for not on with he as you do at this but his by from they we say
her she or an will my one all would there their what so up out if about who get which go me when make
can like time no just him know take people into year your good some could them see other than then now
look only come its over think also back after use two how our work first well way even new want because
any these give day most us is are was were been has had did said made got very much more many such here
photo picture image video post today tonight morning night week weekend love happy birthday family
friends friend life live music song news sport sports game games team win football soccer basketball
food dinner lunch breakfast coffee tea pizza cake beach sea ocean sun summer winter spring autumn fall
rain snow storm weather sky cloud clouds city street travel trip holiday vacation world country home
house car road art design fashion style beauty nature tree trees flower flowers garden park dog dogs
cat cats pet pets animal animals bird birds baby kids school student students class book books movie
film show star stars party wedding christmas halloween easter new year fun funny cute beautiful amazing
best great nice cool hot cold big small little old young red blue green black white yellow pink color
light dark water fire mountain lake river forest hiking running fitness health gym yoga workout
business market money shop shopping sale tech technology phone computer science space moon earth
election vote president government police people news politics climate change
hashtag hashtags keyphrase keyphrases text words tweet twitter instagram social media
model answer think because shows about under near between before during against without
hour hours minute minutes sunset sunrise storm goal goals match player players league club cup final
""".split()

_SENTENCES = (
    "A small cat sits on a green mat.", "Two dogs play in the park near a tree.",
    "Happy birthday to my best friend!", "Great game tonight, what a win for the team.",
    "Coffee and cake on a rainy morning.", "The storm hit the city last night.",
    "Sunset at the beach with family and friends.", "New music video out today.",
    "The image shows a red car on the street.", "The post talks about the election and the vote.",
)


def corpus() -> list[str]:
    """Training text for the BPE: English words, sample posts, the prompt contract, chat roles and
    every text, keyphrase and rationale sentence of the synthetic demo (`train.demo_data.demo_corpus`)."""
    contract = [prompt.user_text(s, "text in the image") for s in _SENTENCES]
    targets = [prompt.reasoning_target(s, s.lower().rstrip(".!").split()[:3]) for s in _SENTENCES]
    words = " ".join(_WORDS)
    caps = " ".join(w.capitalize() for w in _WORDS)
    lines = "\n".join(_WORDS)  # bare forms: the first keyphrase follows `<answer>` with no space
    demo = demo_corpus()
    demo_contract = [prompt.user_text(s) for s in demo[:40]]
    demo_targets = [prompt.direct_target([k]) for k in DEMO_KEYPHRASES]   # "<answer>kp": no space
    return ([words, caps, lines, "User: Assistant: User:Assistant:"] * 20 + list(_SENTENCES) * 20
            + contract * 20 + targets * 5 + demo * 3 + demo_contract * 5 + demo_targets * 5)


@dataclass(frozen=True)
class TinyConfig:
    seed: int = 0                 # seeds every weight (the tokenizer is deterministic anyway)
    vocab_size: int = 1536        # BPE vocabulary incl. special tokens
    hidden_size: int = 64         # text decoder width
    intermediate_size: int = 128  # text MLP width
    num_layers: int = 2           # text decoder layers
    num_heads: int = 4            # attention heads (head dim = hidden / heads)
    num_kv_heads: int = 2         # GQA key/value heads
    vision_hidden_size: int = 32  # SigLIP-style encoder width
    vision_intermediate_size: int = 64  # encoder MLP width
    vision_layers: int = 2        # encoder layers
    vision_heads: int = 2         # encoder attention heads
    image_size: int = 32          # square tile side in pixels
    patch_size: int = 8           # ViT patch side: (32/8)^2 = 16 patches
    scale_factor: int = 2         # pixel-shuffle factor: 16 / 2^2 = 4 image tokens per tile
    std: float = 0.15             # weight init std (large on purpose, see module docstring)
    max_positions: int = 2048     # RoPE table length
    model_vocab_size: int | None = None  # embedding / lm_head rows; None = the tokenizer's size.
                                  # Larger pads the model (e.g. SmolVLM's real 49,280 for speed and
                                  # size checks) while the small tokenizer uses the first ids.
    # qwen2_vl only: image_size² is the pixel budget (max_pixels), patch_size the ViT patch,
    # scale_factor the merge size, vision_intermediate_size / vision_hidden_size the MLP ratio
    vision_out_size: int | None = None  # merger output (None = hidden_size)
    rope_theta: float = 10000.0
    mrope_section: tuple[int, int, int] | None = None  # None: (2, 3, 3)/8 of head_dim / 2
    tie_embeddings: bool = False  # lm_head shares the embedding (Qwen2-VL-2B does)

    def validate(self) -> "TinyConfig":
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise InputError("tiny: hidden_size must divide by num_heads, num_heads by num_kv_heads")
        if self.vision_hidden_size % self.vision_heads:
            raise InputError("tiny: vision_hidden_size must divide by vision_heads")
        grid = self.image_size // self.patch_size   # patches a side (the conv drops a remainder:
        if grid < 1 or grid % self.scale_factor:    # SmolVLM2's 384 px / 14 px → 27)
            raise InputError("tiny: image_size // patch_size must be a positive multiple of "
                             "scale_factor")
        if not 300 <= self.vocab_size <= 8192:
            raise InputError("tiny: vocab_size must be between 300 and 8192")
        if self.std <= 0:
            raise InputError("tiny: std must be > 0")
        if self.model_vocab_size is not None and self.model_vocab_size < self.vocab_size:
            raise InputError("tiny: model_vocab_size must be at least vocab_size")
        return self

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor ** 2


# Named shapes for `init-tiny --shape`. "smolvlm-256m" has SmolVLM-256M's decoder and vision shapes
# (576-wide 30-layer GQA 9/3 Llama, 768-wide 12-layer SigLIP, 512-px tiles, 64 tokens a tile) with
# this small vocabulary and the usual 0.02 std: for GPU throughput and memory checks, not for text.
SHAPES = {
    "tiny": TinyConfig(),
    "smolvlm-256m": TinyConfig(hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                               num_kv_heads=3, vision_hidden_size=768, vision_intermediate_size=3072,
                               vision_layers=12, vision_heads=12, image_size=512, patch_size=16,
                               scale_factor=4, std=0.02, max_positions=8192),
}


def build_tokenizer(cfg: TinyConfig, special=SPECIAL_TOKENS, bos: str | None = BOS,
                    eos: str = EOS, pad: str = PAD, extra_text: tuple[str, ...] = ()):
    """ByteLevel BPE trained on `corpus()` (+ `extra_text`), wrapped as a transformers fast
    tokenizer; `special` first, the prompt's tags added last (not special)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size - len(TAG_TOKENS),
                                  special_tokens=list(special), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus() + list(extra_text) * 20, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=None,
        model_input_names=["input_ids", "attention_mask"])  # no token_type_ids: generate() rejects them
    fast.padding_side = "left"
    return fast


def build_processor(cfg: TinyConfig):
    """Idefics3Processor: PIL image processor (no torchvision needed), one global tile per image."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    side = {"longest_edge": cfg.image_size}
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size=side, max_image_size=side)
    return Idefics3Processor(image_processor=images, tokenizer=build_tokenizer(cfg),
                             image_seq_len=cfg.image_seq_len, chat_template=CHAT_TEMPLATE)


def _randomized(model, cfg: TinyConfig, token_ids: dict):
    """`model` with every ≥2-D weight drawn from N(0, cfg.std) in name order (seed cfg.seed + 1,
    so a shape's weights do not depend on the model class's init order), generation ids set."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * cfg.std)
    model.generation_config.update(**token_ids)
    return model.eval()


def build_model(cfg: TinyConfig, tokenizer):
    """Random Idefics3ForConditionalGeneration whose ≥2-D weights are N(0, cfg.std)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig

    torch.manual_seed(cfg.seed)
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    vocab = max(len(tokenizer), cfg.model_vocab_size or 0)   # padded rows: ids no text maps to
    text = LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                       max_position_embeddings=cfg.max_positions, tie_word_embeddings=False, **ids)
    vision = dict(hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_intermediate_size,
                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                  image_size=cfg.image_size, patch_size=cfg.patch_size)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=cfg.scale_factor,
                            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
                            tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    model = Idefics3ForConditionalGeneration(config)
    return _randomized(model, cfg, ids)


def build_qwen2_vl_processor(cfg: TinyConfig):
    """The image-only Qwen2VLProcessor (train.families.qwen2_vl): PIL image processor, ChatML."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .families import qwen2_vl as q

    factor = cfg.patch_size * cfg.scale_factor
    images = Qwen2VLImageProcessorPil(patch_size=cfg.patch_size, merge_size=cfg.scale_factor,
                                      temporal_patch_size=2, min_pixels=(2 * factor) ** 2,
                                      max_pixels=cfg.image_size ** 2)
    tokenizer = build_tokenizer(cfg, q.SPECIAL_TOKENS, bos=None, eos=q.IM_END, pad=q.ENDOFTEXT,
                                extra_text=("system\nYou are a helpful assistant.", "user\n",
                                            "assistant\n"))
    return q.image_only_processor_class()(image_processor=images, tokenizer=tokenizer,
                                          chat_template=q.QWEN2_VL_CHAT_TEMPLATE)


def build_qwen2_vl_model(cfg: TinyConfig, tokenizer):
    """Random Qwen2VLForConditionalGeneration whose ≥2-D weights are N(0, cfg.std)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from mmkp_edge.families.qwen2_vl import IMAGE_PAD, VISION_END, VISION_START

    half = cfg.hidden_size // cfg.num_heads // 2                   # rotary frequencies a head
    section = cfg.mrope_section or (half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               bos_token_id=None)
    text = dict(vocab_size=max(len(tokenizer), cfg.model_vocab_size or 0),
                hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_positions,
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                                 "mrope_section": list(section)},
                tie_word_embeddings=cfg.tie_embeddings, **ids)
    vision = dict(depth=cfg.vision_layers, embed_dim=cfg.vision_hidden_size,
                  hidden_size=cfg.vision_out_size or cfg.hidden_size, num_heads=cfg.vision_heads,
                  mlp_ratio=cfg.vision_intermediate_size // cfg.vision_hidden_size,
                  patch_size=cfg.patch_size, spatial_merge_size=cfg.scale_factor,
                  temporal_patch_size=2)
    tokens = {"image_token_id": IMAGE_PAD, "video_token_id": "<|video_pad|>",
              "vision_start_token_id": VISION_START, "vision_end_token_id": VISION_END}
    config = Qwen2VLConfig(text_config=text, vision_config=vision,
                           tie_word_embeddings=cfg.tie_embeddings,
                           **{k: tokenizer.convert_tokens_to_ids(t) for k, t in tokens.items()})
    torch.manual_seed(cfg.seed)
    model = Qwen2VLForConditionalGeneration(config)
    return _randomized(model, cfg, ids)


# the tiny Qwen2-VL: 4-px patches merged 2×2 (8-px steps), 4..49 image tokens by image size
QWEN2_VL_TINY = TinyConfig(patch_size=4, image_size=56, vision_layers=1)
# family → (processor builder, model builder, default shape); for Qwen2-VL, TinyConfig's
# image_size² is max_pixels and scale_factor the merge size
BUILDERS = {"idefics3": (build_processor, build_model, TinyConfig()),
            "qwen2_vl": (build_qwen2_vl_processor, build_qwen2_vl_model, QWEN2_VL_TINY)}
FAMILIES = tuple(BUILDERS)


def init_tiny(out: str | os.PathLike, cfg: TinyConfig | None = None,
              family: str = "idefics3") -> Path:
    """Build the tiny student of `family` and save model + processor under `out`; returns the
    path. `cfg` defaults to the family's tiny shape."""
    if family not in BUILDERS:
        raise InputError(f"tiny: family must be one of {', '.join(FAMILIES)}, got {family!r}")
    build_proc, build_net, default = BUILDERS[family]
    cfg = (cfg or default).validate()
    out = Path(out)
    processor = build_proc(cfg)
    model = build_net(cfg, processor.tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@click.command("init-tiny")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Weight seed.")
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="tiny", show_default=True,
              help="tiny: 0.3 M parameters for tests and the demo; smolvlm-256m: real layer shapes "
                   "(random, small vocab) for GPU throughput checks (idefics3 only).")
@click.option("--family", type=click.Choice(FAMILIES), default="idefics3", show_default=True,
              help="Student family: SmolVLM / Idefics3, or Qwen2-VL.")
def init_tiny_command(out: str, seed: int, shape: str, family: str) -> None:
    """Write a random-weight student (model + processor) to OUT.

    \b
    Example:
      mmkp-train init-tiny runs/tiny-student --seed 0
      mmkp-train init-tiny runs/tiny-qwen2-vl --family qwen2_vl
      mmkp-train init-tiny runs/smolvlm-256m-random --shape smolvlm-256m
    """
    if family == "qwen2_vl" and shape != "tiny":
        raise click.UsageError("--shape applies to idefics3 only")
    base = BUILDERS[family][2] if family != "idefics3" else SHAPES[shape]
    click.echo(str(init_tiny(out, dataclasses.replace(base, seed=seed), family)))
