"""`mmkp-bench gguf`: re-typed copies of a GGUF file (F32, F16, Q8_0, …) made by llama.cpp's quantizer.

The only offline SmolLM2 is the Q4_1 GGUF the project downloads; timing llama.cpp beside the fp32
and int8 bundles fairly needs it at those precisions, so this writes F32 / Q8_0 / … copies. A
quantized source is dequantized first (`allow_requantize`), so a copy of a Q4_1 file carries Q4_1's
rounding, not the original weights: it times like the type it claims, and computes what the
source computed up to that type's own rounding.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from mmkp_edge.errors import InputError

from .gguf_model import ftype_names, require_llama


def _ftype(name: str) -> tuple[str, int]:
    """("Q8_0", 7) for "q8_0": llama.cpp's spelling of the type and its number."""
    by_name = {v.upper(): (v, k) for k, v in ftype_names().items()}
    try:
        return by_name[name.upper()]
    except KeyError:
        raise InputError(f"unknown GGUF type {name!r}; llama.cpp knows "
                         f"{', '.join(v for v, _ in sorted(by_name.values(), key=lambda x: x[1]))}"
                         ) from None


def copy_path(src: str | os.PathLike, out_dir: str | os.PathLike, kind: str) -> Path:
    """OUT_DIR/<src stem without its type suffix>.<TYPE>.gguf (`x.Q4_1.gguf` → `x.F32.gguf`)."""
    known = "|".join(re.escape(v) for v in ftype_names().values())
    base = re.sub(rf"[.\-_](?:{known})$", "", Path(src).stem, flags=re.IGNORECASE)
    return Path(out_dir) / f"{base}.{kind}.gguf"


def retype(src: str | os.PathLike, out_dir: str | os.PathLike, types: tuple[str, ...],
           threads: int | None = None, progress=None) -> dict:
    """Write one copy of `src` per type into `out_dir`; the JSON-ready list of files and bytes."""
    L = require_llama()
    say = progress or (lambda _msg, _transient=False: None)
    if not Path(src).is_file():
        raise InputError(f"{src}: GGUF file not found")
    if not types:
        raise InputError("give at least one type, e.g. --types F32,Q8_0")
    if threads is not None and threads < 1:
        raise InputError("threads must be at least 1")
    kinds = [_ftype(t) for t in types]                 # all known before the first copy
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    files = []
    for kind, ftype in kinds:
        out = copy_path(src, out_dir, kind)
        if out.resolve() == Path(src).resolve():
            raise InputError(f"{out}: would overwrite the source; choose another OUT_DIR")
        say(f"gguf: writing {out} …")
        params = L.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = ftype, True
        params.nthread = threads or os.cpu_count() or 1
        if L.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) != 0:
            raise InputError(f"{src}: llama.cpp could not write a {kind} copy")
        files.append({"type": kind, "path": str(out), "bytes": out.stat().st_size})
    return {"source": str(src), "source_bytes": Path(src).stat().st_size, "files": files}
