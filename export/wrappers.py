"""Torch modules with exactly the inputs and outputs of the bundle's three graphs.

Hugging Face models take nested, optional, data-dependent arguments (a Cache object, padded image
batches, patch masks computed from pixel values); ONNX graphs need flat tensors with fixed names.
These wrappers are the translation, and they are also the torch side of export's parity check, so
a graph is only ever compared against the very module it was traced from.

- `VisionEncoder`: pixel_values (N, 3, S, S) → image_features (N, tokens_per_image, hidden). The
  runtime always feeds whole square tiles of side S, so every patch is real: no patch mask, and the
  patch position ids are a constant, read once from the model's own embeddings run eagerly on a
  whole tile. Tracing Idefics3's position bucketing instead broke every grid side that is not a
  power of two (6×6, SmolVLM2's 27×27): its `torch.arange(1/n, 1, 1/n)` has n-1 or n elements
  depending on rounding — torch sizes it in float64 (n for n = 6, 27), ONNX's Range computes it in
  float32 (n-1) — so the graph's unrolled bucketize read one past the end (GatherND "invalid
  index found, index = 5").
- `EmbedTokens`: input_ids (B, T) → inputs_embeds (B, T, hidden).
- `Decoder`: inputs_embeds, attention_mask (B, past+T), position_ids (B, T), flat past K/V
  (B, kv, past, hd) × 2·layers → last-token logits (B, vocab) and the updated K/V. A
  `DynamicCache` is built inside `forward` from the flat tensors, so the graph has no Python object
  inputs and one graph serves both prefill (past = 0) and decoding (T = 1).

Family specifics (where the vision tower, connector and language model sit) come from
`family_parts`; adding a family is one more branch there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from mmkp_edge.errors import InputError


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


def whole_tile_position_ids(embeddings: nn.Module, tile_size: int) -> torch.Tensor:
    """The patch position ids (P,) Idefics3's vision embeddings give a whole tile of side
    `tile_size`: the module is run once, eagerly, and the ids reaching its position embedding are
    recorded, so they are exactly what the student computes (for a whole tile, 0..P-1)."""
    seen: list[torch.Tensor] = []
    hook = embeddings.position_embedding.register_forward_hook(
        lambda _module, args, _out: seen.append(args[0]))
    side = tile_size // embeddings.patch_size
    weight = embeddings.patch_embedding.weight
    try:
        with torch.no_grad():
            embeddings(pixel_values=torch.zeros(1, weight.shape[1], tile_size, tile_size,
                                                dtype=weight.dtype, device=weight.device),
                       patch_attention_mask=torch.ones(1, side, side, dtype=torch.bool,
                                                       device=weight.device))
    finally:
        hook.remove()
    return seen[0][0].clone()                                                # (P,)


class VisionEncoder(nn.Module):
    """Idefics3 / SmolVLM: SigLIP tower on whole square tiles, then pixel-shuffle connector.

    The same computation as the vision tower's forward for an all-ones patch mask (patch
    embedding + position embedding → encoder without a mask → post layer norm), with the position
    ids as a constant buffer (see the module docstring)."""

    def __init__(self, vision_model: nn.Module, connector: nn.Module, tile_size: int):
        super().__init__()
        self.vision_model = vision_model
        self.connector = connector
        self.tile_size = tile_size
        self.register_buffer("position_ids",
                             whole_tile_position_ids(vision_model.embeddings, tile_size),
                             persistent=False)                               # (P,)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.vision_model.embeddings
        patches = embeddings.patch_embedding(pixel_values)                  # (N, Dv, S/p, S/p)
        hidden = patches.flatten(2).transpose(1, 2)                          # (N, P, Dv)
        hidden = hidden + embeddings.position_embedding(self.position_ids)   # (N, P, Dv)
        hidden = self.vision_model.encoder(inputs_embeds=hidden).last_hidden_state   # (N, P, Dv)
        hidden = self.vision_model.post_layernorm(hidden)                    # (N, P, Dv)
        return self.connector(hidden)                                        # (N, tokens, D)


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
    vision_encoder: VisionEncoder
    embed_tokens: EmbedTokens
    decoder_model_merged: Decoder
    shape: DecoderShape


def family_parts(model, tile_size: int | None = None) -> GraphModules:
    """The three wrappers for a merged (plain, non-peft) image-text-to-text model; `tile_size` is
    the side of the tiles the runtime feeds (the processor's, default the vision config's)."""
    model_type = model.config.model_type
    if model_type not in ("idefics3", "smolvlm"):
        raise InputError(f"export supports the idefics3 / smolvlm families; got model_type "
                         f"{model_type!r}")
    if hasattr(model, "peft_config"):
        raise InputError("export needs a merged model (call train.lora merge first), not a peft model")
    inner = model.model
    shape = decoder_shape(model)
    return GraphModules(
        vision_encoder=VisionEncoder(inner.vision_model, inner.connector,
                                     tile_size or model.config.vision_config.image_size).eval(),
        embed_tokens=EmbedTokens(inner.text_model.get_input_embeddings()).eval(),
        decoder_model_merged=Decoder(inner.text_model, model.lm_head, shape.num_layers).eval(),
        shape=shape)
