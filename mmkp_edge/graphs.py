"""The three exported graphs behind one small interface: vision, embed, decode with a KV cache.

Generation (mmkp_edge/generate.py) only ever calls `vision`, `embed`, `empty_cache` and `decode`,
so where the KV cache lives is this module's business: on CPU it is a list of numpy arrays; on the
CUDA execution provider it is a list of device OrtValues bound with IO binding, so `present.*` goes
straight back in as `past_key_values.*` without a host round trip each step. Evicting finished rows
slices every past tensor (on CUDA via one host copy, only on the steps where a row finishes);
joining prompts to a running batch (continuous batching) concatenates two caches the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .errors import InputError
from .manifest import ModelInfo

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


@dataclass
class KVCache:
    """Past keys/values in graph order (layer 0 key, layer 0 value, …), each (B, kv, past, hd)."""
    tensors: list            # numpy arrays (CPU) or OrtValues (CUDA)
    length: int              # past positions held
    device: str | None = None  # IO-binding device of OrtValue tensors ("cuda"); None = numpy

    def select(self, rows: np.ndarray) -> "KVCache":
        """Keep only the batch rows `rows` (eviction of finished sequences)."""
        out = []
        for t in self.tensors:
            if self.device is None:
                out.append(np.ascontiguousarray(t[rows]))                     # (B', kv, past, hd)
            else:
                host = np.ascontiguousarray(t.numpy()[rows])                  # one host round trip
                out.append(ort.OrtValue.ortvalue_from_numpy(host, self.device, 0))
        return KVCache(out, self.length, self.device)

    def joined(self, other: "KVCache") -> "KVCache":
        """The rows of `self` then those of `other`, pasts aligned on the right: the shorter past is
        left-padded with zeros, which the caller masks (attention_mask 0), so no row's attention
        changes (continuous batching: prompts joining a running batch)."""
        length = max(self.length, other.length)
        out = []
        for a, b in zip(self.tensors, other.tensors):
            if self.device is not None:
                a, b = a.numpy(), b.numpy()                                   # one host round trip
            both = np.concatenate([_pad_past(a, length), _pad_past(b, length)])   # (B+Bn, kv, S, hd)
            out.append(both if self.device is None
                       else ort.OrtValue.ortvalue_from_numpy(both, self.device, 0))
        return KVCache(out, length, self.device)


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
        self.sessions = {"vision_encoder": vision, "embed_tokens": embed, "decoder_model_merged": decoder}
        self.past = past_names(model.num_layers)
        self.present = present_names(model.num_layers)
        _expect_io(vision, "vision_encoder", ["pixel_values"], [])
        _expect_io(embed, "embed_tokens", ["input_ids"], [])
        _expect_io(decoder, "decoder_model_merged",
                   ["inputs_embeds", "attention_mask", "position_ids", *self.past],
                   ["logits", *self.present])
        types = {i.name: i.type for i in decoder.get_inputs()}
        self.float_dtype = _NP_TYPES.get(types["inputs_embeds"], np.float32)
        self.pixel_dtype = _NP_TYPES.get(vision.get_inputs()[0].type, np.float32)
        # Where IO binding keeps the KV cache: "cuda" on the CUDA EP, None = plain numpy run().
        # (Tests set "cpu" to drive the binding path without a GPU.)
        self.bound_device: str | None = ("cuda" if decoder.get_providers()[0] == "CUDAExecutionProvider"
                                         else None)
        self._outputs = [o.name for o in decoder.get_outputs()]

    # ------------------------------------------------------------ vision / embeddings

    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) → image features (N, tokens_per_image, hidden)."""
        out = self.sessions["vision_encoder"].run(
            None, {"pixel_values": pixel_values.astype(self.pixel_dtype, copy=False)})[0]
        return out                                                            # (N, tok, D)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 → (B, T, hidden)."""
        return self.sessions["embed_tokens"].run(None, {"input_ids": input_ids.astype(np.int64)})[0]

    # ------------------------------------------------------------ decoder

    def empty_cache(self, batch: int) -> KVCache:
        m = self.model
        zeros = np.zeros((batch, m.num_kv_heads, 0, m.head_dim), dtype=self.float_dtype)  # (B, kv, 0, hd)
        if self.bound_device:
            return KVCache([ort.OrtValue.ortvalue_from_numpy(zeros, self.bound_device, 0)
                            for _ in self.past], 0, self.bound_device)
        return KVCache([zeros] * len(self.past), 0)

    def decode(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
               cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """One decoder call: embeds (B, T, D), mask (B, past+T), positions (B, T) →
        last-position logits (B, V) float32 and the grown cache."""
        feeds = {"inputs_embeds": embeds.astype(self.float_dtype, copy=False),
                 "attention_mask": mask.astype(np.int64, copy=False),
                 "position_ids": positions.astype(np.int64, copy=False)}
        if self.bound_device:
            logits, present = self._decode_bound(feeds, cache)
        else:
            feeds.update(zip(self.past, cache.tensors))
            outs = dict(zip(self._outputs, self.sessions["decoder_model_merged"].run(None, feeds)))
            logits, present = outs["logits"], [outs[n] for n in self.present]
        if logits.ndim == 3:                                                  # (B, 1, V) accepted
            logits = logits[:, -1]
        grown = KVCache(present, cache.length + embeds.shape[1], cache.device)
        return logits.astype(np.float32, copy=False), grown

    def _decode_bound(self, feeds: dict, cache: KVCache) -> tuple[np.ndarray, list]:
        """IO binding keeps past/present on the device; only the logits come to the host."""
        session = self.sessions["decoder_model_merged"]
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.past, cache.tensors):
            binding.bind_ortvalue_input(name, value)
        for name in self._outputs:
            binding.bind_output(name, "cpu" if name == "logits" else self.bound_device, 0)
        session.run_with_iobinding(binding)
        outs = dict(zip(self._outputs, binding.get_outputs()))
        return outs["logits"].numpy(), [outs[n] for n in self.present]
