"""Random-weight students at real model shapes, exported as fp32 and int8 bundles, fully offline.

Speed and size depend on shapes, not on what the weights learned, so `make-model --shape
smolvlm-256m` builds SmolVLM-256M-Instruct's architecture (576-wide 30-layer GQA 9/3 Llama decoder,
1,536-wide MLP, the real 49,280-row vocabulary in the embedding and lm_head — the bytes that
dominate a decode step — and the 12-layer 768-wide SigLIP tower on 512-px tiles, 64 tokens a tile)
with random weights via train.tiny (its small tokenizer uses the first ids of the padded
vocabulary), then exports it through the export package exactly as `mmkp-export [--int8]` would.
Greedy text from random weights is noise: agreement figures on these bundles are about tokens.

    OUT/student/   checkpoint (safetensors + processor), also the --torch baseline
    OUT/fp32/      bundle
    OUT/int8/      bundle (weight-only int8 MatMulNBits)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmkp_edge.errors import InputError

SMOLVLM_VOCAB = 49_280          # SmolVLM-256M/500M-Instruct text vocabulary (embedding + lm_head rows)
SHAPE_NAMES = ("tiny", "smolvlm-256m")
PRECISIONS = ("fp32", "int8")
INSTALL = "pip install 'mmkp-edge[train,export]'"


def shape_config(name: str, seed: int):
    """train.tiny's TinyConfig for a shape name; smolvlm-256m gets the real vocabulary size."""
    try:
        from train.tiny import SHAPES
    except ImportError:
        raise InputError(f"make-model needs the train and export extras: {INSTALL}") from None
    if name not in SHAPE_NAMES:
        raise InputError(f"unknown shape {name!r}; choose one of {', '.join(SHAPE_NAMES)}")
    cfg = dataclasses.replace(SHAPES[name], seed=seed)
    if name == "smolvlm-256m":
        cfg = dataclasses.replace(cfg, model_vocab_size=SMOLVLM_VOCAB)
    return cfg


@dataclass(frozen=True)
class MakeModelConfig:
    out: str                                   # folder for student/, fp32/, int8/
    shape: str = "smolvlm-256m"                # one of SHAPE_NAMES
    seed: int = 0                              # weight seed
    precisions: tuple[str, ...] = PRECISIONS   # bundles to export
    validate: bool = True                      # run export's parity / agreement checks
    overwrite: bool = False                    # replace existing bundles / student

    def validate_config(self) -> "MakeModelConfig":
        if self.shape not in SHAPE_NAMES:
            raise InputError(f"unknown shape {self.shape!r}; choose one of {', '.join(SHAPE_NAMES)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise InputError(f"precisions must be among {', '.join(PRECISIONS)}")
        out = Path(self.out)
        if out.exists() and any(out.iterdir()) and not self.overwrite:
            raise InputError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
        return self


def make_model(cfg: MakeModelConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Build the student and export its bundles; returns paths, sizes and validation status."""
    say = progress or (lambda _msg, _transient=False: None)
    cfg.validate_config()
    tiny = shape_config(cfg.shape, cfg.seed)
    try:
        from export import ExportConfig, export_bundle
        from train.tiny import init_tiny
    except ImportError:
        raise InputError(f"make-model needs the train and export extras: {INSTALL}") from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()                  # our progress display is the only one
    out = Path(cfg.out)
    student = out / "student"
    say(f"building a random {cfg.shape} student in {student}")
    init_tiny(student, tiny)
    result = {"shape": cfg.shape, "seed": cfg.seed, "student": str(student), "bundles": {}}
    for precision in cfg.precisions:
        target = out / precision
        say(f"exporting {precision} → {target}")
        report = export_bundle(ExportConfig(source=str(student), out=str(target), precision=precision,
                                            overwrite=cfg.overwrite, validate=cfg.validate,
                                            stage="random-init"),
                               progress=lambda msg: say(f"  {msg}"))
        result["bundles"][precision] = {"path": report.bundle, "status": report.status,
                                        "total_bytes": report.total_bytes,
                                        "wall_seconds": report.wall_seconds}
        if not report.ok:
            say(f"  {precision}: export validation failed (bundle kept, marked in its manifest); "
                "on random weights near-tied logits can flip greedy tokens")
    return result
