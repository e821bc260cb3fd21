"""The SmolVLM / Idefics3 family at export: its vision wrapper and its manifest image section.

- `VisionEncoder`: pixel_values (N, 3, S, S) → image_features (N, tokens_per_image, hidden). The
  runtime always feeds whole square tiles of side S, so every patch is real: no patch mask, and the
  patch position ids are a constant, read once from the model's own embeddings run eagerly on a
  whole tile. Tracing Idefics3's position bucketing instead broke every grid side that is not a
  power of two (6×6, SmolVLM2's 27×27): its `torch.arange(1/n, 1, 1/n)` has n-1 or n elements
  depending on rounding — torch sizes it in float64 (n for n = 6, 27), ONNX's Range computes it in
  float32 (n-1) — so the graph's unrolled bucketize read one past the end (GatherND "invalid
  index found, index = 5").
- `image_info`: Idefics3ImageProcessor's settings (train.families' `image_settings`, already under
  the manifest's names) plus how one image expands into tokens — the global view's string from the
  processor itself, and the tile string Idefics3Processor writes when splitting.
- Where the parts sit: `model.model.{vision_model, connector, text_model}`, `model.lm_head`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from mmkp_edge.manifest import ImageInfo

from ..wrappers import Decoder, EmbedTokens, GraphModules, decoder_shape

if TYPE_CHECKING:
    from ..source import Source


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

    def example(self, images: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Random inputs for tracing and the parity check: `images` whole tiles."""
        return (torch.randn(images, 3, self.tile_size, self.tile_size, generator=generator),)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.vision_model.embeddings
        patches = embeddings.patch_embedding(pixel_values)                  # (N, Dv, S/p, S/p)
        hidden = patches.flatten(2).transpose(1, 2)                          # (N, P, Dv)
        hidden = hidden + embeddings.position_embedding(self.position_ids)   # (N, P, Dv)
        hidden = self.vision_model.encoder(inputs_embeds=hidden).last_hidden_state   # (N, P, Dv)
        hidden = self.vision_model.post_layernorm(hidden)                    # (N, P, Dv)
        return self.connector(hidden)                                        # (N, tokens, D)


class Idefics3Export:
    name: ClassVar[str] = "idefics3"

    def vision_size(self, src: "Source") -> int:
        return int(src.family.image_settings(src.processor)["max_image_size"])

    def graph_modules(self, model, vision_size: int | None = None) -> GraphModules:
        inner = model.model
        shape = decoder_shape(model)
        return GraphModules(
            vision_encoder=VisionEncoder(inner.vision_model, inner.connector,
                                         vision_size or model.config.vision_config.image_size).eval(),
            embed_tokens=EmbedTokens(inner.text_model.get_input_embeddings()).eval(),
            decoder_model_merged=Decoder(inner.text_model, model.lm_head, shape.num_layers).eval(),
            shape=shape)

    def image_info(self, src: "Source") -> ImageInfo:
        """Idefics3ImageProcessor settings + how one image expands into tokens."""
        settings = src.family.image_settings(src.processor)
        image_token = settings["image_token"]
        tokens = image_token * settings["tokens_per_image"]
        unsplit = src.family.image_string(src.processor)                  # global view as text
        if unsplit.count(tokens) != 1:
            raise ValueError(f"image string {unsplit[:80]!r}… does not hold the image tokens once")
        fake = getattr(src.processor, "fake_image_token", "<fake_token_around_image>")
        return ImageInfo(
            size_longest_edge=settings["size_longest_edge"], max_image_size=settings["max_image_size"],
            tokens_per_image=settings["tokens_per_image"],
            token_string=unsplit.replace(tokens, "{image_tokens}"), image_token=image_token,
            tile_string=f"{fake}<row_{{row}}_col_{{col}}>{{image_tokens}}",
            row_separator="\n", global_prefix="\n",
            do_resize=settings["do_resize"], resample=settings["resample"],
            do_rescale=settings["do_rescale"], rescale_factor=settings["rescale_factor"],
            do_normalize=settings["do_normalize"], image_mean=tuple(settings["image_mean"]),
            image_std=tuple(settings["image_std"]), do_image_splitting=settings["do_image_splitting"])
