"""Torch modules with exactly the inputs and outputs of the bundle's three graphs.

Hugging Face models take nested, optional, data-dependent arguments (a Cache object, padded image
batches, patch masks computed from pixel values); ONNX graphs need flat tensors with fixed names.
These wrappers are the translation, and they are also the torch side of export's parity check, so
a graph is only ever compared against the very module it was traced from.

- `vision_encoder`: pixel_values → image_features; the module is the family's
  (export/families/<family>.py: Idefics3's runs SigLIP + connector on whole square tiles), with
  `example(images, generator)` giving random inputs of the shape the runtime feeds.
- `EmbedTokens`: input_ids (B, T) → inputs_embeds (B, T, hidden).
- `Decoder`: inputs_embeds, attention_mask (B, past+T), position_ids (B, T) (or (3, B, T) for an
  M-RoPE text model, which takes them as given), flat past K/V
  (B, kv, past, hd) × 2·layers → last-token logits (B, vocab) and the updated K/V. A
  `DynamicCache` is built inside `forward` from the flat tensors, so the graph has no Python object
  inputs and one graph serves both prefill (past = 0) and decoding (T = 1).

Family specifics (where the vision tower, connector and language model sit, and the vision
wrapper itself) live in export/families: `export.families.family_parts(model)` builds the three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache


@dataclass(frozen=True)
class DecoderShape:
    num_layers: int      # decoder layers: past_key_values.{0..n-1}.key|value
    num_kv_heads: int    # GQA key/value heads
    head_dim: int
    hidden_size: int
    vocab_size: int


def decoder_shape(model) -> DecoderShape:
    """Layer / head / width counts of the model's text decoder (from its config)."""
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return DecoderShape(num_layers=text.num_hidden_layers,
                        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                        head_dim=head_dim, hidden_size=text.hidden_size, vocab_size=text.vocab_size)


class EmbedTokens(nn.Module):
    def __init__(self, embedding: nn.Module):
        super().__init__()
        self.embedding = embedding

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)                                     # (B, T, D)


class Decoder(nn.Module):
    """Flat past K/V in, last-token logits and present K/V out (transformers.js I/O)."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Module, num_layers: int):
        super().__init__()
        self.language_model = language_model
        self.lm_head = lm_head
        self.num_layers = num_layers

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache()
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)      # (B, kv, P, hd) each
        out = self.language_model(inputs_embeds=inputs_embeds,              # (B, T, D)
                                  attention_mask=attention_mask,            # (B, P+T)
                                  position_ids=position_ids,                # (B, T)
                                  cache=cache, use_cache=True)
        logits = self.lm_head(out.last_hidden_state[:, -1:, :])[:, 0, :]    # (B, V)
        present: list[torch.Tensor] = []
        for layer in out.cache.layers[: self.num_layers]:
            present += [layer.keys, layer.values]                           # (B, kv, P+T, hd) each
        return (logits, *present)


@dataclass
class GraphModules:
    vision_encoder: nn.Module            # the family's vision wrapper (export/families)
    embed_tokens: EmbedTokens
    decoder_model_merged: Decoder
    shape: DecoderShape
    vision_grid: bool = False            # the vision graph takes patches + image_grid_thw
                                         # (mmkp_edge.graph_io's options; Qwen2-VL)
    position_axes: int = 1               # position_ids (B, T), or (A, B, T) for M-RoPE (A = 3)
