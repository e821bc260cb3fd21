"""Opening post images safely: the one place that turns a path, bytes or PIL image into RGB.

Training, the teacher and the runtime all see images through `load_image`, so EXIF orientation,
odd modes (L, LA, P, RGBA, CMYK, I;16) and decompression bombs are handled identically everywhere.
A missing or unreadable image is not an error: the post becomes text-only (returns None) and the
reason is available to callers that want to report it.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 64_000_000   # refuse anything larger (a 8000×8000 photo is fine; bombs are not)

ImageSource = str | os.PathLike | bytes | Image.Image | None


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image | None     # RGB, EXIF-oriented; None when the post is text-only
    problem: str | None = None    # why there is no image, if one was given


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; transparency is composited on white, 16-bit greys are scaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)                       # (H, W)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray(np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(source: ImageSource) -> LoadedImage:
    """Open `source` as an RGB image, or explain why there is none."""
    if source is None:
        return LoadedImage(None)
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
            img = Image.open(fp)
        w, h = img.size
        if w * h > MAX_PIXELS:
            return LoadedImage(None, f"image too large ({w}x{h} > {MAX_PIXELS} pixels)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = ImageOps.exif_transpose(img)
            img.load()
        return LoadedImage(_to_rgb(img))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return LoadedImage(None, f"unreadable image: {exc}")


def load_image(source: ImageSource) -> Image.Image | None:
    """RGB image or None (text-only post)."""
    return open_image(source).image
