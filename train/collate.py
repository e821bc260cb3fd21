"""Rendered posts → model inputs, for training (right padding, labels) and generation (left padding).

Each post is run through the processor on its own (prompt text + at most one image), and the target
is tokenized separately and appended. That keeps the prompt/target boundary exact whatever the
tokenizer would merge across it, so labels cover precisely the target tokens plus the end-of-turn
token, and every prompt token, image token and pad is -100. Text-only and image posts mix freely in
one batch; the processor's per-post image tensors are batched in one of the two layouts HF VLM
processors use, told apart by the keys they return:
- fixed-size tiles with a patch mask (Idefics3: `pixel_values` (n, 3, H, W) +
  `pixel_attention_mask`): padded per batch to (B, N, 3, H, W) with all-zero tiles, which the model
  skips;
- flat patches with a grid per image (Qwen2-VL: `pixel_values` (patches, C·t·p·p) +
  `image_grid_thw` (images, 3)): concatenated over the batch's images in row order (the model
  splits them by the grids), and the per-token `mm_token_type_ids` (1 = image) padded with 0 —
  the model needs them to place M-RoPE positions whenever images are given.

With `max_prompt_tokens` (callers pass `train.student.prompt_budget(model, max_new_tokens)`), a post
whose prompt before the think prime is longer is cut by mmkp_edge.truncation.fit — the runtime's
rule, counted with this processor — so a long post is seen the same way in training, evaluation and
serving (`encode_post`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmkp_edge import prompt
from mmkp_edge.posts import Post
from mmkp_edge.truncation import fit

from .student import ImageStats, Rendered, chat_prompt, render

IGNORE = -100   # label value the loss ignores


TILE_MASK, GRID, TOKEN_TYPES = "pixel_attention_mask", "image_grid_thw", "mm_token_type_ids"


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]                 # prompt + prime ids, then target ids (+ eos) when training
    n_prompt: int                        # how many leading ids are prompt + prime (never trained)
    images: dict[str, torch.Tensor] | None   # the processor's image tensors for this post (module
                                         # docstring), e.g. pixel_values (n_tiles, 3, H, W) and
                                         # pixel_attention_mask (n_tiles, H, W); None = text only
    token_types: list[int] | None = None  # mm_token_type_ids of the prompt ids, when the
                                         # processor gives them (targets and pads are text: 0)
    truncated: bool = False              # the post's text / OCR was cut to fit (encode_post)

    @property
    def pixel_values(self) -> torch.Tensor | None:
        return None if self.images is None else self.images["pixel_values"]


def _leading_tag(text: str) -> tuple[str, str]:
    """Split a leading `<think>` / `<answer>` off a target (it is encoded on its own, see Rendered)."""
    for tag in (prompt.THINK_OPEN, prompt.ANSWER_OPEN):
        if text.startswith(tag):
            return tag, text[len(tag):]
    return "", text


def encode(processor, item: Rendered) -> Encoded:
    """One rendered post → ids: prompt, prime, then (training) target + eos; see `Rendered`."""
    images = None
    if item.image is not None:
        out = processor(text=[item.prompt], images=[[item.image]], return_tensors="pt")
        if TILE_MASK in out:                             # (1, n, 3, H, W), (1, n, H, W)
            images = {"pixel_values": out["pixel_values"][0], TILE_MASK: out[TILE_MASK][0]}
        else:                                            # (patches, C·t·p·p), (1, 3)
            images = {"pixel_values": out["pixel_values"], GRID: out[GRID]}
    else:
        out = processor(text=[item.prompt], return_tensors="pt")
    tok = processor.tokenizer
    ids = out["input_ids"][0].tolist() + _ids_of(tok, item.prime)
    n_prompt = len(ids)
    types = out[TOKEN_TYPES][0].tolist() if TOKEN_TYPES in out else None
    if types is not None:
        types += [0] * (n_prompt - len(types))           # the prime is text
    if item.target is not None:
        tag, rest = _leading_tag(item.target) if not item.prime else ("", item.target)
        ids += _ids_of(tok, tag) + _ids_of(tok, rest) + [tok.eos_token_id]
    return Encoded(ids, n_prompt, images, types)


def _ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def encode_post(processor, post: Post, think: str = "auto", target: str | None = None,
                stats: ImageStats | None = None, max_prompt_tokens: int | None = None) -> Encoded:
    """render + encode one post; with `max_prompt_tokens`, cut to fit first (see the module
    docstring). Only a post that is too long pays for the search (a few more encodes)."""
    item = render(processor, post, think, target, stats)
    encoded = encode(processor, item)
    n_prime = len(_ids_of(processor.tokenizer, item.prime))
    if max_prompt_tokens is None or encoded.n_prompt - n_prime <= max_prompt_tokens:
        return encoded
    has_image = item.image is not None

    def prompt_of(text: str, ocr: str) -> str:
        return chat_prompt(processor, post.replace(text=text, ocr=ocr), has_image)

    def count(text: str, ocr: str) -> int:                # prompt tokens before the prime
        bare = dataclasses.replace(item, prompt=prompt_of(text, ocr), prime="", target=None)
        return encode(processor, bare).n_prompt

    fitted = fit(post.text, post.ocr, count, max_prompt_tokens)
    if stats is not None:
        stats.add_truncated(post.id)
    cut = dataclasses.replace(item, prompt=prompt_of(fitted.text, fitted.ocr))
    return dataclasses.replace(encode(processor, cut), truncated=True)


def _batch_images(items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """The batch's image tensors in the processor's layout (module docstring)."""
    real = [e for e in items if e.images is not None]
    if not real:
        return {}
    if GRID in real[0].images:                          # flat patches + grids: concatenate
        return {"pixel_values": torch.cat([e.images["pixel_values"] for e in real]),  # (P, C·t·p·p)
                GRID: torch.cat([e.images[GRID] for e in real])}                       # (I, 3)
    return _pad_tiles(real, items)


def _pad_tiles(real: Sequence[Encoded], items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """Stack per-post tiles into (B, N, 3, H, W) with zero tiles for padding (and text-only posts)."""
    n = max(e.pixel_values.shape[0] for e in real)
    h = max(e.pixel_values.shape[-2] for e in real)
    w = max(e.pixel_values.shape[-1] for e in real)
    c, dtype = real[0].pixel_values.shape[1], real[0].pixel_values.dtype
    pixels = torch.zeros(len(items), n, c, h, w, dtype=dtype)                 # (B, N, 3, H, W)
    mask = torch.zeros(len(items), n, h, w, dtype=real[0].images[TILE_MASK].dtype)  # (B, N, H, W)
    for b, e in enumerate(items):
        if e.pixel_values is not None:
            k, _, eh, ew = e.pixel_values.shape
            pixels[b, :k, :, :eh, :ew] = e.pixel_values
            mask[b, :k, :eh, :ew] = e.images[TILE_MASK]
    return {"pixel_values": pixels, TILE_MASK: mask}


def pad_batch(items: Sequence[Encoded], pad_id: int, side: str, labels: bool) -> dict[str, torch.Tensor]:
    """Pad to the longest item on `side` ("right" for training, "left" for generation)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)           # (B, T)
    attn = torch.zeros((len(items), width), dtype=torch.long)                 # (B, T)
    lab = torch.full((len(items), width), IGNORE, dtype=torch.long)           # (B, T)
    types = torch.zeros((len(items), width), dtype=torch.long)                # (B, T)
    for b, e in enumerate(items):
        n = len(e.input_ids)
        start = width - n if side == "left" else 0
        ids[b, start:start + n] = torch.tensor(e.input_ids)
        attn[b, start:start + n] = 1
        lab[b, start + e.n_prompt:start + n] = torch.tensor(e.input_ids[e.n_prompt:], dtype=torch.long)
        if e.token_types:
            types[b, start:start + len(e.token_types)] = torch.tensor(e.token_types)
    batch = {"input_ids": ids, "attention_mask": attn, **_batch_images(items)}
    if any(e.token_types is not None for e in items):
        batch[TOKEN_TYPES] = types
    if labels:
        batch["labels"] = lab
    return batch


def train_batch(processor, posts: Sequence[Post], targets: Sequence[str],
                stats: ImageStats | None = None, max_prompt_tokens: int | None = None
                ) -> dict[str, torch.Tensor]:
    """Right-padded batch with `labels` = target ids + eos, -100 elsewhere.

    `targets` are full target strings (`prompt.direct_target` / `prompt.reasoning_target`).
    """
    if len(posts) != len(targets):
        raise ValueError(f"{len(posts)} posts but {len(targets)} targets")
    items = [encode_post(processor, p, "auto", t, stats, max_prompt_tokens)
             for p, t in zip(posts, targets)]
    return pad_batch(items, processor.tokenizer.pad_token_id, "right", labels=True)


def prompt_batch(processor, posts: Sequence[Post], think: str = "off",
                 stats: ImageStats | None = None, max_prompt_tokens: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """Left-padded prompts (primed for `think`) ready for `model.generate`."""
    items = [encode_post(processor, p, think, None, stats, max_prompt_tokens) for p in posts]
    return pad_batch(items, processor.tokenizer.pad_token_id, "left", labels=False)


def target_token_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Number of supervised tokens per row (B,), e.g. to average a per-sample loss."""
    return (batch["labels"] != IGNORE).sum(dim=1)


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each row's supervised tokens (B,), e.g. the Dynamic-CoT gate's score.

    Same shift as the model's own loss (logits at t predict labels at t+1); a row without
    supervised tokens gets 0. Token-weighted, these average to the model's batch loss.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]                     # (B, T-1, V), (B, T-1)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                            reduction="none")                   # (B, T-1)
    counts = (labels != IGNORE).sum(dim=1)                                     # (B,)
    return nll.sum(dim=1) / counts.clamp(min=1)
