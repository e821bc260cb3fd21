"""The bundle's graph I/O names, written once (transformers.js layout; DESIGN.md §2 "Bundle").

Export writes graphs with exactly these input, output and dynamic-axis names, the runtime binds
them, the tests build tiny graphs with them and bench reads them. The runtime cannot import export,
so the one copy lives here, in plain Python (no onnx, no torch): `graph_io(num_layers)` is the
whole contract, and export's tracing, export's parity check and the runtime's I/O check all read it.

    vision_encoder        pixel_values (num_images, 3, S, S) → image_features (num_images, tok, D)
    embed_tokens          input_ids (B, T) → inputs_embeds (B, T, D)
    decoder_model_merged  inputs_embeds (B, T, D), attention_mask (B, past+T), position_ids (B, T),
                          past_key_values.{i}.key|value (B, kv, past, hd)
                          → logits (B, V), present.{i}.key|value (B, kv, past+T, hd)

Two options cover families whose images or positions are shaped otherwise (Qwen2-VL):
`vision_grid=True` — the vision graph takes flat patches of images of any sizes plus each image's
patch grid, pixel_values (num_patches, C·t·p·p) + image_grid_thw (num_images, 3) → image_features
(num_image_tokens, D); `position_axes=3` — position_ids is (3, B, T) (M-RoPE's temporal, height,
width axes). The defaults are the layout above, so existing bundles keep their names and axes.
"""

from __future__ import annotations

from dataclasses import dataclass

# graphs (manifest `graphs` keys; file = name + ".onnx")
VISION, EMBED, DECODER = "vision_encoder", "embed_tokens", "decoder_model_merged"
GRAPH_NAMES = (VISION, EMBED, DECODER)
GRAPH_FILES = {name: f"{name}.onnx" for name in GRAPH_NAMES}

# tensors
PIXEL_VALUES, IMAGE_FEATURES, IMAGE_GRID_THW = "pixel_values", "image_features", "image_grid_thw"
INPUT_IDS, INPUTS_EMBEDS = "input_ids", "inputs_embeds"
ATTENTION_MASK, POSITION_IDS, LOGITS = "attention_mask", "position_ids", "logits"

# dynamic axes
BATCH, SEQ, PAST, TOTAL, IMAGES = ("batch_size", "sequence_length", "past_sequence_length",
                                   "total_sequence_length", "num_images")
PATCHES, IMAGE_TOKENS = "num_patches", "num_image_tokens"    # vision_grid graphs


def past_names(num_layers: int) -> list[str]:
    """The decoder's past K/V input names, in graph order (layer 0 key, layer 0 value, …)."""
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    """The decoder's present K/V output names, in the same order as `past_names`."""
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: dict[str, dict[int, str]]     # tensor name → {axis: dynamic axis name}


def graph_io(num_layers: int, *, vision_grid: bool = False, position_axes: int = 1
             ) -> dict[str, GraphIO]:
    """Names and dynamic axes of every graph's inputs and outputs, in graph order (the options:
    module docstring)."""
    if position_axes < 1:
        raise ValueError("position_axes must be at least 1")
    past, present = past_names(num_layers), present_names(num_layers)
    lead = 0 if position_axes == 1 else 1                 # (B, T) or (A, B, T)
    decoder_axes = {INPUTS_EMBEDS: {0: BATCH, 1: SEQ}, ATTENTION_MASK: {0: BATCH, 1: TOTAL},
                    POSITION_IDS: {lead: BATCH, lead + 1: SEQ}, LOGITS: {0: BATCH}}
    decoder_axes.update({n: {0: BATCH, 2: PAST} for n in past})
    decoder_axes.update({n: {0: BATCH, 2: TOTAL} for n in present})
    vision = (GraphIO((PIXEL_VALUES, IMAGE_GRID_THW), (IMAGE_FEATURES,),
                      {PIXEL_VALUES: {0: PATCHES}, IMAGE_GRID_THW: {0: IMAGES},
                       IMAGE_FEATURES: {0: IMAGE_TOKENS}}) if vision_grid else
              GraphIO((PIXEL_VALUES,), (IMAGE_FEATURES,),
                      {PIXEL_VALUES: {0: IMAGES}, IMAGE_FEATURES: {0: IMAGES}}))
    return {
        VISION: vision,
        EMBED: GraphIO((INPUT_IDS,), (INPUTS_EMBEDS,),
                       {INPUT_IDS: {0: BATCH, 1: SEQ}, INPUTS_EMBEDS: {0: BATCH, 1: SEQ}}),
        DECODER: GraphIO((INPUTS_EMBEDS, ATTENTION_MASK, POSITION_IDS, *past),
                         (LOGITS, *present), decoder_axes),
    }
