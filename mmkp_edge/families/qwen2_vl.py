"""Qwen2-VL's numeric core for the torch-free runtime: image patches, image-token layout, M-RoPE.

Qwen2-VL differs from Idefics3 in the three places a runtime must reproduce bit for bit:
- Images keep (roughly) their own size: each is resized to multiples of patch·merge pixels inside a
  [min_pixels, max_pixels] budget, cut into patch_size² patches, and every patch is repeated
  temporal_patch_size times (an image is a one-frame video to the Conv3d patch embedding). The
  vision graph therefore takes a flat (num_patches, C·T·P·P) matrix plus each image's (t, h, w)
  patch grid, not fixed squares.
- One image becomes grid_t·grid_h·grid_w / merge² `<|image_pad|>` tokens, so the prompt's length
  depends on the image size; the chat template wraps them in `<|vision_start|>…<|vision_end|>`.
- Positions are 3-axis (temporal, height, width) "M-RoPE" ids: text advances all three axes
  together, an image's tokens take their row/column inside the merged grid. After an image the
  text continues from the image's start + max(grid_h, grid_w)/merge, so a row's last position is
  no longer its length - 1: the offset (`rope_delta`) is kept per row and every decode step's
  position is `past valid length + rope_delta` on all three axes.

`Qwen2VL` (the end of this module) is the family's runtime side behind
mmkp_edge.families.RuntimeFamily, built from a bundle manifest: its image section carries
`Qwen2VLImageSettings`' fields, a prepared image's grid is (t, h, w) in patches, and the vision
graph takes the patches with those grids (mmkp_edge.graph_io's vision_grid layout).

This is transformers 5.24's `Qwen2VLImageProcessorPil` (the PIL backend — the torchvision one
resizes with torch kernels a numpy runtime cannot mirror, and is absent beside the CPU torch
build), `Qwen2VLProcessor.replace_image_token` and `Qwen2VLModel.get_rope_index` plus generate()'s
decode-step rule, restated in numpy. tests/test_qwen2_vl_numeric.py checks each against HF on a
tiny random Qwen2-VL. numpy and PIL only: importing this module never loads torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from PIL import Image

from ..errors import InputError
from ..preprocess import Normalizer, PreparedImage

if TYPE_CHECKING:
    from ..manifest import ImageInfo, Manifest

VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP, Qwen2-VL's defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT = 200   # HF refuses images whose long/short edge ratio exceeds this


@dataclass(frozen=True)
class Qwen2VLImageSettings:
    """Qwen2-VL image preprocessing as data (what a bundle manifest's `image` section carries)."""
    patch_size: int = 14               # ViT patch side in pixels
    merge_size: int = 2                # merge² patches → one LM token; sides are multiples of patch·merge
    temporal_patch_size: int = 2       # frames per Conv3d patch: an image repeats its frame this often
    min_pixels: int = 56 * 56          # resized H·W at least this (HF size["shortest_edge"])
    max_pixels: int = 28 * 28 * 1280   # resized H·W at most this (HF size["longest_edge"])
    resample: int = 3                  # PIL resampling code (3 = BICUBIC)
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_dict(cls, data: dict) -> "Qwen2VLImageSettings":
        """From manifest JSON; unknown keys are refused (a typo must not fall back to a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Qwen2-VL image settings: {', '.join(unknown)}")
        values = dict(data)
        for key in ("image_mean", "image_std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values).validate()

    def to_dict(self) -> dict:
        out = asdict(self)
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        return out

    def validate(self) -> "Qwen2VLImageSettings":
        if min(self.patch_size, self.merge_size, self.temporal_patch_size) < 1:
            raise ValueError("patch_size, merge_size and temporal_patch_size must be positive")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError("need 0 < min_pixels <= max_pixels")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean / image_std need 3 values (std > 0)")
        return self

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this many pixels."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class PreparedQwenImage:
    pixel_values: np.ndarray     # (grid_h·grid_w, C·T·P·P) float32, patches in HF's merge-block order
    image_grid_thw: np.ndarray   # (1, 3) int64: (1, grid_h, grid_w) in patches
    num_image_tokens: int        # <|image_pad|> tokens in the prompt: grid_h·grid_w / merge²


def smart_resize(height: int, width: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
    """(height, width) after Qwen2-VL's resize: each side rounded to a multiple of `factor`
    (Python's round: ties to even), then scaled by √ of the area ratio — down with floor if the
    area exceeds max_pixels (never below one factor), up with ceil if it is under min_pixels."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.1f} exceeds "
                         f"{MAX_ASPECT} (Qwen2-VL refuses it)")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


class Qwen2VLImagePreprocessor:
    """RGB PIL image → (pixel_values, image_grid_thw) exactly as HF's Qwen2-VL PIL processor."""

    def __init__(self, settings: Qwen2VLImageSettings | dict):
        if isinstance(settings, dict):
            settings = Qwen2VLImageSettings.from_dict(settings)
        self.settings = settings.validate()
        self.normalize = Normalizer(settings.do_rescale, settings.rescale_factor,
                                    settings.do_normalize, settings.image_mean, settings.image_std)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.settings
        return smart_resize(height, width, s.factor, s.min_pixels, s.max_pixels)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """Resize (PIL on uint8), rescale (float64 → float32), normalise (float32): (3, H, W)."""
        s = self.settings
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        if s.do_resize:
            height, width = self.resized_size(image.height, image.width)
            image = image.resize((width, height), resample=s.resample)
        return self.normalize(np.asarray(image))                            # (3, H, W) float32

    def patchify(self, arr: np.ndarray) -> tuple[np.ndarray, int, int]:
        """(C, H, W) → (gh·gw, C·T·P·P). Rows run over merge blocks row-major, and inside a block
        over its merge×merge patches row-major (the PatchMerger later fuses each block's merge²
        consecutive rows into one token); a row is channel, then the T repeated frames, then the
        P×P pixels."""
        s = self.settings
        channels, height, width = arr.shape
        p, m, t = s.patch_size, s.merge_size, s.temporal_patch_size
        gh, gw = height // p, width // p
        if gh * p != height or gw * p != width or gh % m or gw % m:
            raise ValueError(f"{height}x{width} is not a multiple of patch_size·merge_size")
        blocks = arr.reshape(channels, gh // m, m, p, gw // m, m, p)          # (C, bh, m, P, bw, m, P)
        blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)                        # (bh, bw, m, m, C, P, P)
        frames = np.repeat(blocks[:, :, :, :, :, None], t, axis=5)           # (bh, bw, m, m, C, T, P, P)
        return frames.reshape(gh * gw, channels * t * p * p), gh, gw         # (N, C·T·P·P)

    def __call__(self, image: Image.Image) -> PreparedQwenImage:
        patches, gh, gw = self.patchify(self.to_array(image))
        grid = np.array([[1, gh, gw]], dtype=np.int64)                      # (1, 3)
        return PreparedQwenImage(pixel_values=np.ascontiguousarray(patches, dtype=np.float32),
                                 image_grid_thw=grid,
                                 num_image_tokens=image_token_count(grid, self.settings.merge_size))


# ---------------------------------------------------------------------------- image-token layout

def image_token_count(grid_thw, merge_size: int) -> int:
    """LM tokens one image becomes: t·h·w patches, merge² patches per token."""
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
    return t * h * w // merge_size ** 2


def token_string(image_string: str, image_token: str) -> str:
    """The manifest's `image.token_string`: the chat template's one-pad image form
    (start + pad + end) with its pad as "{image_tokens}"."""
    if image_string.count(image_token) != 1:
        raise ValueError(f"image string {image_string!r} does not hold {image_token!r} once")
    return image_string.replace(image_token, "{image_tokens}")


def image_token_string(token_string: str, image_token: str, num_tokens: int) -> str:
    """One image in the prompt text: the pad repeated to `num_tokens`, as the processor expands
    the template's start + pad + end. The runtime (`Qwen2VL.image_text`) and the training-side
    self-check (train.families.qwen2_vl) both expand through here."""
    if num_tokens < 1:
        raise ValueError("an image needs at least one token")
    return token_string.replace("{image_tokens}", image_token * num_tokens)


# ---------------------------------------------------------------------------- M-RoPE position ids

def _runs(is_image: np.ndarray) -> list[tuple[bool, int, int]]:
    """Maximal runs of equal values: (is_image, start, end)."""
    edges = np.flatnonzero(np.diff(is_image.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [is_image.size]])
    return [(bool(is_image[a]), int(a), int(b)) for a, b in zip(starts, ends)]


def _image_positions(start: int, grid_thw, merge_size: int) -> np.ndarray:
    """(3, t·(h/m)·(w/m)) positions of one image's tokens, all offset by `start`."""
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
    lt, lh, lw = t, h // merge_size, w // merge_size
    tt, hh, ww = np.meshgrid(np.arange(lt), np.arange(lh), np.arange(lw), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()]).astype(np.int64) + start   # (3, n)


def mrope_position_ids(input_ids: np.ndarray, attention_mask: np.ndarray | None,
                       image_grid_thw: np.ndarray | None, *, image_token_id: int,
                       merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt positions and per-row deltas: position_ids (3, B, T) int64, rope_deltas (B,) int64.

    Per row, over its attended tokens only (left or right padding; pads get 0 as HF writes them —
    they are masked, so any value would do): a run of text of length L takes positions c..c+L-1
    on all three axes and moves c by L; a run of image-pad tokens takes the next grid of
    `image_grid_thw` (images are consumed in batch order, row by row, left to right) and gets
    (c + frame, c + row, c + column) of the merged grid, then c moves by max(h, w)/merge.
    rope_delta = (largest position + 1) - valid length: 0 for text-only rows, whose positions are
    then the ordinary cumsum(mask) - 1."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError("input_ids must be (B, T)")
    batch, length = ids.shape
    mask = np.ones_like(ids, dtype=bool) if attention_mask is None else \
        np.asarray(attention_mask).astype(bool)                              # (B, T)
    grids = iter(np.zeros((0, 3), np.int64) if image_grid_thw is None
                 else np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3))
    positions = np.zeros((3, batch, length), dtype=np.int64)                # (3, B, T)
    deltas = np.zeros(batch, dtype=np.int64)                                # (B,)
    for b in range(batch):
        row = ids[b, mask[b]]                                               # (valid,)
        if row.size == 0:
            raise ValueError(f"row {b} has no attended token")
        pieces, cur = [], 0
        for is_image, start, end in _runs(row == image_token_id):
            if not is_image:
                pieces.append(np.broadcast_to(np.arange(cur, cur + end - start), (3, end - start)))
                cur += end - start
                continue
            grid = next(grids, None)
            if grid is None:
                raise ValueError("more image-token runs than image_grid_thw rows")
            if image_token_count(grid, merge_size) != end - start:
                raise ValueError(f"row {b}: an image run of {end - start} tokens does not match "
                                 f"grid {grid.tolist()} (merge {merge_size})")
            pieces.append(_image_positions(cur, grid, merge_size))
            cur += max(int(grid[1]), int(grid[2])) // merge_size
        row_pos = np.concatenate(pieces, axis=1)                            # (3, valid)
        positions[:, b, mask[b]] = row_pos
        deltas[b] = row_pos.max() + 1 - row.size
    if next(grids, None) is not None:
        raise ValueError("image_grid_thw has more rows than the prompts have images")
    return positions, deltas


def decode_position_ids(past_valid_lengths: np.ndarray, rope_deltas: np.ndarray) -> np.ndarray:
    """(3, B, 1) int64 positions of the next token: past valid length + rope_delta, the same on
    all three axes. `past_valid_lengths` counts each row's attended
    tokens so far (prompt without pads + tokens generated), i.e. attention_mask.sum(-1) before the
    new columns. Equals generate()'s "previous position + 1" whenever the prompt ends in text (our
    chat templates always end with the assistant header)."""
    base = np.asarray(past_valid_lengths, dtype=np.int64) + np.asarray(rope_deltas, dtype=np.int64)
    return np.broadcast_to(base[:, None], (3, base.shape[0], 1)).copy()     # (3, B, 1)


# ---------------------------------------------------------------------------- the runtime family

def settings_from_manifest(info: "ImageInfo") -> Qwen2VLImageSettings:
    """The preprocessing settings a qwen2_vl manifest's image section records."""
    return Qwen2VLImageSettings(
        patch_size=info.patch_size, merge_size=info.merge_size,
        temporal_patch_size=info.temporal_patch_size, min_pixels=info.min_pixels,
        max_pixels=info.max_pixels, resample=info.resample, rescale_factor=info.rescale_factor,
        image_mean=tuple(info.image_mean), image_std=tuple(info.image_std),
        do_resize=info.do_resize, do_rescale=info.do_rescale,
        do_normalize=info.do_normalize).validate()


class Qwen2VL:
    """The runtime side of the Qwen2-VL family (mmkp_edge.families.RuntimeFamily): patches +
    (t, h, w) grids, pads by image size, M-RoPE prompt positions with per-row rope deltas."""

    name: ClassVar[str] = "qwen2_vl"

    def __init__(self, manifest: "Manifest"):
        self.info = manifest.image
        self.settings = settings_from_manifest(manifest.image)
        self.image_token_id = int(manifest.special_tokens.image)
        self._pre = Qwen2VLImagePreprocessor(self.settings)

    @classmethod
    def check_manifest(cls, manifest: "Manifest") -> None:
        image = manifest.image
        if "{image_tokens}" not in image.token_string:
            raise InputError("manifest: image.token_string needs {image_tokens}")
        try:
            settings_from_manifest(image)
        except ValueError as exc:
            raise InputError(f"manifest: qwen2_vl image settings: {exc}") from None

    def preprocess(self, image: Image.Image) -> PreparedImage:
        """RGB image → patches (gh·gw, C·t·p·p) float32 and grid (1, gh, gw)."""
        prepared = self._pre(image)
        return PreparedImage(pixel_values=prepared.pixel_values,
                             grid=tuple(int(v) for v in prepared.image_grid_thw[0]))

    def image_tokens(self, grid: tuple[int, ...]) -> int:
        return image_token_count(grid, self.settings.merge_size)

    def image_text(self, grid: tuple[int, ...]) -> str:
        return image_token_string(self.info.token_string, self.info.image_token,
                                  self.image_tokens(grid))

    def prompt_positions(self, ids: np.ndarray, mask: np.ndarray,
                         grids: Sequence[Sequence[tuple[int, ...]]] = ()
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(3, B, L) M-RoPE ids and rope deltas (B,); `grids[b]` are row b's images in order."""
        flat = [g for row in grids for g in row]
        thw = np.asarray(flat, dtype=np.int64).reshape(-1, 3) if flat else None   # (I, 3)
        return mrope_position_ids(ids, mask, thw, image_token_id=self.image_token_id,
                                  merge_size=self.settings.merge_size)

    def step_positions(self, mask: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """mask (B, S) with the new token's column → (3, B, 1)."""
        return decode_position_ids(mask.sum(axis=1) - 1, deltas)            # (3, B, 1)

    def mlx_graphs(self, root, manifest: "Manifest"):
        raise InputError("MLX bundles are written for idefics3 students only; export this "
                         "qwen2_vl student as an ONNX bundle")
