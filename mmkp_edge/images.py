"""Post images: the one place that finds a post's image file, opens it as RGB, and decides what
an unusable one means.

Training, evaluation, the teacher and the runtime all go through here, so three things are the
same everywhere:
- the lookup (`find_image`): a relative name is tried under the image root (as given, then by file
  name — CMKP names images by URL), then beside the posts file;
- the opening (`open_image`): EXIF orientation, odd modes (L, LA, P, RGBA, CMYK, I;16) and
  decompression bombs are handled identically;
- the policy (`post_image`, `BAD_IMAGE_POLICIES`): a named image that is missing, not a file or
  not decodable is under "text-only" dropped — the post is answered / trained from its text (the
  paper's missing-modality case; the default of training and evaluation, since CMKP ships without
  its images) — and under "error" the post's error (the runtime's default: a caller who sent an
  image should hear that it was not used).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

BAD_IMAGE_POLICIES = ("error", "text-only")   # what an unusable image means (module docstring)
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


class BadImage(InputError):
    """A post's image is unusable and the policy is "error"; the message says why (one line)."""


def find_image(name: str | os.PathLike | None, base: Path, image_root: Path | None = None
               ) -> str | None:
    """The existing image file a post names, or None: an absolute path as is; a relative one under
    `image_root` (as given, then by its file name), then under `base` (the posts file's folder)."""
    if not name:
        return None
    path = Path(name)
    candidates = [path] if path.is_absolute() else []
    if image_root is not None and not path.is_absolute():
        candidates += [image_root / path, image_root / path.name]
    if not path.is_absolute():
        candidates.append(base / path)
    return next((str(c) for c in candidates if c.is_file()), None)


def check_policy(policy: str) -> str:
    if policy not in BAD_IMAGE_POLICIES:
        raise InputError(f"bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}; got {policy!r}")
    return policy


def post_image(source: ImageSource, missing: str | None = None, policy: str = "text-only"
               ) -> LoadedImage:
    """A post's image under the bad-image policy. `missing` is an image the post named that was not
    found (`Post.missing_image`); a path that is not a file is not found either. An unusable image
    raises BadImage under "error" and is LoadedImage(None, problem) under "text-only"."""
    check_policy(policy)
    if missing:
        loaded = LoadedImage(None, f"image not found: {missing}")
    elif isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        loaded = LoadedImage(None, f"image not found: {source}")
    else:
        loaded = open_image(source)
    if loaded.problem is not None and policy == "error":
        raise BadImage(loaded.problem)
    return loaded
