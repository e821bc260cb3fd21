"""Batched greedy generation on the exported graphs, one steppable primitive (DESIGN.md §6).

`Generator.step()` advances the whole batch by one token: the first call is the prefill (vision
graph for the posts that have an image, embeddings with the image features scattered into the
image-token rows, the decoder over the left-padded prompts with an empty past); every later call
feeds the last tokens with the grown KV cache. A row stops at any stop id (eos, `</answer>`) or at
its token budget and is evicted from the batch — every past tensor is sliced — so finished posts
cost nothing. `generate()` is sugar over `step()`; benchmarks time TTFT and per-token cost from the
same primitive. `use_cache=False` recomputes the full sequence each step (the reference the tests
compare the cached path with); `evict=False` keeps finished rows in the batch (ditto).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .graphs import Graphs, KVCache


@dataclass(frozen=True)
class Request:
    input_ids: np.ndarray                    # (T,) int64 prompt ids, image tokens included
    pixel_values: np.ndarray | None = None   # (N, 3, S, S) float32 frames of this post's image


@dataclass
class Output:
    tokens: list[int] = field(default_factory=list)  # generated ids, the stop id included
    finish: str = ""                                 # "stop" | "length" once done


@dataclass
class StageTimes:
    vision_s: float = 0.0    # vision graph (all images of the batch)
    prefill_s: float = 0.0   # embeddings + scatter + decoder over the prompts (→ first token)
    decode_s: float = 0.0    # every later step
    steps: int = 0           # decoder calls


def left_pad(rows: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id rows → ids (B, L) and mask (B, L), padded on the left."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)                 # (B, L)
    mask = np.zeros((len(rows), width), dtype=np.int64)                       # (B, L)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = r
        mask[b, width - len(r):] = 1
    return ids, mask


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """position_ids = cumsum(mask) - 1, pads set to 1 (HF's convention)."""
    pos = np.cumsum(mask, axis=-1) - 1                                        # (B, L)
    return np.where(mask == 0, 1, pos).astype(np.int64)


class Generator:
    """Greedy decoding of a batch of prompts; call `step()` until `done`."""

    def __init__(self, graphs: Graphs, requests: Sequence[Request], *, image_token_id: int,
                 pad_id: int, stop_ids: Iterable[int], max_new_tokens: int | Sequence[int],
                 suppress_ids: Iterable[int] = (), use_cache: bool = True, evict: bool = True):
        if not requests:
            raise ValueError("Generator needs at least one request")
        self.graphs = graphs
        self.requests = list(requests)
        self.image_token_id = image_token_id
        self.pad_id = pad_id
        self.stop_ids = np.asarray(sorted(set(stop_ids)), dtype=np.int64)
        self.suppress_ids = np.asarray(sorted(set(suppress_ids)), dtype=np.int64)
        budgets = ([max_new_tokens] * len(self.requests) if isinstance(max_new_tokens, int)
                   else list(max_new_tokens))
        self.budgets = np.asarray(budgets, dtype=np.int64)
        self.use_cache = use_cache
        self.evict = evict
        self.outputs = [Output() for _ in self.requests]
        self.times = StageTimes()
        self.active = np.arange(len(self.requests))   # request index of each batch row
        self.running = self.budgets > 0               # per batch row; False = finished (kept if not evicting)
        self._mask: np.ndarray | None = None          # (B, past+T)
        self._cache: KVCache | None = None
        self._embeds: np.ndarray | None = None        # (B, past+T, D) full history (use_cache=False)
        self._last: np.ndarray | None = None          # (B,) last tokens fed next step
        self.logits: dict[int, np.ndarray] = {}       # request index → (V,) logits of the latest step
        for i, b in enumerate(self.budgets):
            if b <= 0:
                self.outputs[i].finish = "length"
        self.done = bool((self.budgets <= 0).all())

    # ------------------------------------------------------------ prefill

    def _prompt_embeds(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings with vision features in the image-token rows."""
        embeds = self.graphs.embed(ids)                                       # (B, L, D)
        pixels = [r.pixel_values for r in self.requests if r.pixel_values is not None]
        if pixels:
            t0 = time.perf_counter()
            feats = self.graphs.vision(np.concatenate(pixels))                # (N, tok, D)
            self.times.vision_s += time.perf_counter() - t0
            feats = feats.reshape(-1, embeds.shape[-1])                       # (N*tok, D)
            slots = ids == self.image_token_id                                # (B, L)
            if int(slots.sum()) != feats.shape[0]:
                raise ValueError(f"prompt has {int(slots.sum())} image tokens but the vision graph "
                                 f"gave {feats.shape[0]} feature rows")
            embeds[slots] = feats.astype(embeds.dtype, copy=False)
        return embeds

    def _prefill(self) -> np.ndarray:
        t0 = time.perf_counter()
        ids, mask = left_pad([r.input_ids for r in self.requests], self.pad_id)   # (B, L)
        vision_before = self.times.vision_s
        embeds = self._prompt_embeds(ids)                                     # (B, L, D)
        cache = self.graphs.empty_cache(len(self.requests))
        logits, cache = self.graphs.decode(embeds, mask, positions_from_mask(mask), cache)
        self._mask, self._cache = mask, cache
        self._embeds = None if self.use_cache else embeds
        self.times.prefill_s += time.perf_counter() - t0 - (self.times.vision_s - vision_before)
        return logits                                                         # (B, V)

    # ------------------------------------------------------------ decode

    def _advance(self) -> np.ndarray:
        t0 = time.perf_counter()
        new = self.graphs.embed(self._last[:, None])                          # (B, 1, D)
        self._mask = np.concatenate([self._mask, np.ones((len(self._last), 1), np.int64)], axis=1)
        if self.use_cache:
            positions = (self._mask.sum(axis=1, keepdims=True) - 1).astype(np.int64)   # (B, 1)
            logits, self._cache = self.graphs.decode(new, self._mask, positions, self._cache)
        else:
            self._embeds = np.concatenate([self._embeds, new], axis=1)        # (B, past+1, D)
            empty = self.graphs.empty_cache(len(self._last))
            logits, _ = self.graphs.decode(self._embeds, self._mask, positions_from_mask(self._mask),
                                           empty)
        self.times.decode_s += time.perf_counter() - t0
        return logits                                                         # (B, V)

    def step(self) -> list[tuple[int, int]]:
        """Advance by one token; returns (request index, token id) for each row that produced one."""
        if self.done:
            return []
        logits = self._prefill() if self._mask is None else self._advance()
        self.times.steps += 1
        self.logits = {int(req): logits[row] for row, req in enumerate(self.active) if self.running[row]}
        if self.suppress_ids.size:
            logits = logits.copy()
            logits[:, self.suppress_ids] = -np.inf
        tokens = logits.argmax(axis=-1).astype(np.int64)                      # (B,)
        emitted = []
        for row, req in enumerate(self.active):
            if not self.running[row]:
                continue
            out = self.outputs[req]
            out.tokens.append(int(tokens[row]))
            emitted.append((int(req), int(tokens[row])))
            if tokens[row] in self.stop_ids:
                out.finish = "stop"
            elif len(out.tokens) >= self.budgets[req]:
                out.finish = "length"
            if out.finish:
                self.running[row] = False
        self._last = tokens
        if not self.running.any():
            self.done = True
        elif self.evict and not self.running.all():
            keep = np.flatnonzero(self.running)
            self.active, self.running = self.active[keep], self.running[keep]
            self._last, self._mask = tokens[keep], self._mask[keep]
            self._cache = self._cache.select(keep)
            if self._embeds is not None:
                self._embeds = self._embeds[keep]
        return emitted

    def run(self) -> list[Output]:
        while not self.done:
            self.step()
        return self.outputs


def generate(graphs: Graphs, requests: Sequence[Request], **options) -> tuple[list[Output], StageTimes]:
    """Greedy outputs for every request (in order) and the batch's stage times."""
    gen = Generator(graphs, requests, **options)
    return gen.run(), gen.times
