"""Training precision: which autocast a `train.precision` setting means on this device.

`auto` is bf16 autocast on CUDA and fp32 on CPU (bit-stable tests, no surprise). `bf16` asks for
bf16 autocast on any device: on CPU it is honoured where the processor computes bf16 natively
(x86 AVX512-BF16 or AMX-BF16, arm64 BF16) and refused with one line elsewhere — emulated bf16 is
slower than fp32, so silently accepting it would be a lie. Weights, optimizer state and the loss
stay fp32 (autocast only lowers the matmuls).
"""

from __future__ import annotations

import contextlib
import platform
from functools import lru_cache
from pathlib import Path

from mmkp_edge.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}   # /proc/cpuinfo flags (x86) / Features (arm64)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (read from /proc/cpuinfo; False where unknown)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                return bool(_BF16_FLAGS & set(value.split()))
    return platform.system() == "Darwin" and platform.machine() == "arm64"   # Apple M2 and later


def autocast_dtype(precision: str, device_type: str):
    """torch dtype to autocast to (None = fp32) for `precision` on `device_type`; refuses CPU bf16
    where the CPU lacks it."""
    import torch

    if precision not in PRECISIONS:
        raise InputError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
        return None
    if device_type == "cpu" and not cpu_has_bf16():
        raise InputError("train.precision=bf16: this CPU has no native bf16 (AVX512-BF16, AMX or "
                         "arm64 BF16); use fp32")
    return torch.bfloat16


def autocast(device_type: str, dtype) -> contextlib.AbstractContextManager:
    """The autocast context for `autocast_dtype`'s answer (a no-op for fp32)."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
