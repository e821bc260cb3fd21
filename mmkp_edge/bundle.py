"""Loading an exported bundle: check it, then build everything generation needs, once.

A bundle is served only if this runtime can reproduce what the student was trained on, so the
loader refuses — each with one line (InputError) — an unknown manifest schema, a prompt hash other
than mmkp_edge.prompt.PROMPT_HASH, a graph missing from the manifest or the folder, and any file
whose sha256 or size differs from the manifest (a truncated copy or a tampered graph). It then
opens the three ORT sessions with graph optimisation on and settable thread counts, on CPU or CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from . import prompt
from .chat import PromptEncoder
from .errors import InputError
from .families import RuntimeFamily, family_for
from .graph_io import DECODER, EMBED, GRAPH_NAMES, VISION
from .graphs import Graphs
from .manifest import Manifest, file_info

BUNDLE_ENV = "MMKP_BUNDLE"
_ORT_STATE = ort.capi.onnxruntime_pybind11_state
_ORT_LOAD_ERRORS = (_ORT_STATE.Fail, _ORT_STATE.InvalidGraph, _ORT_STATE.InvalidProtobuf,
                    _ORT_STATE.NoSuchFile, _ORT_STATE.NotImplemented, _ORT_STATE.InvalidArgument,
                    _ORT_STATE.RuntimeException)
_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """'cpu', 'cuda', 'cuda,cpu' or full ORT names → ORT provider list; unavailable ones refused."""
    if providers is None or providers == "":
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    names = [_PROVIDER_ALIASES.get(p.lower(), p) for p in providers]
    available = ort.get_available_providers()
    for name in names:
        if name not in available:
            raise InputError(f"execution provider {name} is not available in this onnxruntime "
                             f"(available: {', '.join(available)}); for CUDA install mmkp-edge[gpu]")
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")     # fallback for ops the accelerator lacks
    return names


def verify_files(root: Path, manifest: Manifest) -> None:
    """Every listed file exists with the recorded size and sha256."""
    for name in manifest.graphs:
        if not (root / manifest.graphs[name]).is_file():
            raise InputError(f"{root}: graph {name} ({manifest.graphs[name]}) is missing from the bundle")
    for name, expected in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise InputError(f"{root}: bundle file {name} is missing")
        if path.stat().st_size != expected.bytes:
            raise InputError(f"{path}: size {path.stat().st_size} != {expected.bytes} recorded in the "
                             f"manifest (truncated or modified file)")
        if file_info(path).sha256 != expected.sha256:
            raise InputError(f"{path}: sha256 does not match the manifest (modified or corrupt file)")


FUSED_MIN_ORT = (1, 22)   # GroupQueryAttention with attention_bias (export/fused_decoder.py)


def check_runtime_version(manifest: Manifest, version: str = ort.__version__) -> None:
    """Refuse, in one line, a fused-decoder bundle on an onnxruntime too old to run it (its
    GroupQueryAttention nodes would fail to load with an ONNX schema error)."""
    have = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    if manifest.model.decoder == "fused" and have < FUSED_MIN_ORT:
        need = ".".join(map(str, FUSED_MIN_ORT))
        raise InputError(f"this bundle's fused decoder needs onnxruntime >= {need} (installed: "
                         f"{version}); upgrade onnxruntime, or re-export with --decoder traced")


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    family: RuntimeFamily            # manifest.family's runtime side (mmkp_edge.families)
    encoder: PromptEncoder           # prompt text → token ids
    graphs: Graphs                   # ORT sessions (or the family's MLX backend)
    providers: list[str]

    @property
    def preprocessor(self):
        """RGB PIL image → PreparedImage (pixel_values + grid), the family's preprocessing."""
        return self.family.preprocess

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, threads: int | None = None,
             providers: str | Sequence[str] | None = None, verify: bool = True) -> "Bundle":
        """Load the bundle at `path` (default: $MMKP_BUNDLE). A bundle that failed export's
        validation is refused. `verify=False` skips the sha256 pass and that refusal (sizes and
        presence are still checked by opening the files)."""
        if path is None or str(path) == "":
            path = os.environ.get(BUNDLE_ENV)
            if not path:
                raise InputError(f"no bundle given: pass --bundle DIR or set {BUNDLE_ENV}")
        root = Path(path)
        if not root.is_dir():
            raise InputError(f"{root}: bundle folder not found")
        manifest = Manifest.load(root)
        if manifest.prompt.hash != prompt.PROMPT_HASH:
            raise InputError(f"{root}: bundle was trained with prompt {manifest.prompt.id} "
                             f"(hash {manifest.prompt.hash}); this runtime knows {prompt.PROMPT_ID} "
                             f"(hash {prompt.PROMPT_HASH}) — re-export, or use the matching mmkp-edge")
        if verify and manifest.validation.get("status") == "failed":
            raise InputError(f"{root}: this bundle failed export validation (see 'validation' in "
                             f"manifest.json); re-export it, or load it anyway with --no-verify")
        if verify:
            verify_files(root, manifest)
        else:
            for name in manifest.graphs:
                if not (root / manifest.graphs[name]).is_file():
                    raise InputError(f"{root}: graph {name} ({manifest.graphs[name]}) is missing")
        family = family_for(manifest)
        encoder = PromptEncoder.from_file(root / manifest.tokenizer.file, manifest.chat,
                                          family.image_text, manifest.tokenizer)
        if manifest.backend == "mlx":     # an mlx-vlm checkpoint (mmkp-export --mlx), not ORT graphs
            return cls(root=root, manifest=manifest, family=family, encoder=encoder,
                       providers=["mlx"], graphs=family.mlx_graphs(root, manifest))
        check_runtime_version(manifest)
        names = resolve_providers(providers)
        opts = session_options(threads)
        sessions = {}
        for name in GRAPH_NAMES:
            file = root / manifest.graphs[name]
            try:
                sessions[name] = ort.InferenceSession(str(file), opts, providers=names)
            except _ORT_LOAD_ERRORS as exc:
                raise InputError(f"{file}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        graphs = Graphs(sessions[VISION], sessions[EMBED], sessions[DECODER], manifest.model)
        return cls(root=root, manifest=manifest, family=family, encoder=encoder, graphs=graphs,
                   providers=names)
