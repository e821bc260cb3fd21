"""The fixed workload every variant runs: seeded synthetic posts, or the user's posts file.

Speed figures are only comparable when every variant sees byte-identical inputs, so the synthetic
posts are a pure function of (count, seed): texts of varied length built from a small social-media
vocabulary, and — for a share of the posts — a noise-and-gradient image of varied size written as
PNG (images are resized to the model's tile, so their size changes only the preprocessing cost).
`--posts FILE` (JSONL or CMKP) replaces them with real posts; the first `count` are used, those
whose image file is absent as text-only posts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post, read_posts, text_only_where_missing

WORDS = ("storm city tonight rain thunder happy birthday friends family coffee cake morning game "
         "win team music video new today sunset beach summer travel election vote dog park tree "
         "cute food pizza dinner fashion style art photo love weekend football goal night sky "
         "market sale phone tech space moon garden flower").split()
TAGS = ("#StormHour", "#tbt", "#nyc", "#love", "#foodie", "#GameDay", "#travel", "#art")
IMAGE_SIZES = ((640, 480), (480, 640), (1024, 768), (512, 512), (800, 450))   # (width, height)


@dataclass(frozen=True)
class WorkloadConfig:
    posts: int = 8                   # posts in the workload
    seed: int = 0                    # seeds texts and images
    image_share: float = 0.5         # synthetic posts that carry an image (0..1)
    posts_file: str | None = None    # JSONL / CMKP file to use instead of synthetic posts

    def validate(self) -> "WorkloadConfig":
        if self.posts < 1:
            raise InputError("the workload needs at least 1 post")
        if not 0.0 <= self.image_share <= 1.0:
            raise InputError(f"image share must be within [0, 1], got {self.image_share}")
        if self.posts_file is not None and not Path(self.posts_file).is_file():
            raise InputError(f"{self.posts_file}: posts file not found")
        return self


def synthetic_text(rng: np.random.Generator) -> str:
    words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(4, 28)))]
    tags = [str(t) for t in rng.choice(TAGS, size=int(rng.integers(0, 3)), replace=False)]
    text = " ".join(words + tags)
    return text[0].upper() + text[1:]


def synthetic_image(rng: np.random.Generator, path: Path, size: tuple[int, int]) -> str:
    from PIL import Image

    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]           # (1, W, 1)
    noise = rng.normal(0, 40, (h, w, 3)).astype(np.float32)                   # (H, W, 3)
    tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)                        # (3,)
    pixels = np.clip(ramp * tint + noise, 0, 255).astype(np.uint8)            # (H, W, 3)
    Image.fromarray(pixels).save(path)
    return str(path)


def synthetic_posts(count: int, seed: int, image_share: float, image_dir: str | os.PathLike) -> list[Post]:
    """`count` posts; post i has an image iff it falls in the first `image_share` of a seeded order."""
    rng = np.random.default_rng(seed)
    folder = Path(image_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with_image = set(rng.permutation(count)[: round(count * image_share)].tolist())
    posts = []
    for i in range(count):
        image = None
        if i in with_image:
            image = synthetic_image(rng, folder / f"post_{i}.png", IMAGE_SIZES[i % len(IMAGE_SIZES)])
        posts.append(Post(id=f"bench-{i}", text=synthetic_text(rng), image=image))
    return posts


def load_workload(cfg: WorkloadConfig, image_dir: str | os.PathLike) -> list[Post]:
    """The posts of the run (synthetic images are written under `image_dir`)."""
    cfg.validate()
    if cfg.posts_file is None:
        return synthetic_posts(cfg.posts, cfg.seed, cfg.image_share, image_dir)
    posts = read_posts(cfg.posts_file)[: cfg.posts]
    if not posts:
        raise InputError(f"{cfg.posts_file}: no posts")
    return text_only_where_missing(posts)      # CMKP ships no images: text-only, as in training


def describe(posts: list[Post]) -> dict:
    """What the JSON line records about the workload."""
    return {"posts": len(posts), "with_image": sum(p.image is not None for p in posts),
            "mean_text_chars": round(sum(len(p.text) for p in posts) / len(posts), 1)}
