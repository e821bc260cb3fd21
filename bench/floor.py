"""The memory floor: how fast a decode step could possibly be on this machine.

At small batch a decode step reads every decoder weight once and does little arithmetic per byte,
so it cannot beat (weight bytes read per step) ÷ (memory bandwidth). The weight bytes are summed
from the decoder graph's initializers and constant tensors as stored (an int8 MatMulNBits bundle
counts its int8 weights and their scales), read without loading the external data; the embedding
table lives in another graph and only one row per token is read, so it is not counted, nor is the
KV cache (small at these context lengths). Bandwidth is a short multi-threaded numpy copy test
(STREAM-copy style: bytes read + bytes written per second, best of a few passes) on buffers much
larger than the caches. Each measured decode step is then shown as a multiple of the floor.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmkp_edge.graph_io import DECODER
from mmkp_edge.manifest import MANIFEST_NAME

from .timing import clock


def _tensor_bytes(tensor) -> int:
    from onnx import helper

    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize if tensor.dims else itemsize


def graph_weight_bytes(path: str | Path) -> int:
    """Bytes of every initializer and Constant tensor of an ONNX graph (external data not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = sum(_tensor_bytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(_tensor_bytes(a.t) for a in node.attribute if a.name == "value")
    return total


def decoder_weight_bytes(bundle: str | Path) -> int:
    """Weight bytes one decode step reads: the bundle's decoder graph."""
    import json

    manifest = json.loads((Path(bundle) / MANIFEST_NAME).read_text())
    return graph_weight_bytes(Path(bundle) / manifest["graphs"][DECODER])


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_s: float     # best pass: (read + written) bytes / s
    buffer_bytes: int      # size of the copied buffer
    threads: int
    passes: int

    def to_json(self) -> dict:
        return {"copy_gb_per_s": round(self.bytes_per_s / 1e9, 3), "buffer_mb": self.buffer_bytes / 1e6,
                "threads": self.threads, "passes": self.passes}


def copy_bandwidth(buffer_mb: int = 256, threads: int = 2, passes: int = 5) -> Bandwidth:
    """Copy a `buffer_mb` float32 buffer `passes` times with 1 and with `threads` threads (numpy
    releases the GIL while copying); the best pass counts (a shared machine only ever slows it)."""
    runs = [_copy_bandwidth(buffer_mb, t, passes) for t in sorted({1, max(1, threads)})]
    return max(runs, key=lambda b: b.bytes_per_s)


def _copy_bandwidth(buffer_mb: int, threads: int, passes: int) -> Bandwidth:
    n = buffer_mb * (1 << 20) // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros_like(src)
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)

    def part(i: int) -> None:
        np.copyto(dst[bounds[i]:bounds[i + 1]], src[bounds[i]:bounds[i + 1]])

    best = float("inf")
    for _ in range(passes):
        workers = [threading.Thread(target=part, args=(i,)) for i in range(threads)]
        start = clock()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, clock() - start)
    return Bandwidth(bytes_per_s=2 * src.nbytes / best, buffer_bytes=src.nbytes, threads=threads,
                     passes=passes)


def floor_ms(weight_bytes: int, bandwidth: Bandwidth) -> float:
    """The fastest possible decode step (ms) if it only had to stream its weights once."""
    return 1e3 * weight_bytes / bandwidth.bytes_per_s
