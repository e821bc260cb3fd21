"""Trace the three wrapper modules into ONNX graphs with named dynamic axes.

`torch.onnx.export(dynamo=True)` (torch.export underneath) at opset 18, weights as external data
(`<graph>.onnx.data`), one graph per wrapper in export/wrappers.py. The I/O names and the names of
the dynamic axes are the bundle contract, written down once in mmkp_edge/graph_io.py (the
runtime binds the same names; the parity check uses them too).

Example inputs use sizes ≥ 2 on every dynamic axis: torch.export specialises a dimension it sees as
0 or 1 into a constant. The decoder's past K/V are varargs, so their dynamic shapes are a tuple
mirroring them. After tracing, the IR version is lowered to one the supported onnxruntime range
loads (the exporter's onnx may write a newer one), the per-node torch stack traces are dropped, and
every dynamic axis of the graph I/O gets its contract name (present K/V: total_sequence_length).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from mmkp_edge import graph_io as io_names
from mmkp_edge.graph_io import DECODER, EMBED, VISION, GraphIO

from .wrappers import DecoderShape, GraphModules

OPSET = 18
# onnxruntime >= 1.22 (the runtime's floor) loads IR 10; onnx 1.23 alone would write IR 14.
MAX_IR_VERSION = 10

def graph_io(shape: DecoderShape, *, vision_grid: bool = False, position_axes: int = 1
             ) -> dict[str, GraphIO]:
    """Names and dynamic axes of every graph's inputs and outputs (mmkp_edge.graph_io, the one copy)."""
    return io_names.graph_io(shape.num_layers, vision_grid=vision_grid, position_axes=position_axes)


def parts_io(parts: GraphModules) -> dict[str, GraphIO]:
    """`graph_io` with the layout options the family's wrappers declare."""
    return graph_io(parts.shape, vision_grid=parts.vision_grid, position_axes=parts.position_axes)


def axis_positions(positions: torch.Tensor, axes: int) -> torch.Tensor:
    """(B, T) positions → (axes, B, T) for an M-RoPE decoder (axis a offset by a, so the axes
    differ and a mix-up of M-RoPE sections shows), or unchanged for a 1-D one."""
    if axes == 1:
        return positions
    return torch.stack([positions + a for a in range(axes)])                 # (A, B, T)


def example_inputs(parts: GraphModules, batch: int = 2, seq: int = 5,
                   past: int = 3, images: int = 2, seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """Random inputs for each graph (every dynamic size ≥ 2; the first row left-padded)."""
    s = parts.shape
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, past + seq, dtype=torch.long)                  # (B, P+T)
    mask[0, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -seq:]                 # (B, T)
    kv = [torch.randn(batch, s.num_kv_heads, past, s.head_dim, generator=gen)  # (B, kv, P, hd)
          for _ in range(2 * s.num_layers)]
    return {
        VISION: parts.vision_encoder.example(images, gen),                  # the family's frames
        EMBED: (torch.randint(0, s.vocab_size, (batch, seq), generator=gen),),
        DECODER: (torch.randn(batch, seq, s.hidden_size, generator=gen), mask,
                  axis_positions(positions, parts.position_axes), *kv),
    }


def _dynamic_shapes(spec: GraphIO, num_inputs: int, varargs_from: int | None):
    dims: dict[str, torch.export.Dim] = {}

    def axes(name: str) -> dict[int, torch.export.Dim]:
        return {a: dims.setdefault(n, torch.export.Dim(n)) for a, n in spec.axes.get(name, {}).items()}

    fixed = [axes(n) for n in spec.inputs[:varargs_from]]
    if varargs_from is None:
        return tuple(fixed)
    return (*fixed, tuple(axes(n) for n in spec.inputs[varargs_from:num_inputs]))


def _finish(path: Path, spec: GraphIO) -> onnx.ModelProto:
    """Lower the IR version, drop trace metadata, name every dynamic axis after `graph_io`."""
    model = onnx.load(str(path), load_external_data=False)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    for node in model.graph.node:          # per-node torch stack traces: bulk, no use at run time
        del node.metadata_props[:]
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis, name in spec.axes.get(value.name, {}).items():
            dims[axis].ClearField("dim_value")
            dims[axis].dim_param = name
    onnx.save(model, str(path))
    return model


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """Raise the level of chatty library loggers for a block (e.g. the exporter's 'torchvision
    is not installed' and its optimizer's per-initializer INFO lines once anything has called
    logging.basicConfig — onnxruntime.quantization does)."""
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, saved):
            lg.setLevel(old)


@dataclass(frozen=True)
class ExportedGraph:
    name: str
    path: Path
    seconds: float


def export_graph(name: str, module: torch.nn.Module, args: tuple[torch.Tensor, ...], spec: GraphIO,
                 out_dir: Path, opset: int = OPSET) -> ExportedGraph:
    """Trace one wrapper into `out_dir/<name>.onnx` (+ `.onnx.data`)."""
    path = out_dir / f"{name}.onnx"
    varargs = 3 if name == DECODER else None
    # a wrapper may state its own dynamic shapes (relations between axes torch.export must know,
    # e.g. Qwen2-VL's patches = merge² × image tokens)
    own = getattr(module, "dynamic_shapes", None)
    shapes = own() if own else _dynamic_shapes(spec, len(args), varargs)
    start = time.perf_counter()
    # The exporter prints its own progress to stdout and warns about torchvision; ours goes to
    # stderr, one line per graph, and stdout stays clean for --json.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset,
                          input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_shapes=shapes,
                          external_data=True, optimize=True, verbose=False)
    _finish(path, spec)
    return ExportedGraph(name, path, time.perf_counter() - start)


DECODERS = ("auto", "fused", "traced")


def decoder_kind(parts: GraphModules, requested: str = "auto") -> str:
    """"fused" (export/fused_decoder.py) or "traced" for this model: "auto" takes fused wherever
    its structure is supported; asking for fused on a model it cannot write is an error."""
    from .fused_decoder import supports

    if requested not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {requested!r}")
    if requested == "traced":
        return "traced"
    reason = supports(parts.decoder_model_merged.language_model)
    if reason and requested == "fused":
        raise ValueError(f"--decoder fused cannot write this model: {reason}")
    return "traced" if reason else "fused"


def export_all(parts: GraphModules, out_dir: Path, opset: int = OPSET,
               progress: Callable[[str], None] | None = None,
               decoder: str = "auto") -> dict[str, ExportedGraph]:
    """Export vision_encoder, embed_tokens and decoder_model_merged into `out_dir`; the decoder is
    traced, or written from the weights as fused ops (`decoder_kind`)."""
    from .fused_decoder import write_decoder

    kind = decoder_kind(parts, decoder)
    ios = parts_io(parts)
    examples = example_inputs(parts)
    done: dict[str, ExportedGraph] = {}
    for i, name in enumerate(ios, 1):
        fused = name == DECODER and kind == "fused"
        if progress:
            progress(f"[{i}/{len(ios)}] {'writing fused' if fused else 'exporting'} {name} …")
        start = time.perf_counter()
        with torch.no_grad():
            if fused:
                wrapper = parts.decoder_model_merged
                path = write_decoder(wrapper.language_model, wrapper.lm_head, parts.shape, out_dir)
                done[name] = ExportedGraph(name, path, time.perf_counter() - start)
            else:
                done[name] = export_graph(name, getattr(parts, name), examples[name], ios[name],
                                          out_dir, opset)
        if progress:
            progress(f"[{i}/{len(ios)}] {name}: {done[name].seconds:.1f} s")
    return done
