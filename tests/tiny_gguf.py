"""A tiny random-weight llama GGUF written in code with the gguf package, for the llama.cpp tests.

Arch "llama" (2 layers, 64 wide, 4 heads / 2 KV heads, F32), so llama.cpp runs it like SmolLM2.
The vocabulary is train/tiny.py's ByteLevel BPE — its chat tokens (`<|im_start|>`,
`<end_of_utterance>`, …) as control tokens, the prompt's `<think>`/`<answer>` tags as user-defined
ones — written as tokenizer.ggml.* metadata with model "gpt2", so llama.cpp tokenizes the runtime's
prompt text itself. llama.cpp expects the Q/K rows in its own interleaved-rotary order; for random
weights that is irrelevant. Weights are N(0, 0.15²), large as in train/tiny.py: with small weights
greedy decoding collapses to one repeated token and "batched == one-by-one" would hold trivially.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _vocabulary() -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """(tokens by id, gguf token types, merges "a b", special ids) of train/tiny.py's tokenizer."""
    import gguf

    from train.tiny import TinyConfig, build_tokenizer

    tok = build_tokenizer(TinyConfig())
    data = json.loads(tok.backend_tokenizer.to_str())
    added = {a["id"]: a for a in data["added_tokens"]}
    size = max(max(data["model"]["vocab"].values()), max(added)) + 1
    tokens = [""] * size
    for piece, i in data["model"]["vocab"].items():
        tokens[i] = piece
    types = [int(gguf.TokenType.NORMAL)] * size
    for i, a in added.items():
        tokens[i] = a["content"]
        types[i] = int(gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    return tokens, types, merges, ids


def build_gguf(path: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4,
               kv_heads: int = 2, ffn: int = 128, context: int = 512, std: float = 0.15) -> Path:
    """Write the tiny model to `path` (an F32 GGUF) and return the path."""
    import gguf

    tokens, types, merges, ids = _vocabulary()
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads

    def w(*shape):                     # numpy (out, in): GGUF stores it as ne = [in, out]
        return (rng.standard_normal(shape) * std).astype(np.float32)

    out = Path(path)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("mmkp-edge tiny test model")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    writer.add_pad_token_id(ids["pad"])
    writer.add_add_bos_token(False)
    ones = np.ones(hidden, np.float32)                                             # (D,)
    writer.add_tensor("token_embd.weight", w(len(tokens), hidden) / std)            # (V, D), N(0, 1)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.attn_q.weight", w(heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", w(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", w(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", w(hidden, heads * head_dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(hidden, ffn))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", w(len(tokens), hidden))                      # (V, D)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
