"""Image preprocessing shared by every family: the prepared-image type and the pixel arithmetic.

A family's preprocessing (mmkp_edge/families/<family>.py) decides the geometry — Idefics3 resizes
and cuts square tiles, Qwen2-VL resizes to a patch grid and flattens patches — and hands back a
`PreparedImage`: the vision graph's `pixel_values` for one image plus the family's layout `grid`,
from which the same family derives the image's tokens in the prompt and their position ids. The
last step every Hugging Face image processor shares (uint8 → × rescale_factor in float64 →
float32 → (x − mean) / std in float32) is written once here, so families match HF bit for bit.

Opening the file (EXIF orientation, modes, decompression bombs) is mmkp_edge.images' job; a family
starts from an RGB PIL image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PreparedImage:
    pixel_values: np.ndarray   # what the vision graph's pixel_values takes for this image, e.g.
                               # (N, 3, S, S) tiles (Idefics3) or (patches, C·t·p·p) (Qwen2-VL)
    grid: tuple[int, ...]      # the family's layout: (rows, cols) of tiles, or (t, h, w) patches


class Normalizer:
    """uint8 HWC frame → rescaled, normalised float32 CHW, as HF image processors compute it."""

    def __init__(self, do_rescale: bool, rescale_factor: float, do_normalize: bool,
                 mean, std):
        self.do_rescale, self.rescale_factor = do_rescale, rescale_factor
        self.do_normalize = do_normalize
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]           # (3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]             # (3, 1, 1)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        arr = np.asarray(frame).transpose(2, 0, 1)                              # (3, H, W) uint8
        if self.do_rescale:
            arr = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            arr = (arr.astype(np.float32, copy=False) - self.mean) / self.std
        return arr.astype(np.float32, copy=False)                               # (3, H, W)
