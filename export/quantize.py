"""Lower-precision copies of exported graphs: weight-only int8 (CPU) and float16 (GPU).

int8 is weight-only `MatMulNBits` (com.microsoft), symmetric, one scale per block of 32–64 input
weights, with `accuracy_level=4` (int8 compute on the activations). Only constant-weight MatMuls
change — every nn.Linear of the decoder (lm_head included) and of the vision tower + connector —
so the graph I/O and the KV cache stay float32. The embedding table (a fifth of a 135 M student's
weights) is stored the same way, int8 with one float scale per block of each row, and dequantized
after the lookup (Gather int8 rows and their scales, Cast, Mul): only the looked-up rows are ever
touched, so it costs nothing per step and saves three quarters of the table's bytes. We do not use
`quantize_dynamic`: its per-tensor activation quantization made greedy output diverge from fp32
after a handful of tokens in the design-phase probes, and at the default accuracy level
MatMulNBits is much slower than fp32 on CPU (DESIGN.md §5).

float16 converts every float tensor and the graph I/O (inputs_embeds, pixel_values, past/present,
logits) to float16; it is meant for the CUDA execution provider.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mmkp_edge.graph_io import DECODER, EMBED, LOGITS, VISION

from .graphs import MAX_IR_VERSION, quiet_loggers

QUANTIZED_GRAPHS = (VISION, DECODER)   # MatMulNBits
EMBEDDING_GRAPH = EMBED                # int8 rows, when not kept


@dataclass(frozen=True)
class Int8Config:
    block_size: int = 32          # input weights per scale (16, 32 or 64)
    accuracy_level: int = 4       # MatMulNBits compute type: 4 = int8 activations (fast on CPU)
    symmetric: bool = True        # zero point fixed at 0
    keep_lm_head: bool = False    # leave the logits MatMul (lm_head) in float32
    keep_embeddings: bool = False # leave the embedding table in float32
    keep_matmuls: tuple[str, ...] = ()  # leave MatMuls whose weight name contains one of these
    #   in float32 (e.g. "down_proj": Llama's down_proj input carries the activation outliers
    #   that int8 activations round worst); names as in the fused decoder (`layers.N.mlp.…`)

    def validate(self) -> "Int8Config":
        if self.block_size not in (16, 32, 64):
            raise ValueError(f"int8 block_size must be 16, 32 or 64, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level must be 0-4, got {self.accuracy_level}")
        # a bare string would be read as its characters, and "" is in every name: both would
        # keep (nearly) every MatMul float and still call the bundle int8
        if isinstance(self.keep_matmuls, str) or not all(
                isinstance(p, str) and p.strip() for p in self.keep_matmuls):
            raise ValueError(f"keep_matmuls must be a tuple of non-empty weight-name parts, got "
                             f"{self.keep_matmuls!r}")
        return self

    def describe(self, nodes: dict[str, int]) -> dict:
        """The manifest's `quantization` entry."""
        return {"method": "matmulnbits", "bits": 8, "block_size": self.block_size,
                "symmetric": self.symmetric, "accuracy_level": self.accuracy_level,
                "lm_head": "float32" if self.keep_lm_head else "int8",
                "embeddings": "float32" if self.keep_embeddings else "int8",
                "float32_matmuls": list(self.keep_matmuls),
                "weight_only": True, "graphs": list(QUANTIZED_GRAPHS), "matmulnbits_nodes": nodes}


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Save with weights in `<file>.data` beside it and an IR version the runtime loads."""
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    for file in (path, data):
        file.chmod(0o644)                 # onnx writes the data file owner-only


def count_ops(path: Path, op_type: str) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return Counter(n.op_type for n in model.graph.node)[op_type]


def logits_matmul(model: onnx.ModelProto) -> str | None:
    """Name of the MatMul that produces the `logits` output (through reshapes / slices / casts)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    name = LOGITS
    for _ in range(16):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "MatMul":
            return node.name
        name = node.input[0]
    return None


def kept_matmuls(model: onnx.ModelProto, parts: tuple[str, ...]) -> list[str]:
    """Names of the MatMuls whose constant weight's name contains one of `parts`."""
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and
            any(w in weights and any(p in w for p in parts) for w in n.input[1:2])]


def quantize_int8(src: Path, dst: Path, cfg: Int8Config, *, decoder: bool = True) -> int:
    """MatMulNBits int8 copy of the graph at `src` written to `dst`; returns the node count.
    `cfg.keep_matmuls` names decoder weights, so it applies only where `decoder` is true."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    cfg.validate()
    model = onnx.load(str(src))                                   # with its external weights
    algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                        accuracy_level=cfg.accuracy_level, bits=8,
                                        quant_format=QuantFormat.QOperator)
    keep = kept_matmuls(model, cfg.keep_matmuls) if decoder else []
    if decoder and cfg.keep_matmuls and not keep:
        raise ValueError(f"{src.name}: no MatMul weight is named like {list(cfg.keep_matmuls)} "
                         "(names come from the fused decoder: qkv_proj, o_proj, gate_up_proj, "
                         "down_proj)")
    if cfg.keep_lm_head and (head := logits_matmul(model)):
        keep.append(head)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=cfg.block_size,
                                     is_symmetric=cfg.symmetric, accuracy_level=cfg.accuracy_level,
                                     nodes_to_exclude=keep, algo_config=algo)
    # the quantizer logs one INFO line per MatMul; progress is ours to report
    with contextlib.redirect_stdout(io.StringIO()), quiet_loggers(
            "onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer.process()
    save_graph(quantizer.model.model, dst)
    return count_ops(dst, "MatMulNBits")


def quantize_embedding(src: Path, dst: Path, block_size: int) -> int:
    """int8 copy of the embed_tokens graph at `src` (one Gather of a float table) written to `dst`:
    symmetric int8 blocks of `block_size` along each row with one float32 scale per block.
    Returns the table's rows. Same I/O: input_ids (B, T) → inputs_embeds (B, T, D) float32."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    weights = {t.name: t for t in model.graph.initializer}
    if len(model.graph.node) != 1 or not gathers or gathers[0].input[0] not in weights:
        raise ValueError(f"{src}: expected one Gather of a constant table, got "
                         f"{[n.op_type for n in model.graph.node]}")
    table = numpy_helper.to_array(weights[gathers[0].input[0]]).astype(np.float32)   # (V, D)
    rows, dim = table.shape
    if dim % block_size:
        raise ValueError(f"embedding width {dim} is not a multiple of the block size {block_size}")
    blocks = table.reshape(rows, dim // block_size, block_size)               # (V, D/b, b)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / 127.0                # (V, D/b, 1)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.rint(blocks / scale), -127, 127).astype(np.int8)           # (V, D/b, b)
    ids, out = model.graph.input[0].name, model.graph.output[0].name
    nodes = [
        helper.make_node("Gather", ["table_int8", ids], ["rows_int8"], name="gather_rows"),
        helper.make_node("Gather", ["table_scale", ids], ["rows_scale"], name="gather_scales"),
        helper.make_node("Cast", ["rows_int8"], ["rows_float"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["rows_float", "rows_scale"], ["rows"], name="dequantize"),
        helper.make_node("Shape", [ids], ["ids_shape"], name="ids_shape"),
        helper.make_node("Concat", ["ids_shape", "width"], ["out_shape"], name="out_shape", axis=0),
        helper.make_node("Reshape", ["rows", "out_shape"], [out], name="rows_to_embeds"),
    ]                                                                         # (B, T, D/b, b) → (B, T, D)
    inits = [numpy_helper.from_array(q, "table_int8"), numpy_helper.from_array(scale, "table_scale"),
             numpy_helper.from_array(np.array([dim], np.int64), "width")]
    graph = helper.make_graph(nodes, model.graph.name or EMBED, list(model.graph.input),
                              list(model.graph.output), inits)
    save_graph(helper.make_model(graph, opset_imports=list(model.opset_import)), dst)
    return rows


def convert_fp16(src: Path, dst: Path) -> None:
    """float16 copy of the graph at `src` (I/O included) written to `dst`."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with contextlib.redirect_stdout(io.StringIO()):
        half = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)
    save_graph(half, dst)
