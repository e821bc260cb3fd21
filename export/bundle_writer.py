"""Write the bundle's data files: `tokenizer.json` and `manifest.json` (schema: mmkp_edge.manifest).

The manifest is filled from the loaded student, never typed in: the chat rendering and the image
token layout come from the family (train.families' `prompt_pieces`, checked against the
processor; export.families' `image_info`, the manifest's image section), token ids from the
tokenizer, shapes from the model config, and `files` from hashing what is actually in the folder. The runtime reads nothing else, so a bundle is
self-describing. `validation` starts as {"status": "pending"} and export's checks overwrite it
with "passed" or "failed" plus their figures.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokenizers import Tokenizer

from mmkp_edge import prompt
from mmkp_edge.graph_io import GRAPH_FILES
from mmkp_edge.manifest import (MANIFEST_NAME, ChatInfo, FileInfo, ImageInfo, Manifest, ModelInfo,
                                PromptInfo, SpecialTokens, TokenizerInfo, file_info)

from train.tokens import end_ids

from .families import family_for
from .graphs import OPSET
from .source import Source, check_tokenizer
from .wrappers import DecoderShape

TOKENIZER_FILE = "tokenizer.json"


def write_tokenizer(src: Source, out_dir: Path) -> Path:
    """The fast tokenizer's backend as plain `tokenizers` JSON, padding/truncation switched off
    (the runtime pads itself; a saved padding setting would silently change its ids)."""
    backend = Tokenizer.from_str(src.processor.tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    path = out_dir / TOKENIZER_FILE
    backend.save(str(path))
    return path


def special_tokens(src: Source) -> SpecialTokens:
    tok = src.processor.tokenizer
    tags = check_tokenizer(tok)
    eos = end_ids(src.model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return SpecialTokens(pad=int(pad), eos=tuple(int(e) for e in eos),
                         image=int(src.processor.image_token_id),
                         think_open=tags[prompt.THINK_OPEN], think_close=tags[prompt.THINK_CLOSE],
                         answer_open=tags[prompt.ANSWER_OPEN], answer_close=tags[prompt.ANSWER_CLOSE],
                         bos=tok.bos_token_id)


def image_info(src: Source) -> ImageInfo:
    """The manifest's image section: the student family's (export/families)."""
    return family_for(src.family.name).image_info(src)


def model_info(src: Source, shape: DecoderShape, decoder: str = "traced") -> ModelInfo:
    text = src.model.config.get_text_config()
    return ModelInfo(num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                     head_dim=shape.head_dim, hidden_size=shape.hidden_size,
                     vocab_size=shape.vocab_size, max_context=int(text.max_position_embeddings),
                     decoder=decoder)


def hash_files(out_dir: Path) -> dict[str, FileInfo]:
    """sha256 + size of every file in the bundle except the manifest itself."""
    return {p.name: file_info(p) for p in sorted(out_dir.iterdir())
            if p.is_file() and p.name != MANIFEST_NAME}


def build_manifest(src: Source, shape: DecoderShape, out_dir: Path, *, dtype: str = "float32",
                   quantization: dict | None = None, decoder: str = "traced") -> Manifest:
    """The manifest for the files now in `out_dir` (validation pending)."""
    pieces = src.family.prompt_pieces(src.processor)
    return Manifest(
        family=src.family.name, source=src.source, stage=src.stage,
        prompt=PromptInfo(id=prompt.PROMPT_ID, hash=prompt.PROMPT_HASH),
        chat=ChatInfo(with_image=pieces.with_image, text_only=pieces.text_only),
        tokenizer=TokenizerInfo(file=TOKENIZER_FILE, add_special_tokens=pieces.add_special_tokens),
        special_tokens=special_tokens(src), image=image_info(src), model=model_info(src, shape, decoder),
        graphs=dict(GRAPH_FILES), files=hash_files(out_dir), dtype=dtype,
        quantization=quantization, opset=OPSET, validation={"status": "pending"})


def with_validation(manifest: Manifest, results: dict) -> Manifest:
    return dataclasses.replace(manifest, validation=results)
