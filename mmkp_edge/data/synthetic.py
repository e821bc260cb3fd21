"""Synthetic post pools with CMKP-like statistics, for tests and the scale benchmark.

Real pools of 300k posts are not shipped, but the split and dedup costs depend only on the shape of
the data: a long-tailed (Zipf) keyphrase distribution, mostly one keyphrase per post (CMKP: 1.32 on
average, at most 4), tweet-length texts, and a few copied or lightly edited posts. This generator
reproduces that shape from a seed, so every run sees the same pool.
"""

from __future__ import annotations

import random

from ..posts import Post

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_KP_COUNTS = (1, 1, 1, 1, 1, 1, 2, 2, 3, 4)      # 75%-ish one keyphrase, mean ~1.5


def synthetic_pool(n: int, *, n_keyphrases: int | None = None, zipf: float = 1.1,
                   near_copies: float = 0.01, seed: int = 0) -> list[Post]:
    """`n` posts; `near_copies` of them are one-word edits of an earlier post (same keyphrases)."""
    rng = random.Random(seed)
    n_keyphrases = n_keyphrases or max(10, n // 6)
    words = ["".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 9))) for _ in range(20_000)]
    phrases = [f"kp{i} {rng.choice(words)}" for i in range(n_keyphrases)]
    cum, total = [], 0.0
    for rank in range(n_keyphrases):
        total += 1.0 / (rank + 1) ** zipf
        cum.append(total)
    posts: list[Post] = []
    for i in range(n):
        if posts and rng.random() < near_copies:
            src = posts[rng.randrange(len(posts))]
            tokens = src.text.split()
            tokens[rng.randrange(len(tokens))] = rng.choice(words)
            posts.append(Post(id=f"syn-{i}", text=" ".join(tokens), keyphrases=src.keyphrases))
            continue
        k = rng.choice(_KP_COUNTS)
        kps = tuple(dict.fromkeys(rng.choices(phrases, cum_weights=cum, k=k)))
        text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))
        posts.append(Post(id=f"syn-{i}", text=text, keyphrases=kps))
    return posts
