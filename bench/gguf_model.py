"""A GGUF file through llama.cpp: importing llama-cpp-python, loading a model, naming its weight type.

Shared by the llama.cpp benchmark variant and `mmkp-bench gguf`. The import is lazy and fails with
one line naming the install command; llama.cpp's own logging (hundreds of lines per load) is
silenced once. Models load with `use_extra_bufts=False`: the CPU backend's extra buffer types
(AMX / repacked weights) crash quantized types on this project's VMs.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from mmkp_edge.errors import InputError

INSTALL = "pip install 'mmkp-edge[llama]'"
_LOG_SINK: list = []                  # keeps the no-op log callback alive (ctypes does not)


def require_llama():
    """The llama_cpp module with its logging silenced, or one line naming the install command."""
    try:
        import llama_cpp
    except ImportError:
        raise InputError(f"llama.cpp needs the llama extra (llama-cpp-python): {INSTALL}") from None
    if not _LOG_SINK:
        _LOG_SINK.append(llama_cpp.llama_log_callback(lambda level, text, user: None))
        llama_cpp.llama_log_set(_LOG_SINK[0], ctypes.c_void_p())
        llama_cpp.llama_backend_init()
    return llama_cpp


def check_gguf(path: str | os.PathLike) -> None:
    """Refuse, cheaply and before any timing, a missing llama extra or a missing file."""
    require_llama()
    if not Path(path).is_file():
        raise InputError(f"{path}: GGUF file not found")


def load_model(path: str | os.PathLike, vocab_only: bool = False):
    """A llama_model pointer (free it with llama_model_free)."""
    L = require_llama()
    params = L.llama_model_default_params()
    params.use_extra_bufts = False       # see the module docstring
    params.vocab_only = vocab_only
    model = L.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise InputError(f"{path}: llama.cpp cannot load it (not a GGUF model it supports)")
    return model


def ftype_names() -> dict[int, str]:
    """llama.cpp's file types by number, from its LLAMA_FTYPE_* constants: 0 → F32, 7 → Q8_0, …"""
    L = require_llama()
    out = {}
    for key, value in sorted(vars(L).items()):
        if key.startswith("LLAMA_FTYPE_") and key != "LLAMA_FTYPE_GUESSED" and isinstance(value, int):
            out.setdefault(value, key.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_")
                           .removeprefix("ALL_"))
    return out


def _meta(model, key: str) -> str | None:
    L = require_llama()
    buf = ctypes.create_string_buffer(256)
    n = L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode() if n >= 0 else None


def type_name(model, path: str | os.PathLike) -> str:
    """A loaded model's weight type ("Q8_0", "F32", …) from its `general.file_type`."""
    value = _meta(model, "general.file_type")
    if value is None or not value.isdigit():
        return Path(path).stem
    return ftype_names().get(int(value), f"ftype {value}")


def file_type(path: str | os.PathLike) -> str:
    """The GGUF's weight type, read with a vocab-only load (no weights)."""
    L = require_llama()
    model = load_model(path, vocab_only=True)
    try:
        return type_name(model, path)
    finally:
        L.llama_model_free(model)
