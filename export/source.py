"""What to export: SOURCE (hub id, checkpoint folder or run dir) → a merged model + processor.

Loading goes through train.student.load_student, the same path training and evaluation use, so the
exported graphs are the student that was evaluated. A run dir with only `adapter/` is merged in
memory (peft `merge_and_unload`, as train.lora.merge does) — the run dir is never written to. The
refusals a user can hit are checked here, before any heavy work: an unsupported model type, a
folder that is neither a checkpoint nor a run dir, a tokenizer that lacks the prompt contract's
tags (a student trained with mmkp-train always has them as single tokens), and a run trained with
another prompt than this mmkp-edge's (its bundle would claim a prompt hash it was not trained on).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmkp_edge import prompt
from mmkp_edge.errors import InputError

RUN_CONFIG = "config.yaml"   # a run dir's resolved config: `stage:`, `run: {prompt: …}`


@dataclass
class Source:
    model: Any            # merged transformers model, fp32, eval
    processor: Any        # the family's processor (chat template, image processor, tokenizer)
    family: Any           # train.families.StudentFamily
    source: str           # what the user passed (recorded in the manifest)
    stage: str            # training stage of the checkpoint, "unknown" when not recorded


def _run_config(path: Path) -> dict | None:
    """The run dir's config.yaml for a run dir, its merged/ checkpoint, or a merge of its adapter."""
    for folder in (path, path.parent):
        config = folder / RUN_CONFIG
        if config.is_file():
            import yaml
            try:
                data = yaml.safe_load(config.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                return None
            return data if isinstance(data, dict) else None
    merged_from = path / "merged_from.json"
    if merged_from.is_file():
        adapter = json.loads(merged_from.read_text(encoding="utf-8")).get("adapter")
        if adapter:
            return _run_config(Path(adapter).parent)
    return None


def run_record(source: str | os.PathLike) -> tuple[str, dict | None]:
    """(training stage or "unknown", the prompt {id, hash} the run recorded or None)."""
    path = Path(source)
    config = _run_config(path) if path.exists() else None
    if not config:
        return "unknown", None
    stage = config.get("stage")
    recorded = (config.get("run") or {}).get("prompt")
    return (stage if isinstance(stage, str) and stage else "unknown"), recorded


def check_tokenizer(tokenizer) -> dict[str, int]:
    """Ids of the prompt's tags; each must be one token of its own (else: one-line refusal)."""
    from train.tokens import missing_tags, tag_id

    missing = missing_tags(tokenizer)
    if missing:
        raise InputError(f"the source's tokenizer lacks the prompt's tokens {' '.join(missing)} "
                         f"(prompt {prompt.PROMPT_ID}); export a student trained with mmkp-train")
    return {tag: tag_id(tokenizer, tag) for tag in prompt.SPECIAL_TOKENS}


def load_source(source: str | os.PathLike, stage: str | None = None) -> Source:
    """Load and merge the student behind SOURCE; refuse what cannot be exported."""
    from train.student import load_student

    student = load_student(source)
    model = student.model
    if hasattr(model, "merge_and_unload"):          # a run dir with only adapter/: merge in memory
        model = model.merge_and_unload()
    model = model.float().eval()
    if model.config.model_type not in student.family.model_types:
        raise InputError(f"{source}: model_type {model.config.model_type!r} is not exportable")
    check_tokenizer(student.processor.tokenizer)
    recorded_stage, recorded_prompt = run_record(source)
    if recorded_prompt and recorded_prompt.get("hash") != prompt.PROMPT_HASH:
        raise InputError(f"{source}: trained with prompt {recorded_prompt.get('id')} (hash "
                         f"{recorded_prompt.get('hash')}) but this mmkp-edge has {prompt.PROMPT_ID} "
                         f"(hash {prompt.PROMPT_HASH}); export with the mmkp-edge it was trained with")
    return Source(model=model, processor=student.processor, family=student.family,
                  source=str(source), stage=stage or recorded_stage)
