"""Evaluation after every stage, one schema for all: greedy generation, parse, CMKP-exact score.

Every stage (zero-shot included) is judged by the same function on the same split so the four
`metrics.json` files compare line by line: `mmkp_edge.metrics.score` (all / strict / present /
absent, and seen / unseen against the training keyphrases), plus how often the model thought and
how many tokens it generated per post, which is the cost side of Dynamic CoT.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

from mmkp_edge import prompt
from mmkp_edge.errors import InputError
from mmkp_edge.metrics import cmkp_source, score
from mmkp_edge.parser import parse
from mmkp_edge.posts import Post

from .generation import generate_batch
from .student import ImageStats


@dataclass(frozen=True)
class EvalConfig:
    think: Literal["off", "on", "auto"] | None = None   # None → the stage's default think mode
    batch_size: int = 16           # posts per generation batch
    max_new_tokens: int = 96       # generation budget per post (reasoning needs more than answers)

    def validate(self) -> "EvalConfig":
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise InputError("eval.batch_size and eval.max_new_tokens must be >= 1")
        return self


@dataclass(frozen=True)
class Evaluation:
    metrics: dict               # the evaluation part of metrics.json
    predictions: list[dict]     # one record per post for predictions.jsonl


def evaluate(model, processor, posts: Sequence[Post], think: str, *, batch_size: int = 16,
             max_new_tokens: int = 96, train_keyphrases: Iterable[str] | None = None,
             stats: ImageStats | None = None, log: TextIO | None = sys.stderr,
             label: str = "eval") -> Evaluation:
    """Greedy-decode `posts` with `think` priming and score them."""
    t0 = time.perf_counter()
    predictions: list[dict] = []
    for start in range(0, len(posts), batch_size):
        chunk = posts[start:start + batch_size]
        for post, gen in zip(chunk, generate_batch(model, processor, chunk, think, max_new_tokens,
                                                   stats)):
            parsed = parse(gen.text)
            predictions.append({"id": post.id, "text": gen.text, "keyphrases": parsed.keyphrases,
                                "thought": parsed.thought, "n_tokens": gen.n_tokens,
                                "finish": gen.finish})
        if log is not None:
            print(f"{label}: {len(predictions)}/{len(posts)} posts", file=log, flush=True)
    n = len(posts)
    scores = score([p.keyphrases for p in posts], [r["keyphrases"] for r in predictions],
                   sources=[cmkp_source(p.text, p.ocr) for p in posts],
                   train_keyphrases=train_keyphrases)
    metrics = {"think": think, "n_posts": n, "scores": scores,
               "think_rate": sum(r["thought"] for r in predictions) / n if n else 0.0,
               "tokens_per_post": sum(r["n_tokens"] for r in predictions) / n if n else 0.0,
               # outputs that closed the answer span and stopped before the budget ran out
               "closed_rate": sum(r["finish"] == "stop" and prompt.ANSWER_CLOSE in r["text"]
                                  for r in predictions) / n if n else 0.0,
               "eval_wall_s": time.perf_counter() - t0}
    return Evaluation(metrics, predictions)
