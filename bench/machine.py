"""Facts about the machine a benchmark ran on, so its figures can be compared (or not) with others'."""

from __future__ import annotations

import os
import platform
from importlib import metadata

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_int8", "asimd", "sve")


def _cpuinfo() -> dict[str, str]:
    info = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key and key not in info:
                    info[key] = value.strip()
    except OSError:
        pass
    return info


def _version(dist: str) -> str | None:
    for name in (dist, f"{dist}-gpu") if dist == "onnxruntime" else (dist,):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine_facts() -> dict:
    """CPU model, core counts, ISA flags, memory, load, and the versions that matter."""
    import psutil

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else os.cpu_count()),
        "isa": {f: f in flags for f in ISA_FLAGS},
        "memory_total_gb": round(psutil.virtual_memory().total / 1e9, 2),
        "load_average_1m_at_start": round(load[0], 2),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("onnxruntime", "torch", "transformers", "numpy", "onnx",
                                                 "llama-cpp-python")},
    }
