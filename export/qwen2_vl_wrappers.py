"""Torch modules with flat I/O for Qwen2-VL's graphs (export/families/qwen2_vl.py builds them).

Qwen2-VL's vision tower cannot be traced as Hugging Face runs it: its rotary position ids and its
per-image attention segments are built from `image_grid_thw` with Python loops over `.tolist()`,
and the non-flash attention path splits the patch sequence by those lengths — all fixed at trace
time. `Qwen2VLVisionEncoder` computes the same things with tensor ops (each patch's image, frame,
row and column from the grid by integer arithmetic, a block-diagonal attention mask from the
frame index), then runs the tower's own submodules (patch embedding, rotary table, blocks' norms,
qkv/proj and MLPs, merger), so one graph takes any number of images of any sizes:

    pixel_values (N_patches, C·T·P·P) + image_grid_thw (n_images, 3)
        → image_features (N_patches / merge², hidden)

`Qwen2VLDecoder` is export.wrappers.Decoder with 3-axis M-RoPE position ids (3, B, T), which the
runtime computes (mmkp_edge.families.qwen2_vl); the text model takes them as given. The graphs'
names and axes are mmkp_edge.graph_io's with `vision_grid=True, position_axes=3`; export.graphs
traces them like every family's (the vision wrapper states its own dynamic shapes).

The vision mask is dense over all patches given (N_patches²), so the runtime calls the graph once
per image (mmkp_edge.graphs.Graphs.vision): 26 M booleans at Qwen2-VL's usual ≤ 1 280 tokens an
image (5 120 patches); several images in one call stay correct, at (ΣN)² cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

from mmkp_edge.graph_io import IMAGE_TOKENS, IMAGES

from .wrappers import Decoder, EmbedTokens, GraphModules, decoder_shape


def patch_layout(grid_thw: torch.Tensor, num_patches: int, merge_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch of the concatenated images: (row, column) in its image's patch grid (N, 2) and a
    segment id (N,) — its global frame index; attention stays inside a segment. Patches of one
    frame come in merge-block order: block row-major, then the merge×merge patches row-major."""
    t, h, w = grid_thw[:, 0], grid_thw[:, 1], grid_thw[:, 2]               # (I,) each
    frame_len = h * w                                                        # (I,)
    ends = torch.cumsum(t * frame_len, 0)                                    # (I,)
    starts = ends - t * frame_len                                            # (I,)
    first_frame = torch.cumsum(t, 0) - t                                     # (I,)
    idx = torch.arange(num_patches, device=grid_thw.device)                  # (N,)
    image = (idx[:, None] >= ends[None, :]).sum(-1)                          # (N,)
    local = idx - starts[image]                                              # (N,)
    n_frame = frame_len[image]                                               # (N,)
    within = local % n_frame                                                 # (N,)
    block, inner = within // (merge_size * merge_size), within % (merge_size * merge_size)
    blocks_w = w[image] // merge_size                                        # (N,)
    row = (block // blocks_w) * merge_size + inner // merge_size             # (N,)
    col = (block % blocks_w) * merge_size + inner % merge_size               # (N,)
    segment = first_frame[image] + local // n_frame                          # (N,)
    return torch.stack([row, col], dim=-1), segment


class Qwen2VLVisionEncoder(nn.Module):
    """pixel_values (N, C·T·P·P) + image_grid_thw (I, 3) → image_features (N/merge², hidden):
    `Qwen2VisionTransformerPretrainedModel.forward`'s math with the grid-dependent parts as tensor
    ops (see the module docstring)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        self.merge_size = int(visual.spatial_merge_size)
        embed = visual.patch_embed
        self.patch_dim = embed.in_channels * embed.temporal_patch_size * embed.patch_size ** 2

    def example(self, images: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random patches of `images` images of different grids (every grid side ≥ 2 merge
        blocks, so no axis is traced as a constant): (P, C·t·p·p) and (images, 3)."""
        m = self.merge_size
        grid = torch.tensor([[1, m * (i + 2), m * (i + 3)] for i in range(images)])   # (I, 3)
        patches = int(grid.prod(-1).sum())
        return torch.randn(patches, self.patch_dim, generator=generator), grid

    def dynamic_shapes(self) -> tuple[dict, dict]:
        """torch.export shapes: patches = merge² × image tokens (the merger's reshape needs that
        relation stated), any number of images."""
        tokens = torch.export.Dim(IMAGE_TOKENS)
        return ({0: self.merge_size ** 2 * tokens}, {0: torch.export.Dim(IMAGES)})

    def attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  allowed: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        qkv = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3)   # (3, N, H, hd)
        q, k, v = qkv.unbind(0)                                              # (N, H, hd) each
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        q, k, v = (a.transpose(0, 1)[None] for a in (q, k, v))               # (1, H, N, hd) each
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(1, n, -1))              # (1, N, Dv)

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        # The hidden states carry a leading axis of 1: a Linear on 3-D input is traced as
        # MatMul + Add (on 2-D it becomes Gemm, which int8 MatMulNBits quantization skips).
        visual = self.visual
        rows_cols, segment = patch_layout(image_grid_thw, pixel_values.shape[0], self.merge_size)
        allowed = segment[:, None] == segment[None, :]                       # (N, N) bool
        hidden = visual.patch_embed(pixel_values)                            # (N, Dv)
        cos, sin = visual.rotary_pos_emb(hidden, rows_cols)                  # (N, hd) each
        hidden = hidden[None]                                                # (1, N, Dv)
        for blk in visual.blocks:
            hidden = hidden + self.attention(blk.attn, blk.norm1(hidden), cos, sin, allowed)
            hidden = hidden + blk.mlp(blk.norm2(hidden))                     # (1, N, Dv)
        merger = visual.merger
        merged = merger.ln_q(hidden).reshape(1, -1, merger.hidden_size)      # (1, N/m², Dv·m²)
        return merger.mlp(merged)[0]                                         # (N/m², D)


class Qwen2VLDecoder(Decoder):
    """export.wrappers.Decoder, fed M-RoPE position_ids (3, B, T) instead of (B, T)."""


def graph_modules(model) -> GraphModules:
    """The three wrappers of a merged Qwen2VLForConditionalGeneration, with the graph layout
    options (patches + grids in, 3-axis positions)."""
    if model.config.model_type != "qwen2_vl":
        raise ValueError(f"expected a qwen2_vl model, got {model.config.model_type!r}")
    shape = decoder_shape(model)
    inner = model.model
    return GraphModules(
        vision_encoder=Qwen2VLVisionEncoder(inner.visual).eval(),
        embed_tokens=EmbedTokens(inner.language_model.get_input_embeddings()).eval(),
        decoder_model_merged=Qwen2VLDecoder(inner.language_model, model.lm_head,
                                            shape.num_layers).eval(),
        shape=shape, vision_grid=True, position_axes=3)
