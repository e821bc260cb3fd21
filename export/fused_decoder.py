"""A Llama-family decoder written directly as an ONNX graph of onnxruntime's fused contrib ops.

Tracing transformers' LlamaModel (export/graphs.py) gives ~40 small ops per layer — RMSNorm as
Pow/ReduceMean/Sqrt/Div/Mul, rotary as Slice/Neg/Concat/Mul/Add, attention as Transpose/MatMul/
Softmax with GQA's repeat_kv as Expand/Reshape, past K/V concatenated by separate Concat nodes.
On a 2-core CPU decoding one token, those ~1,200 kernel launches cost as much as the matmuls. This
module emits the same math as ~12 ops per layer, the way onnxruntime-genai's model builder does:

    SkipSimplifiedLayerNormalization   residual add + RMSNorm in one kernel
    MatMul  (D → (heads + 2·kv_heads)·hd)   q, k and v projections packed into one weight
    Split                                q | k | v
    RotaryEmbedding × 2 (com.microsoft)  q and k rotated at the given position_ids
    GroupQueryAttention (com.microsoft)  GQA, past/present K/V, the causal mask and the
                                         left-padding mask (attention_bias)
    MatMul  o_proj
    SkipSimplifiedLayerNormalization
    MatMul  (D → 2·I)                    gate and up packed
    Split, Sigmoid, Mul, Mul             SiLU(gate) · up (onnxruntime fuses Sigmoid·x to QuickGelu)
    MatMul  down_proj

Rotary is its own op, not GroupQueryAttention's `do_rotary`: that rotates by each key's physical
place in the buffer and ignores position_ids, which is wrong for left-padded rows and for rows
that joined a running batch (their cached keys would carry the wrong angles).

The graph keeps the bundle's decoder I/O exactly (inputs_embeds, attention_mask, position_ids, past
K/V → last-token logits, present K/V; mmkp_edge/manifest.py), so the runtime, the parity checks and
int8 quantization (every MatMul here has a constant weight) treat it like the traced graph.

Padding: the runtime left-pads, and GroupQueryAttention's own per-row lengths (`seqlens_k`) assume
right padding. So every row is declared full length (seqlens_k = total − 1) and the pads are masked
by an additive `attention_bias` built from attention_mask (0 / float32 min, never −inf: a pad row
masked everywhere stays finite, so its K/V can never put a NaN into a real row's weighted sum).
That is exactly the traced graph's math.

Which models: `supports()` names the one structure this writes — a Llama decoder (RMSNorm, rotary
on the whole head in rotate-half form, SiLU MLP, no biases, no sliding window). Anything else keeps
the traced decoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mmkp_edge.graph_io import (ATTENTION_MASK, BATCH, DECODER, INPUTS_EMBEDS, LOGITS, PAST,
                                POSITION_IDS, SEQ, TOTAL, past_names, present_names)

from .graphs import MAX_IR_VERSION, OPSET
from .wrappers import DecoderShape

MS = "com.microsoft"


def supports(text_model) -> str | None:
    """None when `text_model` (a transformers text decoder) has the structure this module writes;
    otherwise the reason it does not."""
    config = text_model.config
    if config.model_type != "llama":
        return f"text model type {config.model_type!r} (the fused decoder writes llama)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (the fused decoder writes silu)"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "projection biases (the fused decoder writes bias-free projections)"
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embeddings"
    if not hasattr(text_model, "rotary_emb") or not hasattr(text_model.rotary_emb, "inv_freq"):
        return "no rotary embedding module with inv_freq"
    return None


def rotary_tables(text_model, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin caches (max_positions, hd/2) from the model's own rotary module: its inv_freq
    (any rope scaling baked in) and attention_scaling, so angles equal transformers' exactly."""
    rotary = text_model.rotary_emb
    inv_freq = rotary.inv_freq.detach().double().cpu()                        # (hd/2,)
    angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    return ((angles.cos() * scale).float().numpy(),                          # (P, hd/2)
            (angles.sin() * scale).float().numpy())


class _Graph:
    """Accumulates nodes and initializers (the caller keeps their names unique)."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def weight(self, name: str, array: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        domain = MS if op in ("GroupQueryAttention", "SkipSimplifiedLayerNormalization",
                                "RotaryEmbedding") else ""
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))


def _linear_weight(module: torch.nn.Module) -> np.ndarray:
    """An nn.Linear's weight as a MatMul right-hand side (in, out)."""
    return module.weight.detach().float().cpu().numpy().T


def build_decoder(text_model, lm_head: torch.nn.Module, shape: DecoderShape) -> onnx.ModelProto:
    """The decoder graph (see the module docstring) with fp32 weights as initializers; rotary
    tables cover the model's max_position_embeddings (the runtime never goes past it)."""
    reason = supports(text_model)
    if reason:
        raise ValueError(f"the fused decoder cannot write this model: {reason}")
    config = text_model.config
    heads, kv, hd, dim = config.num_attention_heads, shape.num_kv_heads, shape.head_dim, shape.hidden_size
    eps = float(config.rms_norm_eps)
    g = _Graph()
    one = g.weight("const_one", np.array([1], np.int64))
    g.weight("const_neg_big", np.array(np.finfo(np.float32).min, np.float32))
    g.weight("const_zero_f", np.array(0.0, np.float32))
    cos, sin = rotary_tables(text_model, int(config.max_position_embeddings))
    g.weight("cos_cache", cos)
    g.weight("sin_cache", sin)

    # Shared by every layer: seqlens_k / total length (int32) and the additive padding mask.
    g.node("Shape", [ATTENTION_MASK], ["mask_shape"], "mask_shape")
    g.node("Gather", ["mask_shape", one], ["total_len_1"], "total_len", axis=0)       # (1,)
    g.node("Cast", ["total_len_1"], ["total_len_i32"], "total_len_i32", to=TensorProto.INT32)
    g.node("Squeeze", ["total_len_i32"], ["total_sequence_length"], "total_scalar")   # ()
    g.node("Sub", ["total_len_1", one], ["last_index"], "last_index")                  # (1,)
    g.node("Gather", ["mask_shape", g.weight("const_zero_i", np.array([0], np.int64))],
           ["batch_1"], "batch", axis=0)
    g.node("Expand", ["last_index", "batch_1"], ["seqlens_k_64"], "seqlens_expand")    # (B,)
    g.node("Cast", ["seqlens_k_64"], ["seqlens_k"], "seqlens_k", to=TensorProto.INT32)
    g.node("Cast", [ATTENTION_MASK], ["mask_bool"], "mask_bool", to=TensorProto.BOOL)
    g.node("Where", ["mask_bool", "const_zero_f", "const_neg_big"], ["pad_bias_2d"],
           "pad_bias")                                                                 # (B, total)
    g.node("Unsqueeze", ["pad_bias_2d", g.weight("axes_1_2", np.array([1, 2], np.int64))],
           ["pad_bias_4d"], "pad_bias_4d")                                             # (B,1,1,total)
    g.node("Shape", [INPUTS_EMBEDS], ["embeds_shape"], "embeds_shape")
    g.node("Gather", ["embeds_shape", one], ["seq_1"], "seq", axis=0)                  # (1,)
    g.node("Concat", ["batch_1", one, "seq_1", "total_len_1"], ["bias_shape"], "bias_shape", axis=0)
    g.node("Expand", ["pad_bias_4d", "bias_shape"], ["attention_bias"], "bias_expand")  # (B,1,T,total)

    past, present = past_names(shape.num_layers), present_names(shape.num_layers)
    hidden, residual = INPUTS_EMBEDS, None
    for i, layer in enumerate(text_model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        p = f"layers.{i}"
        w_in = g.weight(f"{p}.input_layernorm.weight", layer.input_layernorm.weight.detach().float().numpy())
        if residual is None:
            g.node("SimplifiedLayerNormalization", [hidden, w_in], [f"{p}.attn_in"], f"{p}.norm_in",
                   axis=-1, epsilon=eps)
            residual = hidden
        else:
            g.node("SkipSimplifiedLayerNormalization", [hidden, residual, w_in],
                   [f"{p}.attn_in", "", "", f"{p}.residual_in"], f"{p}.norm_in", epsilon=eps)
            residual = f"{p}.residual_in"
        qkv = np.concatenate([_linear_weight(attn.q_proj), _linear_weight(attn.k_proj),
                              _linear_weight(attn.v_proj)], axis=1)     # (D, (heads + 2·kv)·hd)
        g.node("MatMul", [f"{p}.attn_in", g.weight(f"{p}.qkv_proj.weight", qkv)], [f"{p}.qkv"],
               f"{p}.qkv_proj")                                         # (B, T, (heads+2kv)·hd)
        g.node("Split", [f"{p}.qkv", g.weight(f"{p}.qkv_sizes", np.array([heads * hd, kv * hd, kv * hd]))],
               [f"{p}.q", f"{p}.k", f"{p}.v"], f"{p}.qkv_split", axis=-1)
        for t, n in (("q", heads), ("k", kv)):                          # (B, T, n·hd) rotated
            g.node("RotaryEmbedding", [f"{p}.{t}", POSITION_IDS, "cos_cache", "sin_cache"],
                   [f"{p}.{t}_rot"], f"{p}.{t}_rotary", num_heads=n, interleaved=0)
        g.node("GroupQueryAttention",
               [f"{p}.q_rot", f"{p}.k_rot", f"{p}.v", past[2 * i], past[2 * i + 1], "seqlens_k",
                "total_sequence_length", "", "", "", "attention_bias"],
               [f"{p}.attn", present[2 * i], present[2 * i + 1]], f"{p}.attention",
               num_heads=heads, kv_num_heads=kv, scale=float(attn.scaling))   # (B, T, heads·hd)
        g.node("MatMul", [f"{p}.attn", g.weight(f"{p}.o_proj.weight", _linear_weight(attn.o_proj))],
               [f"{p}.attn_out"], f"{p}.o_proj")                        # (B, T, D)
        w_post = g.weight(f"{p}.post_attention_layernorm.weight",
                          layer.post_attention_layernorm.weight.detach().float().numpy())
        g.node("SkipSimplifiedLayerNormalization", [f"{p}.attn_out", residual, w_post],
               [f"{p}.mlp_in", "", "", f"{p}.residual_mid"], f"{p}.norm_post", epsilon=eps)
        residual = f"{p}.residual_mid"
        gate_up = np.concatenate([_linear_weight(mlp.gate_proj), _linear_weight(mlp.up_proj)], axis=1)
        g.node("MatMul", [f"{p}.mlp_in", g.weight(f"{p}.gate_up_proj.weight", gate_up)],
               [f"{p}.gate_up"], f"{p}.gate_up_proj")                   # (B, T, 2I)
        g.node("Split", [f"{p}.gate_up"], [f"{p}.gate", f"{p}.up"], f"{p}.split", axis=-1,
               num_outputs=2)                                           # (B, T, I) × 2
        g.node("Sigmoid", [f"{p}.gate"], [f"{p}.gate_sig"], f"{p}.sigmoid")
        g.node("Mul", [f"{p}.gate", f"{p}.gate_sig"], [f"{p}.gate_act"], f"{p}.silu")
        g.node("Mul", [f"{p}.gate_act", f"{p}.up"], [f"{p}.mlp_act"], f"{p}.gated")
        g.node("MatMul", [f"{p}.mlp_act", g.weight(f"{p}.down_proj.weight", _linear_weight(mlp.down_proj))],
               [f"{p}.mlp_out"], f"{p}.down_proj")                      # (B, T, D)
        hidden = f"{p}.mlp_out"

    # Only the last position reaches the final norm and lm_head.
    last = g.weight("const_last", np.array([-1], np.int64))
    g.node("Gather", [hidden, last], ["last_hidden"], "last_hidden", axis=1)      # (B, 1, D)
    g.node("Gather", [residual, last], ["last_residual"], "last_residual", axis=1)  # (B, 1, D)
    g.node("SkipSimplifiedLayerNormalization",
           ["last_hidden", "last_residual", g.weight("norm.weight", text_model.norm.weight.detach().float().numpy())],
           ["final_hidden"], "final_norm", epsilon=eps)                 # (B, 1, D)
    g.node("MatMul", ["final_hidden", g.weight("lm_head.weight", _linear_weight(lm_head))],
           ["logits_3d"], "lm_head")                                    # (B, 1, V)
    g.node("Squeeze", ["logits_3d", one], [LOGITS], LOGITS)         # (B, V)

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(INPUTS_EMBEDS, f32, [BATCH, SEQ, dim]),
              helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, [BATCH, TOTAL]),
              helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT64, [BATCH, SEQ])]
    inputs += [helper.make_tensor_value_info(n, f32, [BATCH, kv, PAST, hd]) for n in past]
    outputs = [helper.make_tensor_value_info(LOGITS, f32, [BATCH, shape.vocab_size])]
    outputs += [helper.make_tensor_value_info(n, f32, [BATCH, kv, TOTAL, hd]) for n in present]
    graph = helper.make_graph(g.nodes, DECODER, inputs, outputs, g.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(MS, 1)],
                              producer_name="mmkp-edge fused decoder")
    model.ir_version = MAX_IR_VERSION
    return model


def write_decoder(text_model, lm_head: torch.nn.Module, shape: DecoderShape, out_dir: Path,
                  name: str = DECODER) -> Path:
    """Build and save `out_dir/<name>.onnx` with its weights in `<name>.onnx.data`."""
    model = build_decoder(text_model, lm_head, shape)
    path = out_dir / f"{name}.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{name}.onnx.data", size_threshold=1024)
    return path
