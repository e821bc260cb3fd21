"""Timing one variant on the workload: warm-up, repeated timed batches, per-post and per-token figures.

A variant (an ORT bundle, llama.cpp on a GGUF, or the torch student) is anything with `name` and
`run_batch(posts, think, max_new_tokens, force) -> BatchRun`; each records, with one clock, when the batch
started, when its first tokens appeared (time to first token: preprocessing + vision + prefill) and
when each post's last token appeared. Everything reported derives from those timestamps, so the
figures are consistent by construction: tokens/s × wall = tokens, posts/s × wall = posts.

Per (batch size, think mode): `warmup` untimed batches, then `repeats` passes over the whole
workload in batches of that size (all summarised, or only the fastest with keep="best"). Latency
per post is end to end (its batch's preprocessing included) because that is what a caller waits for. Peak RSS is sampled by a background thread
(psutil) while the variant runs.

`force_tokens` makes every post generate exactly `max_new_tokens` tokens, stop ids ignored: engines
whose models stop at different points (a llama.cpp GGUF is not the student) then do the same work,
which is how their speed is compared. Keyphrases are still parsed from the tokens up to the first
stop, so agreement and think rate mean what they mean without forcing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mmkp_edge.errors import InputError
from mmkp_edge.posts import Post
from mmkp_edge.prompt import THINK_MODES


@dataclass(frozen=True)
class TimingConfig:
    batch_sizes: tuple[int, ...] = (1, 4, 16)   # posts generated together
    think_modes: tuple[str, ...] = ("off", "auto")  # mmkp_edge.prompt.THINK_MODES
    max_new_tokens: int = 32                    # per post
    repeats: int = 1                            # timed passes over the workload per setting
    warmup: int = 1                             # untimed batches per setting before timing
    keep: str = "all"                           # passes summarised: "all", or "best" (the fastest
                                                # pass: filters a shared machine's interference)
    force_tokens: bool = False                  # every post generates exactly max_new_tokens
                                                # (stop ids ignored): the same work on every engine

    def validate(self) -> "TimingConfig":
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError("batch sizes must be at least 1")
        bad = [t for t in self.think_modes if t not in THINK_MODES]
        if bad or not self.think_modes:
            raise InputError(f"think modes must be among {', '.join(THINK_MODES)}; got {', '.join(bad)}")
        if self.keep not in ("all", "best"):
            raise InputError(f"keep must be 'all' or 'best', got {self.keep!r}")
        if self.max_new_tokens < 1 or self.repeats < 1 or self.warmup < 0:
            raise InputError("max new tokens and repeats must be ≥ 1, warm-up ≥ 0")
        return self


@dataclass
class PostOutput:
    tokens: list[int]          # generated ids up to and including the stop id (all when forced)
    keyphrases: list[str]      # parsed from prime + decoded text (up to the first stop)
    thought: bool              # the output opened a <think> span


@dataclass
class BatchRun:
    """One timed batch; times are seconds since the batch started."""
    prep_s: float              # preprocessing (images, prompts, tokenization)
    ttft_s: float              # first tokens of the batch out (prep + vision + prefill)
    end_s: float               # last token of the batch out
    decode_steps: int          # decoder calls after the prefill
    finish_s: list[float]      # per post: when its last token came out
    outputs: list[PostOutput]

    @property
    def tokens(self) -> int:
        return sum(len(o.tokens) for o in self.outputs)


class Variant(Protocol):
    name: str

    def run_batch(self, posts: Sequence[Post], think: str, max_new_tokens: int,
                  force: bool = False) -> BatchRun: ...


@dataclass
class Measurement:
    """Figures of one variant at one (batch size, think mode)."""
    variant: str
    batch_size: int
    think: str
    posts: int                 # posts timed (workload × repeats)
    tokens: int                # tokens generated in the timed batches
    wall_s: float              # sum of the timed batches' end-to-end times
    ttft_ms: float             # mean time to first token over batches
    prefill_share: float       # share of wall spent before the first token
    decode_ms_per_step: float  # mean decoder call after the prefill (the whole batch advances)
    decode_ms_per_token: float # decode wall ÷ tokens generated after the first
    latency_ms: dict[str, float]   # per post, end to end: p50 / p90 / p99 / mean
    posts_per_s: float
    tokens_per_s: float
    tokens_per_post: float
    think_rate: float          # share of posts whose output opened <think>
    floor_multiple: float | None = None   # decode_ms_per_step ÷ the memory floor (bundles only)
    outputs: list[PostOutput] = field(default_factory=list, repr=False)  # last pass, workload order

    def to_json(self) -> dict:
        def rounded(v):
            if isinstance(v, dict):
                return {k: rounded(x) for k, x in v.items()}
            return round(v, 4) if isinstance(v, float) else v

        return {k: rounded(v) for k, v in self.__dict__.items() if k != "outputs"}


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values_ms, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())}


def batches(posts: Sequence[Post], size: int) -> list[list[Post]]:
    return [list(posts[i:i + size]) for i in range(0, len(posts), size)]


def summarise(name: str, size: int, think: str, runs: list[BatchRun],
              last_outputs: list[PostOutput]) -> Measurement:
    wall = sum(r.end_s for r in runs)
    tokens = sum(r.tokens for r in runs)
    n_posts = sum(len(r.outputs) for r in runs)
    steps = sum(r.decode_steps for r in runs)
    decode_wall = sum(r.end_s - r.ttft_s for r in runs)
    decode_tokens = tokens - n_posts                      # each post's first token is the prefill's
    latencies = [f * 1e3 for r in runs for f in r.finish_s]
    return Measurement(
        variant=name, batch_size=size, think=think, posts=n_posts, tokens=tokens, wall_s=wall,
        ttft_ms=1e3 * sum(r.ttft_s for r in runs) / len(runs),
        prefill_share=sum(r.ttft_s for r in runs) / wall,
        decode_ms_per_step=1e3 * decode_wall / steps if steps else 0.0,
        decode_ms_per_token=1e3 * decode_wall / decode_tokens if decode_tokens > 0 else 0.0,
        latency_ms=percentiles(latencies), posts_per_s=n_posts / wall, tokens_per_s=tokens / wall,
        tokens_per_post=tokens / n_posts,
        think_rate=sum(o.thought for o in last_outputs) / len(last_outputs),
        outputs=last_outputs)


def measure(variant: Variant, posts: Sequence[Post], cfg: TimingConfig,
            progress=None) -> list[Measurement]:
    """Every (batch size, think mode) of `cfg` on `posts`; see the module docstring.
    `progress(message, transient)`: transient messages are superseded by the next one."""
    say = progress or (lambda _msg, _transient=False: None)
    results = []
    for think in cfg.think_modes:
        for size in cfg.batch_sizes:
            groups = batches(posts, size)
            for i in range(cfg.warmup):
                variant.run_batch(groups[i % len(groups)], think, cfg.max_new_tokens, cfg.force_tokens)
            passes: list[list[BatchRun]] = []
            for rep in range(cfg.repeats):
                passes.append([])
                for j, group in enumerate(groups):
                    say(f"{variant.name}: think={think} batch={size} pass {rep + 1}/{cfg.repeats} "
                        f"batch {j + 1}/{len(groups)} …", True)
                    passes[-1].append(variant.run_batch(group, think, cfg.max_new_tokens,
                                                        cfg.force_tokens))
            if cfg.keep == "best":
                passes = [min(passes, key=lambda runs: sum(r.end_s for r in runs))]
            last = [o for r in passes[-1] for o in r.outputs]
            results.append(summarise(variant.name, size, think, [r for p in passes for r in p], last))
            m = results[-1]
            say(f"{variant.name}: think={think} batch={size}: {m.tokens_per_s:.1f} tokens/s, "
                f"p50 {m.latency_ms['p50']:.0f} ms/post, decode {m.decode_ms_per_step:.1f} ms/step")
    return results


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled every `interval` s)."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.start_bytes = self._proc.memory_info().rss
        self.peak_bytes = self.start_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)


def clock() -> float:
    return time.perf_counter()
