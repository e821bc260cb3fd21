"""Image preprocessing in numpy + PIL, identical to the student's Hugging Face image processor.

The runtime must feed the vision graph exactly the pixels the student saw in training, without
transformers. This is Idefics3ImageProcessor (its PIL backend, transformers 5.x) step for step:
resize the longest edge to `size_longest_edge` (evened, capped at 4096), then either resize to
one `max_image_size` square or — with image splitting — resize up to multiples of `max_image_size`,
cut row-major tiles and append a square global view; rescale in float64 → float32; normalise in
float32. Every resize goes through PIL on uint8 RGB, as HF's does. tests/test_runtime_preprocess.py
compares the result with the HF processor on many random images (max abs diff ≤ 1e-5).

Opening the file (EXIF orientation, modes, decompression bombs) is mmkp_edge.images' job; this
module starts from an RGB PIL image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .manifest import ImageInfo

HF_MAX_IMAGE_SIZE = 4096   # Idefics3's absolute cap on the first resize


@dataclass(frozen=True)
class PreparedImage:
    pixel_values: np.ndarray   # (N, 3, S, S) float32: R·C tiles row-major, then the global view
    rows: int                  # tile rows (0 = not split)
    cols: int                  # tile columns (0 = not split)


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Longest edge → max_len keeping the aspect ratio; the other edge rounded up to even."""
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        if height % 2:
            height += 1
    else:
        height = max_len
        width = int(height * aspect)
        if width % 2:
            width += 1
    return max(height, 1), max(width, 1)


def _scale_below(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Shrink so neither edge exceeds max_len (aspect kept, truncating)."""
    aspect = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect)
    return max(height, 1), max(width, 1)


def _multiple_of(height: int, width: int, side: int) -> tuple[int, int]:
    """Idefics3's resize_for_vision_encoder size: both edges rounded up to multiples of `side`."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / side) * side
        height = math.ceil(int(width / aspect) / side) * side
    else:
        height = math.ceil(height / side) * side
        width = math.ceil(int(height * aspect) / side) * side
    return height, width


class ImagePreprocessor:
    """RGB PIL image → pixel_values for the vision graph, per the manifest's `image` section."""

    def __init__(self, info: ImageInfo):
        self.info = info
        self.mean = np.asarray(info.image_mean, dtype=np.float32)[:, None, None]   # (3, 1, 1)
        self.std = np.asarray(info.image_std, dtype=np.float32)[:, None, None]     # (3, 1, 1)

    def _resize(self, img: Image.Image, height: int, width: int) -> Image.Image:
        return img.resize((width, height), resample=self.info.resample)

    def frames(self, image: Image.Image) -> tuple[list[Image.Image], int, int]:
        """The resized uint8 frames the vision encoder sees, and the tile grid (rows, cols)."""
        info = self.info
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        img = image
        if info.do_resize:
            h, w = _rescale_to_max_len(img.height, img.width, info.size_longest_edge)
            h, w = _scale_below(h, w, HF_MAX_IMAGE_SIZE)
            img = self._resize(img, h, w)
        side = info.max_image_size
        if not info.do_image_splitting:
            return [self._resize(img, side, side)], 0, 0
        img = self._resize(img, *_multiple_of(img.height, img.width, side))
        if img.height <= side and img.width <= side:
            return [img], 0, 0
        rows = (img.height - side) // side + 1
        cols = (img.width - side) // side + 1
        tiles = [img.crop((c * side, r * side, (c + 1) * side, (r + 1) * side))
                 for r in range(rows) for c in range(cols)]
        return tiles + [self._resize(img, side, side)], rows, cols

    def to_array(self, frame: Image.Image) -> np.ndarray:
        """One uint8 frame → rescaled, normalised float32 (3, S, S)."""
        arr = np.asarray(frame).transpose(2, 0, 1)                          # (3, S, S) uint8
        if self.info.do_rescale:
            arr = (arr.astype(np.float64) * self.info.rescale_factor).astype(np.float32)
        if self.info.do_normalize:
            arr = (arr.astype(np.float32, copy=False) - self.mean) / self.std
        return arr.astype(np.float32, copy=False)

    def __call__(self, image: Image.Image) -> PreparedImage:
        frames, rows, cols = self.frames(image)
        pixels = np.stack([self.to_array(f) for f in frames])               # (N, 3, S, S)
        return PreparedImage(pixel_values=pixels, rows=rows, cols=cols)
