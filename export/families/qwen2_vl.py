"""The Qwen2-VL family at export: its graph wrappers and its manifest image section.

- Wrappers (export/qwen2_vl_wrappers.py): the vision tower on flat patches of any number of images
  of any sizes with their `image_grid_thw`, and the Qwen2 decoder on (3, B, T) M-RoPE positions;
  `GraphModules.vision_grid` / `position_axes` tell export.graphs (and the runtime, through the
  graphs' input names) that layout. The fused decoder writes Llama only, so `--decoder auto` keeps
  Qwen2-VL's traced (export.fused_decoder.supports refuses its text model type).
- `image_info`: Qwen2VLImageProcessor's settings under the manifest's Qwen2-VL keys
  (train.families.qwen2_vl's `image_settings`) and the token layout read off the prompt pieces:
  the template's one-pad image form with the pad replaced by `{image_tokens}`, which the runtime
  fills with grid_h·grid_w/merge² pads per image.
- Where the parts sit: `model.model.{visual, language_model}`, `model.lm_head`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mmkp_edge.families.qwen2_vl import token_string
from mmkp_edge.manifest import ImageInfo

from ..qwen2_vl_wrappers import graph_modules
from ..wrappers import GraphModules

if TYPE_CHECKING:
    from ..source import Source


class Qwen2VLExport:
    name: ClassVar[str] = "qwen2_vl"

    def vision_size(self, src: "Source") -> int:
        """The pixel step of resized sides (patch · merge); the vision graph takes any grid."""
        settings = src.family.image_settings(src.processor)
        return int(settings["patch_size"] * settings["merge_size"])

    def graph_modules(self, model, vision_size: int | None = None) -> GraphModules:
        return graph_modules(model)

    def image_info(self, src: "Source") -> ImageInfo:
        settings = src.family.image_settings(src.processor)
        pieces = src.family.prompt_pieces(src.processor)            # self-checked
        pad = settings["image_token"]
        return ImageInfo(
            size_longest_edge=0, max_image_size=0, tokens_per_image=settings["tokens_per_image"],
            token_string=token_string(pieces.image_string, pad), image_token=pad,
            tile_string="", do_resize=settings["do_resize"], resample=settings["resample"],
            do_rescale=settings["do_rescale"], rescale_factor=settings["rescale_factor"],
            do_normalize=settings["do_normalize"], image_mean=tuple(settings["image_mean"]),
            image_std=tuple(settings["image_std"]), do_image_splitting=False,
            patch_size=settings["patch_size"], merge_size=settings["merge_size"],
            temporal_patch_size=settings["temporal_patch_size"],
            min_pixels=settings["min_pixels"], max_pixels=settings["max_pixels"])
