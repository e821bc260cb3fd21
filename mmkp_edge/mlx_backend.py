"""MLX backend: serve an `mmkp-export --mlx` bundle on Apple silicon (or mlx[cpu] on Linux).

An MLX bundle is mlx-vlm's converted checkpoint plus our manifest (backend "mlx"). Prediction
reuses everything the ONNX runtime has — prompt encoding (mmkp_edge.chat), numpy image
preprocessing, the batched greedy `Generator` with its stop ids, eviction and think-mode
suppression, the parser — and swaps only the four calls generation makes (`vision`, `embed`,
`empty_cache`, `decode`) for MLX ones over mlx-vlm's modules. So the prompt token ids are the ones
the student was trained on (not mlx-vlm's own processor path), and an unquantized bundle produces
the PyTorch student's greedy tokens.

Why our own decoder loop instead of mlx-vlm's `generate`: its Idefics3 language model takes one
RoPE offset and a causal mask for the whole batch, while a left-padded batch needs per-row
positions (`cumsum(mask) - 1`) and a padding mask. `decode` therefore runs mlx-vlm's layers
(norms, projections — quantized or not — MLP, lm_head) with an explicit HF-style rotary embedding
and an additive mask, keeping the KV cache in MLX arrays between steps.

mlx and mlx_vlm are imported lazily, inside functions: importing this module costs nothing and
loads neither torch nor transformers (mlx_vlm itself imports transformers when a bundle is loaded).
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .manifest import Manifest, ModelInfo

INSTALL_HINT = "pip install 'mmkp-edge[mlx]' (mlx-vlm; on Linux mlx-vlm[cpu])"


def require_mlx() -> tuple[Any, Any]:
    """(mlx.core, mlx_vlm.utils), or a one-line InputError naming the install command."""
    try:
        import mlx.core as mx
        from mlx_vlm import utils
    except ImportError as exc:
        raise InputError(f"the MLX backend needs mlx-vlm ({exc.name} is missing): {INSTALL_HINT}") from None
    return mx, utils


@contextlib.contextmanager
def hf_auto_processor_untouched():
    """Undo mlx-vlm's global patch of `transformers.AutoProcessor.from_pretrained`.

    Importing an mlx-vlm model module (e.g. `mlx_vlm.models.idefics3`, which `load_model` and the
    converter do) replaces AutoProcessor.from_pretrained for that model type, process-wide, with
    mlx-vlm's own processor — which, for our checkpoints, comes back without the chat template.
    Anything else in the same process (training, the PyTorch reference of export's check) must
    keep transformers' behaviour, so every mlx-vlm call that may import a model runs inside this.
    """
    transformers = sys.modules.get("transformers")   # mlx_vlm imported it before any such call
    if transformers is None:
        yield
        return
    original = transformers.AutoProcessor.__dict__["from_pretrained"]
    try:
        yield
    finally:
        transformers.AutoProcessor.from_pretrained = original


def rope_theta(text_config: dict) -> float:
    """RoPE base of a HF text config: flat `rope_theta` (transformers 4) or `rope_parameters`
    (transformers 5). Only the default (unscaled) rotary embedding is supported."""
    params = text_config.get("rope_parameters") or {}
    kind = params.get("rope_type", "default")
    if kind != "default" or text_config.get("rope_scaling"):
        raise InputError(f"MLX backend: rope type {kind!r} / rope_scaling is not supported "
                         f"(only the default rotary embedding)")
    theta = params.get("rope_theta", text_config.get("rope_theta"))
    if theta is None:
        raise InputError("MLX backend: the text config has no rope_theta")
    return float(theta)


@dataclass
class MlxKVCache:
    """Past keys/values per layer as MLX arrays, each (B, kv, past, hd)."""
    tensors: list            # [k0, v0, k1, v1, …] mlx arrays
    length: int              # past positions held

    def select(self, rows: np.ndarray) -> "MlxKVCache":
        """Keep only the batch rows `rows` (eviction of finished sequences)."""
        import mlx.core as mx

        idx = mx.array(np.asarray(rows, dtype=np.int32))
        return MlxKVCache([t[idx] for t in self.tensors], self.length)

    def tiled(self, rows: int) -> "MlxKVCache":
        """A one-row cache repeated to `rows` rows (the shared prompt prefix for a prefill)."""
        import mlx.core as mx

        return MlxKVCache([mx.repeat(t, rows, axis=0) for t in self.tensors], self.length)

    def joined(self, other: "MlxKVCache") -> "MlxKVCache":
        """Rows of `self` then `other`, the shorter past left-padded with (masked) zeros, as
        mmkp_edge.graphs.KVCache.joined (continuous batching)."""
        import mlx.core as mx

        length = max(self.length, other.length)

        def padded(t, have):                                                   # (B, kv, have, hd)
            return t if have == length else mx.pad(t, [(0, 0), (0, 0), (length - have, 0), (0, 0)])

        return MlxKVCache([mx.concatenate([padded(a, self.length), padded(b, other.length)])
                           for a, b in zip(self.tensors, other.tensors)], length)  # (B+Bn, kv, S, hd)


class MlxGraphs:
    """mlx-vlm's Idefics3 model behind mmkp_edge.graphs.Graphs' interface (numpy in, numpy out)."""

    batched_past_prefill = True      # decode() takes any rows × new tokens on top of a past

    def __init__(self, model: Any, model_info: ModelInfo, theta: float):
        import mlx.core as mx

        self.mx = mx
        self.net = model
        self.lm = model.language_model
        self.model = model_info
        hd = model_info.head_dim
        self.inv_freq = 1.0 / (theta ** (mx.arange(0, hd, 2, dtype=mx.float32) / hd))  # (hd/2,)
        self.dtype = self.lm.norm.weight.dtype          # activations follow the stored weights
        self.float_dtype = np.float32                    # what numpy sees (bf16 has no numpy type)

    @classmethod
    def load(cls, root: str | Path, manifest: Manifest) -> "MlxGraphs":
        """Load mlx-vlm's checkpoint in the bundle folder `root`."""
        _, utils = require_mlx()
        root = Path(root)
        try:
            text_config = json.loads((root / "config.json").read_text(encoding="utf-8"))["text_config"]
            with hf_auto_processor_untouched():
                model = utils.load_model(root)
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise InputError(f"{root}: mlx-vlm cannot load this bundle: {str(exc).splitlines()[0]}") from None
        return cls(model, manifest.model, rope_theta(text_config))

    def _np(self, x) -> np.ndarray:
        return np.asarray(x.astype(self.mx.float32))

    # ------------------------------------------------------------ vision / embeddings

    def vision(self, pixel_values: np.ndarray, grids=()) -> np.ndarray:
        """(N, 3, S, S) → image features (N, tokens_per_image, hidden). Every frame is a full square
        tile, so the patch mask is all ones (mlx-vlm's default positions)."""
        mx = self.mx
        x = mx.array(pixel_values.astype(np.float32)).transpose(0, 2, 3, 1)     # (N, S, S, 3)
        hidden, *_ = self.net.vision_model(x.astype(self.dtype), output_hidden_states=True)
        return self._np(self.net.connector(hidden))                              # (N, tok, D)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 → (B, T, hidden)."""
        ids = self.mx.array(np.asarray(input_ids, dtype=np.int32))
        return self._np(self.lm.embed_tokens(ids))                               # (B, T, D)

    # ------------------------------------------------------------ decoder

    def empty_cache(self, batch: int) -> MlxKVCache:
        m = self.model
        zeros = self.mx.zeros((batch, m.num_kv_heads, 0, m.head_dim), dtype=self.dtype)
        return MlxKVCache([zeros] * (2 * m.num_layers), 0)

    def _rotate(self, x, cos, sin):
        """HF `rotate_half` RoPE: x (B, H, T, hd), cos/sin (B, 1, T, hd)."""
        half = x.shape[-1] // 2
        rotated = self.mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def decode(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
               cache: MlxKVCache) -> tuple[np.ndarray, MlxKVCache]:
        """One decoder call: embeds (B, T, D), mask (B, past+T), positions (B, T) →
        last-position logits (B, V) float32 and the grown cache."""
        mx = self.mx
        B, T, _ = embeds.shape
        past = cache.length
        h = mx.array(embeds.astype(np.float32)).astype(self.dtype)                # (B, T, D)
        freqs = mx.array(positions.astype(np.float32))[..., None] * self.inv_freq   # (B, T, hd/2)
        angles = mx.concatenate([freqs, freqs], axis=-1)[:, None]                   # (B, 1, T, hd)
        cos, sin = mx.cos(angles).astype(self.dtype), mx.sin(angles).astype(self.dtype)
        keys_ok = mx.array(mask.astype(bool))[:, None, None, :]                     # (B, 1, 1, P+T)
        causal = (mx.arange(past + T)[None, :] <= (past + mx.arange(T))[:, None])  # (T, P+T)
        allowed = mx.logical_and(keys_ok, causal[None, None])                      # (B, 1, T, P+T)
        # finite "minus infinity": pad query rows (fully masked) stay finite, never NaN
        bias = mx.where(allowed, 0.0, float(mx.finfo(self.dtype).min) / 2).astype(self.dtype)
        grown = []
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).reshape(B, T, attn.n_heads, -1).transpose(0, 2, 1, 3)    # (B, H, T, hd)
            k = attn.k_proj(x).reshape(B, T, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)  # (B, kv, T, hd)
            v = attn.v_proj(x).reshape(B, T, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)  # (B, kv, T, hd)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            k = mx.concatenate([cache.tensors[2 * i], k], axis=2)                        # (B, kv, P+T, hd)
            v = mx.concatenate([cache.tensors[2 * i + 1], v], axis=2)                    # (B, kv, P+T, hd)
            grown += [k, v]
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=bias)
            h = h + attn.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))             # (B, T, D)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.lm.lm_head(self.lm.norm(h[:, -1:, :]))[:, 0]                       # (B, V)
        return self._np(logits), MlxKVCache(grown, past + T)


def load_graphs(root: str | Path, manifest: Manifest) -> MlxGraphs:
    """What mmkp_edge.bundle.Bundle.load calls for a manifest whose backend is "mlx"."""
    return MlxGraphs.load(root, manifest)
