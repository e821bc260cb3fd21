"""The SmolVLM / Idefics3 family at run time: tiles, the image-token layout, 1-D positions.

Preprocessing is Idefics3ImageProcessor (its PIL backend, transformers 5.x) step for step: resize
the longest edge to `size_longest_edge` (evened, capped at 4096), then either resize to one
`max_image_size` square or — with image splitting — resize up to multiples of `max_image_size`,
cut row-major tiles and append a square global view; rescale and normalise (mmkp_edge.preprocess).
Every resize goes through PIL on uint8 RGB, as HF's does. tests/test_runtime_preprocess.py compares
the result with the HF processor on many random images (max abs diff ≤ 1e-5).

The image's text is Idefics3Processor's expansion, filled from the manifest's `image` section: the
global view alone (`token_string`), or R×C `tile_string`s row by row, then the global view. The
decoder is a plain Llama with 1-D RoPE, so positions are `mmkp_edge.positions`' rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from PIL import Image

from ..errors import InputError
from ..positions import TEXT_POSITIONS
from ..preprocess import Normalizer, PreparedImage

if TYPE_CHECKING:
    from ..manifest import ImageInfo, Manifest

HF_MAX_IMAGE_SIZE = 4096   # Idefics3's absolute cap on the first resize


class TiledImage(PreparedImage):
    """pixel_values (N, 3, S, S) float32: R·C tiles row-major, then the global view;
    grid = (rows, cols), (0, 0) when not split."""

    @property
    def rows(self) -> int:
        return self.grid[0]

    @property
    def cols(self) -> int:
        return self.grid[1]


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
    """RGB PIL image → TiledImage for the vision graph, per the manifest's `image` section."""

    def __init__(self, info: "ImageInfo"):
        self.info = info
        self.normalize = Normalizer(info.do_rescale, info.rescale_factor, info.do_normalize,
                                    info.image_mean, info.image_std)

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
        return self.normalize(np.asarray(frame))

    def __call__(self, image: Image.Image) -> TiledImage:
        frames, rows, cols = self.frames(image)
        pixels = np.stack([self.to_array(f) for f in frames])               # (N, 3, S, S)
        return TiledImage(pixel_values=pixels, grid=(rows, cols))


def image_token_string(info: "ImageInfo", rows: int = 0, cols: int = 0) -> str:
    """What replaces `{image}`: the global view alone, or R×C tiles (row-major) then the global view."""
    tokens = info.image_token * info.tokens_per_image
    global_view = info.token_string.replace("{image_tokens}", tokens)
    if rows == 0 and cols == 0:
        return global_view
    out = ""
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            out += (info.tile_string.replace("{row}", str(r)).replace("{col}", str(c))
                    .replace("{image_tokens}", tokens))
        out += info.row_separator
    return out + info.global_prefix + global_view


class Idefics3:
    """The runtime side of the Idefics3 / SmolVLM family (mmkp_edge.families.RuntimeFamily)."""

    name: ClassVar[str] = "idefics3"

    def __init__(self, manifest: "Manifest"):
        self.info = manifest.image
        self.preprocess = ImagePreprocessor(self.info)

    @classmethod
    def check_manifest(cls, manifest: "Manifest") -> None:
        image = manifest.image
        if "{image_tokens}" not in image.token_string:
            raise InputError("manifest: image.token_string needs {image_tokens}")
        if image.do_image_splitting and "{image_tokens}" not in image.tile_string:
            raise InputError("manifest: image.tile_string needs {image_tokens} when splitting")
        if min(image.max_image_size, image.tokens_per_image, image.size_longest_edge) < 1:
            raise InputError("manifest: image sizes and tokens_per_image must be positive")

    # ------------------------------------------------------------ image tokens

    def image_text(self, grid: tuple[int, ...]) -> str:
        return image_token_string(self.info, *grid)

    def image_tokens(self, grid: tuple[int, ...]) -> int:
        rows, cols = grid
        frames = rows * cols + 1 if rows or cols else 1          # tiles + the global view, or one
        return frames * self.info.tokens_per_image

    # ------------------------------------------------------------ positions (1-D RoPE)

    def prompt_positions(self, ids: np.ndarray, mask: np.ndarray,
                         grids: Sequence[Sequence[tuple[int, ...]]] = ()
                         ) -> tuple[np.ndarray, np.ndarray]:
        return TEXT_POSITIONS.prompt_positions(ids, mask, grids)            # (B, L), (B,)

    def step_positions(self, mask: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        return TEXT_POSITIONS.step_positions(mask, deltas)                  # (B, 1)

    # ------------------------------------------------------------ MLX

    def mlx_graphs(self, root, manifest: "Manifest"):
        """mlx-vlm's Idefics3 model behind the graph interface (mlx imported only now)."""
        from ..mlx_backend import load_graphs

        return load_graphs(root, manifest)
