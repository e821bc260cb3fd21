"""Batched greedy generation on the exported graphs, one steppable primitive (DESIGN.md §6).

`Generator.step()` advances the whole batch by one token: the first call is the prefill (vision
graph for the posts that have an image, embeddings with the image features scattered into the
image-token rows, the decoder over the left-padded prompts with an empty past); every later call
feeds the last tokens with the grown KV cache. A row stops at any stop id (eos, `</answer>`) or at
its token budget and is evicted from the batch — every past tensor is sliced — so finished posts
cost nothing. `generate()` is sugar over `step()`; benchmarks time TTFT and per-token cost from the
same primitive. `use_cache=False` recomputes the full sequence each step (the reference the tests
compare the cached path with); `evict=False` keeps finished rows in the batch (ditto).

Continuous batching (mmkp-serve) lives here too, so it is tested where generation is: `add()` queues
prompts that join the running batch at the next step. That step prefills only the newcomers
(left-padded among themselves, empty past; the running rows wait one step) and appends them as
rows: the shorter of the two pasts — the running rows' or the newcomers' — is padded on the LEFT
with zeros and the attention mask with 0s, so every row keeps its own positions (cumsum of its
mask) and attends to exactly its own tokens, and greedy output per prompt equals the one-by-one
output. `cancel()` frees a row at once (a client went away); `pop()` forgets a finished request so
a long-lived generator holds only live rows.

Prefix reuse: every text-only prompt starts with the same ~30 tokens (chat template + instruction,
`PromptEncoder.prefix_ids`), 40 % of a CMKP prompt. Keys and values of a token depend only on the
tokens before it and its position, and every prompt's real tokens start at position 0, so that
prefix's K/V are the same for every post: `prefix_cache` computes them once per bundle, and a prefill
whose rows start with `prefix` feeds only the rest, with the prefix's K/V tiled in as the past
(row layout: prefix, left pads, rest — the mask hides the pads, positions continue from the
prefix). Rows that do not start with it (an image comes first) are prefilled whole in the same
step. A fused decoder's attention takes a past under several new tokens only for one row, so
there each reusing row is its own prefill call: each call streams the weights once more, but no
row computes pads or the prefix (on the real student, batch-8 int8 TTFT 1.26 s whole vs ~1.0 s
per row, separate runs). `use_cache=False` (the reference path) never reuses.

Position ids are the family's (`positions=`, mmkp_edge.families: 1-D for Idefics3, 3-axis M-RoPE
for Qwen2-VL): a prompt's come from its ids, mask and image grids, a decode step's from the mask
and a per-row delta fixed at prefill. This module only slices them on their last axis, pads them
there and carries the deltas with their rows, so either shape flows through unchanged.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .graphs import Graphs, KVCache
from .positions import TEXT_POSITIONS, positions_from_mask

__all__ = ["Generator", "Output", "Request", "StageTimes", "generate", "left_pad", "pad_left",
           "positions_from_mask", "prefix_cache"]


@dataclass(frozen=True)
class Request:
    input_ids: np.ndarray                    # (T,) int64 prompt ids, image tokens included
    pixel_values: np.ndarray | None = None   # the vision graph's input for this post's image, e.g.
                                             # (N, 3, S, S) float32 frames (PreparedImage.pixel_values)
    grids: tuple[tuple[int, ...], ...] = ()  # each image's layout (PreparedImage.grid), in prompt
                                             # order: what the family's position ids need


@dataclass
class Output:
    tokens: list[int] = field(default_factory=list)  # generated ids, the stop id included
    finish: str = ""                                 # "stop" | "length" | "cancelled" once done


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


def pad_left(x: np.ndarray, width: int, axis: int, value: int = 0) -> np.ndarray:
    """`value`s (zeros) prepended along `axis` until it is `width` long (masks, embeddings, past
    K/V, position ids)."""
    axis = axis % x.ndim
    missing = width - x.shape[axis]
    if missing <= 0:
        return x
    pads = [(0, 0)] * x.ndim
    pads[axis] = (missing, 0)
    return np.pad(x, pads, constant_values=value)


_PREFIXES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # graphs → {key: K/V}


def prefix_cache(graphs, ids: np.ndarray, positions=TEXT_POSITIONS):
    """K/V (one row) of the token ids `ids` as a prompt's first tokens, computed once per graphs
    object and ids (and cache kind) — for any backend with embed / empty_cache / decode.
    `positions`: the family's position ids (a text-only prefix: 0…p-1 on every axis)."""
    key = (*(int(i) for i in ids), getattr(graphs, "in_place", False))
    cached = _PREFIXES.setdefault(graphs, {})
    if key not in cached:
        row = np.asarray(key[:-1], dtype=np.int64)[None]                      # (1, p)
        mask = np.ones_like(row)                                              # (1, p)
        pos, _ = positions.prompt_positions(row, mask, [()])                  # (…, 1, p)
        _, cached[key] = graphs.decode(graphs.embed(row), mask, pos, graphs.empty_cache(1))
    return cached[key]


class Generator:
    """Greedy decoding of a batch of prompts; call `step()` until `done`. `add()` joins more
    prompts between steps, `cancel()` drops one, `pop()` forgets a finished one (see the module
    docstring). Request indices count every prompt ever added, in order."""

    def __init__(self, graphs: Graphs, requests: Sequence[Request], *, image_token_id: int,
                 pad_id: int, stop_ids: Iterable[int], max_new_tokens: int | Sequence[int],
                 suppress_ids: Iterable[int] = (), use_cache: bool = True, evict: bool = True,
                 prefix: Sequence[int] = (), positions=TEXT_POSITIONS):
        self.graphs = graphs
        self.positions = positions                    # prompt_positions / step_positions (a family)
        self.image_token_id = image_token_id
        self.pad_id = pad_id
        self.stop_ids = np.asarray(sorted(set(stop_ids)), dtype=np.int64)
        self.suppress_ids = np.asarray(sorted(set(suppress_ids)), dtype=np.int64)
        self.use_cache = use_cache
        self.evict = evict
        self.prefix = np.asarray(prefix if use_cache else (), dtype=np.int64)   # (p,) reused ids
        if np.isin(self.prefix, [image_token_id]).any():
            raise ValueError("the reused prefix holds an image token: its rows are not constant")
        self.requests: list[Request | None] = []      # by request index (None once popped)
        self.outputs: list[Output | None] = []        # by request index (None once popped)
        self.budgets: list[int] = []                  # by request index: max new tokens
        self._default_budget = max_new_tokens if isinstance(max_new_tokens, int) else None
        self.times = StageTimes()
        self.active = np.zeros(0, np.int64)           # request index of each batch row
        self.running = np.zeros(0, bool)              # per batch row; False = finished (kept if not evicting)
        self._pending: list[int] = []                 # request indices waiting for their prefill
        self._mask: np.ndarray | None = None          # (B, past) int64; None = no rows yet
        self._cache: KVCache | None = None            # each tensor (B, kv, past, hd)
        self._embeds: np.ndarray | None = None        # (B, past, D) full history (use_cache=False)
        self._pos: np.ndarray | None = None           # (…, B, past) position history (use_cache=False)
        self._deltas: np.ndarray | None = None        # (B,) what a decode step adds to the 1-D count
        self._last: np.ndarray | None = None          # (B,) last tokens, fed at the next step
        self.logits: dict[int, np.ndarray] = {}       # request index → (V,) logits of the latest step
        self.done = True
        self.add(requests, max_new_tokens)

    @property
    def pending(self) -> int:
        """Prompts added but not yet prefilled."""
        return len(self._pending)

    def add(self, requests: Sequence[Request], max_new_tokens: int | Sequence[int] | None = None
            ) -> list[int]:
        """Queue prompts to join the batch at the next step; returns their request indices.
        `max_new_tokens` defaults to the constructor's (when that was one int)."""
        requests = list(requests)
        budgets = self._default_budget if max_new_tokens is None else max_new_tokens
        if budgets is None:
            raise ValueError("add() needs max_new_tokens: the constructor was given a list")
        budgets = [budgets] * len(requests) if isinstance(budgets, int) else list(budgets)
        if len(budgets) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(budgets)} token budgets")
        first = len(self.requests)
        for request, budget in zip(requests, budgets):
            index = len(self.requests)
            self.requests.append(request)
            self.outputs.append(Output(finish="length" if budget <= 0 else ""))
            self.budgets.append(int(budget))
            if budget > 0:
                self._pending.append(index)
        self.done = not self._pending and not self.running.any()
        return list(range(first, len(self.requests)))

    def cancel(self, index: int) -> None:
        """Finish request `index` now ("cancelled") and free its batch row at once."""
        out = self.outputs[index]
        if out is None or out.finish:
            return
        out.finish = "cancelled"
        if index in self._pending:
            self._pending.remove(index)
        else:
            self.running[self.active == index] = False
            if self.evict and self.running.any():
                self._keep(np.flatnonzero(self.running))
        self.done = not self._pending and not self.running.any()

    def pop(self, index: int) -> Output:
        """The finished output of request `index`; the generator forgets the request (its pixels)."""
        out = self.outputs[index]
        if out is None or not out.finish:
            raise ValueError(f"request {index} is {'already popped' if out is None else 'still running'}")
        self.requests[index] = self.outputs[index] = None
        return out

    # ------------------------------------------------------------ prefill / join

    def _prompt_embeds(self, ids: np.ndarray, requests: Sequence[Request]) -> np.ndarray:
        """Token embeddings with vision features in the image-token rows."""
        embeds = self.graphs.embed(ids)                                       # (B, L, D)
        pixels = [r.pixel_values for r in requests if r.pixel_values is not None]
        grids = [g for r in requests if r.pixel_values is not None for g in r.grids]
        if pixels:
            t0 = time.perf_counter()
            feats = self.graphs.vision(np.concatenate(pixels), grids)         # (N, tok, D)
            self.times.vision_s += time.perf_counter() - t0
            feats = feats.reshape(-1, embeds.shape[-1])                       # (N*tok, D)
            slots = ids == self.image_token_id                                # (B, L)
            if int(slots.sum()) != feats.shape[0]:
                raise ValueError(f"prompt has {int(slots.sum())} image tokens but the vision graph "
                                 f"gave {feats.shape[0]} feature rows")
            embeds[slots] = feats.astype(embeds.dtype, copy=False)
        return embeds

    def _starts_with_prefix(self, ids: np.ndarray) -> bool:
        p = len(self.prefix)
        return 0 < p < len(ids) and bool(np.array_equal(ids[:p], self.prefix))

    def _prefill(self, requests: Sequence[Request], reuse: bool):
        """Prefill one group of prompts → (mask (Bn, S), cache, logits (Bn, V), history, deltas
        (Bn,)); history = (embeds, positions) for use_cache=False, else None.
        `reuse`: every prompt starts with `self.prefix`, whose cached K/V become the past."""
        cut = len(self.prefix) if reuse else 0
        ids, mask = left_pad([r.input_ids[cut:] for r in requests], self.pad_id)  # (Bn, L)
        embeds = self._prompt_embeds(ids, requests)                           # (Bn, L, D)
        if reuse:
            past = prefix_cache(self.graphs, self.prefix, self.positions).tiled(len(requests))
            mask = np.concatenate([np.ones((len(requests), cut), np.int64), mask], axis=1)
            ids = np.concatenate([np.tile(self.prefix, (len(requests), 1)), ids], axis=1)
        else:
            past = self.graphs.empty_cache(len(requests))                     # (Bn, kv, 0, hd)
        positions, deltas = self.positions.prompt_positions(ids, mask, [r.grids for r in requests])
        positions = positions[..., cut:]                                      # (…, Bn, L)
        logits, cache = self.graphs.decode(embeds, mask, positions, past)
        return mask, cache, logits, None if self.use_cache else (embeds, positions), deltas

    def _append(self, mask: np.ndarray, cache: KVCache, history, deltas: np.ndarray,
                new: Sequence[int]) -> None:
        """Append prefilled rows to the batch; the shorter past is left-padded with masked zeros."""
        embeds, positions = history or (None, None)
        if self._mask is None:                                                # nothing running
            self._mask, self._cache, self._last = mask, cache, np.zeros(len(new), np.int64)
            self._embeds, self._pos, self._deltas = embeds, positions, deltas
        else:   # align the pasts on the right: the shorter is left-padded with masked zeros
            width = max(self._mask.shape[1], mask.shape[1])                   # S = max(past, L)
            self._mask = np.concatenate([pad_left(self._mask, width, 1),
                                         pad_left(mask, width, 1)])           # (B+Bn, S)
            self._cache = self._cache.joined(cache)                           # (B+Bn, kv, S, hd)
            if not self.use_cache:
                self._embeds = np.concatenate([pad_left(self._embeds, width, 1),
                                               pad_left(embeds, width, 1)])   # (B+Bn, S, D)
                self._pos = np.concatenate([pad_left(self._pos, width, -1, 1),
                                            pad_left(positions, width, -1, 1)], axis=-2)  # (…, B+Bn, S)
            self._deltas = np.concatenate([self._deltas, deltas])             # (B+Bn,)
            self._last = np.concatenate([self._last, np.zeros(len(new), np.int64)])  # (B+Bn,)
        self.active = np.concatenate([self.active, np.asarray(new, np.int64)])
        self.running = np.concatenate([self.running, np.ones(len(new), bool)])

    def _join(self) -> tuple[np.ndarray, np.ndarray]:
        """Prefill the pending prompts and append them as batch rows → (their rows, logits (Bn, V))."""
        t0 = time.perf_counter()
        vision_before = self.times.vision_s
        pending, self._pending = self._pending, []
        starts = [self._starts_with_prefix(self.requests[i].input_ids) for i in pending]
        reuse = [i for i, s in zip(pending, starts) if s]
        whole = [i for i, s in zip(pending, starts) if not s]
        if self.evict and not self.running.any():
            self._keep(self.active[:0])                                       # drop finished rows
        first = len(self.active)
        all_logits = []
        # a fused decoder prefills on top of the prefix one row at a time (Graphs.batched_past_prefill)
        groups = [(reuse, True)] if self.graphs.batched_past_prefill else [([i], True) for i in reuse]
        for group, with_prefix in (*groups, (whole, False)):
            if group:
                mask, cache, logits, history, deltas = self._prefill(
                    [self.requests[i] for i in group], with_prefix)
                self._append(mask, cache, history, deltas, group)
                all_logits.append(logits)
        self.times.prefill_s += time.perf_counter() - t0 - (self.times.vision_s - vision_before)
        return np.arange(first, first + len(pending)), np.concatenate(all_logits)  # (Bn,), (Bn, V)

    # ------------------------------------------------------------ decode

    def _advance(self) -> np.ndarray:
        t0 = time.perf_counter()
        new = self.graphs.embed(self._last[:, None])                          # (B, 1, D)
        self._mask = np.concatenate([self._mask, np.ones((len(self._last), 1), np.int64)], axis=1)
        positions = self.positions.step_positions(self._mask, self._deltas)   # (…, B, 1)
        if self.use_cache:
            logits, self._cache = self.graphs.decode(new, self._mask, positions, self._cache)
        else:
            self._embeds = np.concatenate([self._embeds, new], axis=1)        # (B, past+1, D)
            self._pos = np.concatenate([self._pos, positions], axis=-1)       # (…, B, past+1)
            empty = self.graphs.empty_cache(len(self._last))
            logits, _ = self.graphs.decode(self._embeds, self._mask, self._pos, empty)
        self.times.decode_s += time.perf_counter() - t0
        return logits                                                         # (B, V)

    def _keep(self, keep: np.ndarray) -> None:
        """Evict every batch row not in `keep` (slice every past tensor); no rows = empty batch."""
        if keep.size == 0:
            self.active, self.running = self.active[:0], self.running[:0]
            self._mask = self._cache = self._embeds = self._pos = self._deltas = self._last = None
            return
        self.active, self.running = self.active[keep], self.running[keep]
        self._last, self._mask = self._last[keep], self._mask[keep]
        self._deltas = self._deltas[keep]
        self._cache = self._cache.select(keep)
        if self._embeds is not None:
            self._embeds = self._embeds[keep]
            self._pos = self._pos[..., keep, :]

    def step(self) -> list[tuple[int, int]]:
        """Advance by one token; returns (request index, token id) for each row that produced one.
        A step with pending prompts is their prefill (only they emit); otherwise every row decodes."""
        if self.done:
            return []
        if self._pending:
            rows, logits = self._join()                                       # (Bn,), (Bn, V)
        else:
            logits = self._advance()                                          # (B, V)
            rows = np.arange(len(self.active))
        self.times.steps += 1
        self.logits = {int(self.active[r]): logits[i] for i, r in enumerate(rows) if self.running[r]}
        if self.suppress_ids.size:
            logits = logits.copy()
            logits[:, self.suppress_ids] = -np.inf
        tokens = logits.argmax(axis=-1).astype(np.int64)                      # (len(rows),)
        emitted = []
        for row, token in zip(rows, tokens):
            if not self.running[row]:
                continue
            req = int(self.active[row])
            out = self.outputs[req]
            out.tokens.append(int(token))
            emitted.append((req, int(token)))
            if token in self.stop_ids:
                out.finish = "stop"
            elif len(out.tokens) >= self.budgets[req]:
                out.finish = "length"
            if out.finish:
                self.running[row] = False
        self._last[rows] = tokens
        self.done = not self._pending and not self.running.any()
        if self.evict and self.running.any() and not self.running.all():
            self._keep(np.flatnonzero(self.running))
        return sorted(emitted)                  # request order (a join's groups are row-ordered)

    def run(self) -> list[Output]:
        while not self.done:
            self.step()
        return self.outputs


def generate(graphs: Graphs, requests: Sequence[Request], **options) -> tuple[list[Output], StageTimes]:
    """Greedy outputs for every request (in order) and the batch's stage times."""
    gen = Generator(graphs, requests, **options)
    return gen.run(), gen.times
