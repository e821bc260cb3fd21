"""Run directories (DESIGN.md §2): where a stage leaves everything the next one, export and people read.

    runs/<stage>/<name>/
      config.yaml         resolved StageConfig + `run:` (stage, source checkpoint, package versions,
                          prompt id/hash) — the record `init_from` checks
      metrics.json        one schema for every stage (see `metrics_record`)
      predictions.jsonl   id, text, keyphrases, thought, n_tokens per evaluated post
      train_log.jsonl     one record per optimizer step (loss, lr, CoT fraction, γ, gated ids…)
      checkpoints/        resumable state (train.resume)
      adapter/            peft adapter + processor (LoRA stages)
      merged/             plain safetensors checkpoint: what the next stage and export load

A stage chains from another with `init_from: <run dir>`; `chain_source` checks the recorded stage
against what the caller allows and returns the checkpoint to load (`merged/`, or for a zero-shot
run the checkpoint it evaluated).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

import yaml

from mmkp_edge import prompt
from mmkp_edge.errors import InputError

from . import config_loader
from .student import MERGED_DIR

CONFIG, METRICS, PREDICTIONS = "config.yaml", "metrics.json", "predictions.jsonl"
_PACKAGES = ("mmkp-edge", "torch", "transformers", "peft", "tokenizers", "safetensors")
TRAIN_KEYS = ("steps", "final_loss", "tokens_per_s", "wall_s", "cot_fraction", "n_posts",
              "with_rationale", "resumed_from")


def run_path(runs_dir: str | os.PathLike, stage: str, name: str) -> Path:
    return Path(runs_dir) / stage / name


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def prepare_dir(path: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run dir; refuse to clobber a previous run unless asked."""
    if path.exists() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise InputError(f"{path} already exists; use --resume to continue it, --overwrite to "
                             "replace it, or --set name=OTHER")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def write_config(path: Path, config, run_info: dict) -> None:
    config_loader.save(config, path / CONFIG, extra={"run": run_info})


def read_config(run_dir: str | os.PathLike) -> dict:
    file = Path(run_dir) / CONFIG
    if not file.is_file():
        raise InputError(f"{run_dir}: not a run dir (no {CONFIG})")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"{file}: invalid YAML ({exc})") from None
    if not isinstance(data, dict) or "stage" not in data:
        raise InputError(f"{file}: no recorded stage")
    return data


def run_info(stage: str, source: str) -> dict:
    return {"stage": stage, "source": source, "versions": versions(),
            "prompt": {"id": prompt.PROMPT_ID, "hash": prompt.PROMPT_HASH}}


def check_resumable(path: Path, config) -> None:
    """A resumed run must have the same config (apart from bookkeeping) as the one it continues."""
    if not (path / CONFIG).is_file():
        return
    saved = read_config(path)
    saved.pop("run", None)
    now = config_loader.to_dict(config)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise InputError(f"--resume: config key {key!r} differs from the run in {path} "
                             f"({saved.get(key)!r} there, {now.get(key)!r} now)")


def chain_source(init_from: str | os.PathLike, stage: str, allowed: tuple[str, ...]) -> str:
    """The checkpoint a stage starts from when chained to `init_from` (checked, no model loaded)."""
    recorded = read_config(init_from)
    if recorded["stage"] not in allowed:
        raise InputError(f"init_from {init_from}: a {recorded['stage']} run; {stage} starts from "
                         f"{' or '.join(allowed) if allowed else 'a model, not a run'}")
    merged = Path(init_from) / MERGED_DIR
    if (merged / "config.json").is_file():
        return str(merged.resolve())
    if recorded["stage"] == "zero_shot":
        return str(recorded.get("run", {}).get("source") or recorded["model"])
    raise InputError(f"init_from {init_from}: no {MERGED_DIR}/ checkpoint (unfinished run, or "
                     "trained with merge=false: run `mmkp-train merge` on it)")


def metrics_record(config, source: str, evaluation: dict, train: dict | None, images: dict) -> dict:
    """metrics.json: the same keys for every stage (training figures are null for zero_shot)."""
    return {"stage": config.stage, "name": config.name, "source": source,
            "eval_split": config.data.eval_split, **evaluation,
            "train": {k: (train or {}).get(k) for k in TRAIN_KEYS}, "images": images}


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_predictions(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
