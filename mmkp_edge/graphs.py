"""The three exported graphs behind one small interface: vision, embed, decode with a KV cache.

Generation (mmkp_edge/generate.py) only ever calls `vision`, `embed`, `empty_cache` and `decode`,
so where the KV cache lives is this module's business: on CPU it is a list of numpy arrays; on the
CUDA execution provider it is a list of device OrtValues bound with IO binding, so `present.*` goes
straight back in as `past_key_values.*` without a host round trip each step. Evicting finished rows
slices every past tensor (on CUDA via one host copy, only on the steps where a row finishes);
joining prompts to a running batch (continuous batching) concatenates two caches the same way.

A fused decoder (manifest `model.decoder == "fused"`: GroupQueryAttention) on CPU keeps its cache
IN PLACE: each past tensor is a preallocated numpy buffer (B, kv, capacity, hd) whose first
`length` positions hold the past, bound as both `past_key_values.*` and `present.*` (IO binding
over the same memory), so the attention kernel writes the new positions into it instead of the
graph concatenating — and this module copying out — the whole cache every step. A buffer is
reallocated (copied once) only when a step would run past its capacity; evicting and joining work
on the valid positions. The traced graph concatenates, so it keeps the copying path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .errors import InputError
from .graph_io import (ATTENTION_MASK, DECODER, EMBED, IMAGE_GRID_THW, INPUT_IDS, INPUTS_EMBEDS, LOGITS,
                       PIXEL_VALUES, POSITION_IDS, VISION, past_names, present_names)
from .manifest import ModelInfo

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
HEADROOM = 64   # positions an in-place buffer is allocated beyond what a step needs (fewer regrowths)


@dataclass
class KVCache:
    """Past keys/values in graph order (layer 0 key, layer 0 value, …), each (B, kv, past, hd) —
    or, `in_place`, (B, kv, capacity, hd) buffers whose first `length` positions are the past."""
    tensors: list            # numpy arrays (CPU) or OrtValues (CUDA)
    length: int              # past positions held
    device: str | None = None  # IO-binding device of OrtValue tensors ("cuda"); None = numpy
    in_place: bool = False   # preallocated numpy buffers the decoder writes into (fused graphs)

    @property
    def capacity(self) -> int:
        return self.tensors[0].shape[2] if self.in_place and self.tensors else self.length

    def _past(self, t):
        """The valid past of one tensor as numpy (B, kv, length, hd)."""
        if self.device is not None:
            return t.numpy()                                                  # one host round trip
        return t[:, :, : self.length] if self.in_place else t

    def _wrap(self, arrays: list[np.ndarray], length: int) -> "KVCache":
        """A cache of the same kind holding `arrays` (B, kv, length, hd)."""
        if self.in_place:
            return KVCache([_buffer(a, length + HEADROOM) for a in arrays], length, in_place=True)
        if self.device is not None:
            arrays = [ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for a in arrays]
        return KVCache(arrays, length, self.device)

    def select(self, rows: np.ndarray) -> "KVCache":
        """Keep only the batch rows `rows` (eviction of finished sequences)."""
        if self.in_place:                           # rows of the whole buffers: capacity kept
            return KVCache([np.ascontiguousarray(t[rows]) for t in self.tensors], self.length,
                           in_place=True)
        return self._wrap([np.ascontiguousarray(self._past(t)[rows]) for t in self.tensors],
                          self.length)                                        # (B', kv, past, hd)

    def joined(self, other: "KVCache") -> "KVCache":
        """The rows of `self` then those of `other`, pasts aligned on the right: the shorter past is
        left-padded with zeros, which the caller masks (attention_mask 0), so no row's attention
        changes (continuous batching: prompts joining a running batch)."""
        length = max(self.length, other.length)
        both = [np.concatenate([_pad_past(self._past(a), length), _pad_past(other._past(b), length)])
                for a, b in zip(self.tensors, other.tensors)]                 # (B+Bn, kv, S, hd)
        return self._wrap(both, length)

    def tiled(self, rows: int) -> "KVCache":
        """A one-row cache repeated to `rows` rows (the shared prompt prefix for a prefill)."""
        return self._wrap([np.repeat(self._past(t), rows, axis=0) for t in self.tensors],
                          self.length)                                        # (rows, kv, past, hd)

    def reserved(self, positions: int) -> "KVCache":
        """An in-place cache with room for `positions` (reallocated, past copied, if short)."""
        if positions <= self.capacity:
            return self
        return KVCache([_buffer(self._past(t), positions + HEADROOM) for t in self.tensors],
                       self.length, in_place=True)


def _buffer(past: np.ndarray, capacity: int) -> np.ndarray:
    """A zeroed (B, kv, capacity, hd) buffer with `past` (B, kv, length, hd) in its first positions."""
    b, kv, length, hd = past.shape
    out = np.zeros((b, kv, capacity, hd), dtype=past.dtype)
    out[:, :, :length] = past
    return out


def _pad_past(t: np.ndarray, length: int) -> np.ndarray:
    """(B, kv, past, hd) → (B, kv, length, hd), zeros prepended on the past axis."""
    return np.pad(t, ((0, 0), (0, 0), (length - t.shape[2], 0), (0, 0)))


def _expect_io(session: ort.InferenceSession, name: str, inputs: list[str], outputs: list[str]) -> None:
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    for n in inputs:
        if n not in have_in:
            raise InputError(f"{name}: graph has no input {n!r} (inputs: {', '.join(sorted(have_in))})")
    for n in outputs:
        if n not in have_out:
            raise InputError(f"{name}: graph has no output {n!r} (outputs: {', '.join(sorted(have_out))})")


class Graphs:
    """ORT sessions for vision_encoder, embed_tokens and decoder_model_merged."""

    def __init__(self, vision: ort.InferenceSession, embed: ort.InferenceSession,
                 decoder: ort.InferenceSession, model: ModelInfo):
        self.model = model
        self.sessions = {VISION: vision, EMBED: embed, DECODER: decoder}
        self.past = past_names(model.num_layers)
        self.present = present_names(model.num_layers)
        _expect_io(vision, VISION, [PIXEL_VALUES], [])
        _expect_io(embed, EMBED, [INPUT_IDS], [])
        _expect_io(decoder, DECODER, [INPUTS_EMBEDS, ATTENTION_MASK, POSITION_IDS, *self.past],
                   [LOGITS, *self.present])
        types = {i.name: i.type for i in decoder.get_inputs()}
        self.float_dtype = _NP_TYPES.get(types[INPUTS_EMBEDS], np.float32)
        self.pixel_dtype = _NP_TYPES.get(vision.get_inputs()[0].type, np.float32)
        # a vision graph of images of any size also takes their patch grids (graph_io vision_grid)
        self.vision_takes_grid = IMAGE_GRID_THW in {i.name for i in vision.get_inputs()}
        # Where IO binding keeps the KV cache: "cuda" on the CUDA EP, None = plain numpy run().
        # (Tests set "cpu" to drive the binding path without a GPU.)
        self.bound_device: str | None = ("cuda" if decoder.get_providers()[0] == "CUDAExecutionProvider"
                                         else None)
        self._outputs = [o.name for o in decoder.get_outputs()]
        self._binding = None     # (buffers, IO binding) of the last in-place step: reused while
                                 # the buffers are the same list (the decoder writes into them)

    @property
    def in_place(self) -> bool:
        """A fused decoder's attention writes the cache in place (module docstring); numpy only."""
        return self.model.decoder == "fused" and self.bound_device is None

    @property
    def batched_past_prefill(self) -> bool:
        """Whether one call may feed several new tokens on top of a past for several rows.
        onnxruntime's CPU GroupQueryAttention (fused decoders) takes that only for one row."""
        return self.model.decoder != "fused"

    # ------------------------------------------------------------ vision / embeddings

    def vision(self, pixel_values: np.ndarray, grids=()) -> np.ndarray:
        """(N, 3, S, S) → image features (N, tokens_per_image, hidden); a grid-taking graph:
        patches (P, C·t·p·p) and each image's grid (`grids`, in order) → (tokens, hidden).

        A grid-taking graph is called once per image: it accepts several, but attends over all
        their patches at once under a block-diagonal mask, (ΣP)² work and memory where one call
        per image costs ΣP² (16 images of 1 024 patches: a 16 384² mask against 16 of 1 024²)."""
        session = self.sessions[VISION]
        pixel_values = pixel_values.astype(self.pixel_dtype, copy=False)
        if not self.vision_takes_grid:
            return session.run(None, {PIXEL_VALUES: pixel_values})[0]        # (N, tok, D)
        grids = np.asarray(grids, dtype=np.int64).reshape(-1, 3)            # (I, 3)
        ends = np.cumsum(grids.prod(axis=1))                                 # each image's last patch + 1
        if not len(grids) or ends[-1] != pixel_values.shape[0]:             # split would drop the rest
            raise ValueError(f"{pixel_values.shape[0]} patches but the grids cover "
                             f"{int(ends[-1]) if len(grids) else 0}")
        return np.concatenate([                                              # (Σ tokens, D)
            session.run(None, {PIXEL_VALUES: part, IMAGE_GRID_THW: grid[None]})[0]
            for part, grid in zip(np.split(pixel_values, ends[:-1]), grids)])

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 → (B, T, hidden)."""
        return self.sessions[EMBED].run(None, {INPUT_IDS: input_ids.astype(np.int64)})[0]

    # ------------------------------------------------------------ decoder

    def empty_cache(self, batch: int) -> KVCache:
        m = self.model
        zeros = np.zeros((batch, m.num_kv_heads, 0, m.head_dim), dtype=self.float_dtype)  # (B, kv, 0, hd)
        if self.in_place:
            return KVCache([zeros] * len(self.past), 0, in_place=True)
        if self.bound_device:
            return KVCache([ort.OrtValue.ortvalue_from_numpy(zeros, self.bound_device, 0)
                            for _ in self.past], 0, self.bound_device)
        return KVCache([zeros] * len(self.past), 0)

    def decode(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
               cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """One decoder call: embeds (B, T, D), mask (B, past+T), positions (B, T) →
        last-position logits (B, V) float32 and the grown cache."""
        feeds = {INPUTS_EMBEDS: embeds.astype(self.float_dtype, copy=False),
                 ATTENTION_MASK: mask.astype(np.int64, copy=False),
                 POSITION_IDS: positions.astype(np.int64, copy=False)}
        if cache.in_place:
            cache = cache.reserved(cache.length + embeds.shape[1])
            logits, present = self._decode_in_place(feeds, cache), cache.tensors
        elif self.bound_device:
            logits, present = self._decode_bound(feeds, cache)
        else:
            feeds.update(zip(self.past, cache.tensors))
            outs = dict(zip(self._outputs, self.sessions[DECODER].run(None, feeds)))
            logits, present = outs[LOGITS], [outs[n] for n in self.present]
        if logits.ndim == 3:                                                  # (B, 1, V) accepted
            logits = logits[:, -1]
        grown = KVCache(present, cache.length + embeds.shape[1], cache.device, cache.in_place)
        return logits.astype(np.float32, copy=False), grown

    def _decode_in_place(self, feeds: dict, cache: KVCache) -> np.ndarray:
        """Past and present bound to the same numpy buffers (OrtValues over their memory): the
        attention kernel appends this step's keys/values in place; only the logits come back."""
        if self._binding is None or self._binding[0] is not cache.tensors:   # new buffers: rebind
            binding = self.sessions[DECODER].io_binding()
            binding.bind_output(LOGITS, "cpu")                                # outputs[0]
            for past, present, buffer in zip(self.past, self.present, cache.tensors):
                value = ort.OrtValue.ortvalue_from_numpy(buffer, "cpu", 0)    # shares the memory
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            self._binding = (cache.tensors, binding)
        binding = self._binding[1]
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        self.sessions[DECODER].run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def _decode_bound(self, feeds: dict, cache: KVCache) -> tuple[np.ndarray, list]:
        """IO binding keeps past/present on the device; only the logits come to the host."""
        session = self.sessions[DECODER]
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.past, cache.tensors):
            binding.bind_ortvalue_input(name, value)
        for name in self._outputs:
            binding.bind_output(name, "cpu" if name == LOGITS else self.bound_device, 0)
        session.run_with_iobinding(binding)
        outs = dict(zip(self._outputs, binding.get_outputs()))
        return outs[LOGITS].numpy(), [outs[n] for n in self.present]
