"""The bundle manifest: the export → runtime contract, as data.

`mmkp-export` WRITES `manifest.json`; only the runtime (mmkp_edge/bundle.py) reads it. Everything the
runtime must know to reproduce the student's training-time inputs lives here, so serving needs no
transformers: the chat rendering, how an image expands into tokens, the image preprocessing, the
special token ids and the graph shapes. A field added here is a field export must fill; bump
`SCHEMA_VERSION` when the meaning of an existing field changes.

`manifest.json` (schema_version 1), every key required unless marked optional:

    schema_version  1
    family          "idefics3"                       student family: one of RUNTIME_FAMILIES, else the
                                                     bundle is refused at load
    source          "runs/dynamic_cot/x/merged"      checkpoint the bundle was exported from
    stage           "dynamic_cot"                    training stage of that checkpoint
    prompt          {"id": mmkp_edge.prompt.PROMPT_ID, "hash": mmkp_edge.prompt.PROMPT_HASH}
    chat            {"with_image": "<|im_start|>User:{image}{prompt}<end_of_utterance>\\nAssistant:",
                     "text_only":  "<|im_start|>User:{prompt}<end_of_utterance>\\nAssistant:"}
                    The student's chat template rendered once with placeholders. `{prompt}` becomes
                    mmkp_edge.prompt.user_text(text, ocr), `{image}` the image's token string (below);
                    the think-mode prime (prompt.prime) is appended after the generation prompt.
    tokenizer       {"file": "tokenizer.json", "add_special_tokens": false}
                    `add_special_tokens` is passed to tokenizers' encode() (the post-processor in
                    tokenizer.json then adds BOS or not, exactly as the HF fast tokenizer does).
    special_tokens  {"pad": 2, "eos": [2, 49279], "image": 49190, "think_open": …, "think_close": …,
                     "answer_open": …, "answer_close": …, "bos": 1 (optional, informational)}
                    Generation stops a row at any `eos` id or `answer_close`.
    image           Idefics3ImageProcessor settings plus the token layout:
                    {"size_longest_edge": 2048,   resize so the longest edge is this (do_resize)
                     "max_image_size": 512,       tile / vision-encoder side
                     "do_resize": true, "resample": 1 (PIL code; 1 = LANCZOS),
                     "do_rescale": true, "rescale_factor": 0.00392156862745098,
                     "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                     "do_image_splitting": false,
                     "tokens_per_image": 64,      image tokens per tile / global view
                     "image_token": "<image>",
                     "token_string": "<fake_token_around_image><global-img>{image_tokens}<fake_token_around_image>",
                     "tile_string": "<fake_token_around_image><row_{row}_col_{col}>{image_tokens}",
                     "row_separator": "\\n", "global_prefix": "\\n"}
                    `{image_tokens}` is image_token × tokens_per_image. Unsplit: `{image}` =
                    token_string. Split into R×C tiles: for each row r, the C tile_strings (1-based
                    {row}/{col}) then row_separator; then global_prefix + token_string. This is
                    Idefics3Processor's expansion; the vision graph gets the R·C tiles (row-major)
                    then the global view, each max_image_size square.
                    A "qwen2_vl" bundle fills the same section from Qwen2VLImageProcessor: its own
                    keys patch_size, merge_size, temporal_patch_size, min_pixels, max_pixels
                    (optional, 0 = not used; mmkp_edge.families.qwen2_vl.Qwen2VLImageSettings),
                    resample 3 (BICUBIC), CLIP mean/std, image_token "<|image_pad|>",
                    token_string "<|vision_start|>{image_tokens}<|vision_end|>", tokens_per_image =
                    max_pixels / (patch·merge)², informational: each image takes
                    grid_h·grid_w/merge² tokens by its size, which can exceed it a little for very
                    elongated images (smart_resize keeps each side ≥ one patch·merge step);
                    size_longest_edge / max_image_size 0 (no square frames).
    model           {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64, "hidden_size": 576,
                     "vocab_size": 49280, "max_context": 8192, "decoder": "fused"}
                    `decoder` is optional (default "traced"): informational, the I/O is the same.
    dtype           "float32" | "float16"  (the graphs' float inputs / KV cache)
    quantization    null | {"method": "matmulnbits", "bits": 8, "block_size": 32, …}
    opset           18
    graphs          {"vision_encoder": "vision_encoder.onnx", "embed_tokens": "embed_tokens.onnx",
                     "decoder_model_merged": "decoder_model_merged.onnx"}
    files           {"decoder_model_merged.onnx.data": {"sha256": "…", "bytes": 123}, …}
                    Every file of the bundle except manifest.json (graphs, external data, tokenizer).
    validation      optional, free-form results of export's checks (max |Δlogit|, greedy agreement…)
    backend         optional, "onnx" (default) | "mlx". An "mlx" bundle (mmkp-export --mlx) holds
                    mlx-vlm's converted checkpoint (config.json, model.safetensors…) instead of the
                    ONNX graphs: `graphs` is {} and `quantization` is null or
                    {"method": "mlx-affine", "bits": 8|4, "group_size": 64, …}; everything else
                    (prompt, chat, tokenizer, special tokens, image) means the same.

Graph I/O (transformers.js names, written once in mmkp_edge/graph_io.py; dynamic axes named):
    vision_encoder        pixel_values (N, 3, S, S) float → image_features (N, tokens_per_image, hidden)
                          (S = max_image_size; every frame is a full square, so the export wrapper
                          builds Idefics3's all-ones patch mask / position ids inside the graph)
                          qwen2_vl: pixel_values (num_patches, C·t·p·p) + image_grid_thw (I, 3)
                          int64 → image_features (num_image_tokens, hidden) (graph_io vision_grid)
    embed_tokens          input_ids (B, T) int64 → inputs_embeds (B, T, hidden)
    decoder_model_merged  inputs_embeds (B, T, hidden), attention_mask (B, past+T) int64,
                          position_ids (B, T) int64 (qwen2_vl: (3, B, T), M-RoPE),
                          past_key_values.{i}.key|value (B, kv, past, hd)
                          → logits (B, vocab) for the LAST position only ((B, 1, vocab) is accepted),
                            present.{i}.key|value (B, kv, past+T, hd)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import families
from .errors import InputError
from .graph_io import GRAPH_NAMES

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = ("float32", "float16")
BACKENDS = ("onnx", "mlx")     # what runs the bundle: onnxruntime graphs, or an mlx-vlm checkpoint
# The student families this runtime serves, derived from the one registry (mmkp_edge/families): a
# family's runtime side is its image preprocessing, its image-token layout and its position ids; a
# bundle of any other family would be fed wrong inputs without an error, so it is refused at load
# (and export cannot write one: save() validates).
RUNTIME_FAMILIES = families.names()


@dataclass(frozen=True)
class PromptInfo:
    id: str          # mmkp_edge.prompt.PROMPT_ID the student was trained with
    hash: str        # mmkp_edge.prompt.PROMPT_HASH at training time


@dataclass(frozen=True)
class ChatInfo:
    with_image: str  # chat template rendered with `{image}` and `{prompt}` placeholders
    text_only: str   # the same without an image: only `{prompt}`


@dataclass(frozen=True)
class TokenizerInfo:
    file: str = "tokenizer.json"      # a `tokenizers` JSON file inside the bundle
    add_special_tokens: bool = False  # passed to Tokenizer.encode (BOS via the post-processor)


@dataclass(frozen=True)
class SpecialTokens:
    pad: int                 # id used for left padding (its rows are masked out)
    eos: tuple[int, ...]     # ids that end generation (eos / end-of-utterance)
    image: int               # the image placeholder token whose rows get vision features
    think_open: int          # <think>
    think_close: int         # </think>
    answer_open: int         # <answer>
    answer_close: int        # </answer> (also ends generation)
    bos: int | None = None   # informational; BOS comes from the tokenizer's post-processor


@dataclass(frozen=True)
class ImageInfo:
    size_longest_edge: int           # first resize: longest edge → this (when do_resize)
    max_image_size: int              # side of a tile / of the vision encoder's square input
    tokens_per_image: int            # image tokens per tile (and for the global view)
    token_string: str                # one unsplit image (or the global view); has {image_tokens}
    image_token: str = "<image>"     # the placeholder token's text
    tile_string: str = ""            # one tile when splitting; {row} {col} {image_tokens}
    row_separator: str = "\n"        # after each row of tiles
    global_prefix: str = "\n"        # before the global view when split
    do_resize: bool = True
    resample: int = 1                # PIL resampling code (1 = LANCZOS)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    do_image_splitting: bool = False
    # Qwen2-VL (family "qwen2_vl"); 0 = not used (Idefics3 bundles, and every bundle written
    # before these keys existed, load unchanged)
    patch_size: int = 0              # ViT patch side (px)
    merge_size: int = 0              # merge² patches → one LM token
    temporal_patch_size: int = 0     # frames per patch (an image repeats its frame)
    min_pixels: int = 0              # resized H·W budget, lower bound
    max_pixels: int = 0              # resized H·W budget, upper bound


@dataclass(frozen=True)
class ModelInfo:
    num_layers: int        # decoder layers (past_key_values.{0..n-1})
    num_kv_heads: int      # KV heads (GQA)
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_context: int       # longest prompt + generation the decoder supports
    decoder: str = "traced"  # how export wrote the decoder graph: "traced" (torch.onnx) or "fused"
                           # (onnxruntime contrib ops, export/fused_decoder.py); same I/O either way


@dataclass(frozen=True)
class FileInfo:
    sha256: str            # hex digest of the file's bytes
    bytes: int             # file size


def file_info(path: str | os.PathLike) -> FileInfo:
    """sha256 and size of a file (export fills `files` with it; the loader checks against it)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return FileInfo(sha256=digest.hexdigest(), bytes=size)


@dataclass(frozen=True)
class Manifest:
    family: str
    source: str
    stage: str
    prompt: PromptInfo
    chat: ChatInfo
    tokenizer: TokenizerInfo
    special_tokens: SpecialTokens
    image: ImageInfo
    model: ModelInfo
    graphs: dict[str, str]             # graph name (GRAPH_NAMES) → file name in the bundle
    files: dict[str, FileInfo]         # every bundle file except manifest.json
    dtype: str = "float32"
    quantization: dict | None = None   # None = unquantized; else method/bits/block_size/…
    opset: int = 18
    validation: dict = field(default_factory=dict)   # export's check results, free-form
    schema_version: int = SCHEMA_VERSION
    backend: str = "onnx"              # BACKENDS: "mlx" bundles have no graphs (see docstring)

    # ------------------------------------------------------------ checks

    def validate(self) -> "Manifest":
        """Raise InputError (one line) on anything the runtime cannot serve."""
        if self.schema_version != SCHEMA_VERSION:
            raise InputError(f"manifest schema_version {self.schema_version} is not supported by this "
                             f"runtime (it reads {SCHEMA_VERSION}); re-export the bundle or upgrade "
                             f"mmkp-edge")
        family = families.family_class(self.family)      # refuses a family this runtime lacks
        if self.backend not in BACKENDS:
            raise InputError(f"manifest: backend {self.backend!r} not one of {', '.join(BACKENDS)}")
        for name in GRAPH_NAMES if self.backend == "onnx" else ():
            if name not in self.graphs:
                raise InputError(f"manifest: graph {name!r} missing from 'graphs'")
            if self.graphs[name] not in self.files:
                raise InputError(f"manifest: graph file {self.graphs[name]!r} is not listed in 'files'")
        if self.tokenizer.file not in self.files:
            raise InputError(f"manifest: tokenizer file {self.tokenizer.file!r} is not listed in 'files'")
        if self.dtype not in DTYPES:
            raise InputError(f"manifest: dtype {self.dtype!r} not one of {', '.join(DTYPES)}")
        if "{prompt}" not in self.chat.with_image or "{image}" not in self.chat.with_image:
            raise InputError("manifest: chat.with_image needs both {image} and {prompt}")
        if "{prompt}" not in self.chat.text_only or "{image}" in self.chat.text_only:
            raise InputError("manifest: chat.text_only needs {prompt} and no {image}")
        family.check_manifest(self)                        # the family's own image fields
        m = self.model
        if min(m.num_layers, m.num_kv_heads, m.head_dim, m.hidden_size, m.vocab_size, m.max_context) < 1:
            raise InputError("manifest: model dimensions must be positive")
        if not self.special_tokens.eos:
            raise InputError("manifest: special_tokens.eos is empty")
        return self

    def with_files(self, root: str | os.PathLike) -> "Manifest":
        """A copy whose `files` lists every file in the bundle folder `root` (but manifest.json),
        with sha256 and size — what export calls once all files are written."""
        root = Path(root)
        files = {p.relative_to(root).as_posix(): file_info(p) for p in sorted(root.rglob("*"))
                 if p.is_file() and p.name != MANIFEST_NAME}
        return dataclasses.replace(self, files=files)

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = MANIFEST_NAME) -> "Manifest":
        """Build from parsed JSON; a missing or mistyped key is an InputError naming it."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(f"{where}: schema_version {version!r} is not supported by this runtime "
                             f"(it reads {SCHEMA_VERSION}); re-export the bundle or upgrade mmkp-edge")
        try:
            st = dict(data["special_tokens"])
            st["eos"] = tuple(st["eos"]) if isinstance(st["eos"], list) else (st["eos"],)
            img = dict(data["image"])
            for key in ("image_mean", "image_std"):
                if key in img:
                    img[key] = tuple(img[key])
            return cls(
                schema_version=version, family=data["family"], source=data["source"],
                stage=data["stage"], prompt=PromptInfo(**data["prompt"]), chat=ChatInfo(**data["chat"]),
                tokenizer=TokenizerInfo(**data.get("tokenizer", {})),
                special_tokens=SpecialTokens(**st), image=ImageInfo(**img),
                model=ModelInfo(**data["model"]), graphs=dict(data["graphs"]),
                files={k: FileInfo(**v) for k, v in data["files"].items()},
                dtype=data.get("dtype", "float32"), quantization=data.get("quantization"),
                opset=int(data.get("opset", 18)), validation=dict(data.get("validation") or {}),
                backend=data.get("backend", "onnx"))
        except KeyError as exc:
            raise InputError(f"{where}: missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where}: malformed manifest ({exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        """Read and validate `manifest.json` (a file, or the bundle folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{path}: no bundle manifest here (is this an mmkp-export bundle?)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read manifest: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, str(path)).validate()

    def save(self, path: str | os.PathLike) -> Path:
        """Write `manifest.json` (into `path` when it is a folder); validates first."""
        self.validate()
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path
